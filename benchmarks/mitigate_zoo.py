"""Mitigation on a zoo model, judged by its own attack: each method from the model's scan report, with the flagged
labels' triggers alone and with the triggers of the source-specific pairs that flagged them too.

    python -m benchmarks.mitigate_zoo mnist-all-to-all-cnn --report .cache/zoo/scans-a2a/mnist-all-to-all-cnn/seed0
        [--methods unlearn,prune] [--threads 1]

The dataset's test split is halved: the first half is the mitigation's labelled clean data (repair and its own
held-out part), the second half judges the patched model: clean accuracy, and the attack's success as the zoo
measures it (each target's victims stamped with the real trigger; an all-to-all attack sends each class to the
next). The zoo model must be built (`python -m fixtures.build zoo --only NAME`) and scanned with the CLI.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fixtures.attacks import attack_success
from fixtures.export import onnx_predictor
from fixtures.paths import DEFAULT_CACHE, shared_data_dir
from fixtures.zoo import DATASETS, ZooSpec, load_split, model_paths, zoo_by_name
from scanner.mitigate import MitigationConfig, mitigate


def judged(spec: ZooSpec, model: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(clean accuracy, the attack's mean success over its targets) of an ONNX file on images it was not fixed on."""
    predict = onnx_predictor(model, spec.interface, batch_size=None)
    success = attack_success(spec.attack, predict, x, y) if spec.attack else {}
    return float((predict(x) == y).mean()), float(np.mean(list(success.values()))) if success else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo model name")
    parser.add_argument("--report", type=Path, required=True, help="its scan report folder")
    parser.add_argument("--methods", default="unlearn,prune", help="unlearn, prune (a filter keeps predictions)")
    parser.add_argument("--models", type=Path, default=DEFAULT_CACHE, help="the zoo build's --out")
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    methods = args.methods.split(",")
    if not set(methods) <= {"unlearn", "prune"}:
        parser.error(f"--methods: unlearn and prune change predictions, not {args.methods}")
    spec = zoo_by_name()[args.model]
    dataset = DATASETS[spec.dataset]
    test = load_split((args.data or shared_data_dir()) / dataset.test_file, dataset.test_keys)
    order = np.random.default_rng(0).permutation(len(test.y))
    repair, judge = order[: len(order) // 2], order[len(order) // 2 :]
    model, _ = model_paths(args.models, args.model)
    accuracy, success = judged(spec, model, test.x[judge], test.y[judge])
    print(f"{args.model}: clean accuracy {accuracy:.4f}, attack success {success:.4f} on {len(judge)} judged images")
    print(f"{'method':8s} {'triggers':>20s} {'removed':>8s} {'accuracy':>8s} {'attack':>8s} {'seconds':>8s}")
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "repair.npz"
        np.savez(data, x=test.x[repair], y=test.y[repair])
        for method in methods:
            for pair_triggers in (False, True):
                config = MitigationConfig(method=method, threads=args.threads, pair_triggers=pair_triggers)
                out = Path(folder) / f"{method}-{pair_triggers}.onnx"
                result, _ = mitigate(model, args.report, data, config, out)
                accuracy, success = judged(spec, out, test.x[judge], test.y[judge])
                kind = "labels and pairs" if pair_triggers else "labels alone"
                print(
                    f"{method:8s} {kind:>20s} {len(result.before.attack_success):>8d} {accuracy:>8.4f} "
                    f"{success:>8.4f} {result.seconds_total:>8.1f}"
                )


if __name__ == "__main__":
    main()
