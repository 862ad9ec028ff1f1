"""Run the scan's additive look alone (scanner/additive.py) on zoo models and keep each model's label successes.

The additive look does not depend on the label or pair stages, so its records join the label scans of
benchmarks/zoo_scans.py in benchmarks/detection_table.py (`--additive`) as a whole scan's would: same model,
clean images, seed and settings as `cleanse scan`.

    python -m benchmarks.additive_scans --seeds 0,1,2      # every built zoo model but Tiny-ImageNet's
    python -m benchmarks.additive_scans --only NAME,... --epsilon 8 --rung-steps 0 --additive DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.pair_scans import stage_jobs
from benchmarks.zoo_scans import ScanJob, add_selection_arguments, single_thread_env
from fixtures.paths import REPO_ROOT
from scanner.additive import probe_labels
from scanner.config import AdditiveConfig, ScanConfig
from scanner.decision.evidence import EvidenceMeter
from scanner.reverse import use_bfloat16
from scanner.run_scan import scan_inputs

ADDITIVE_DIR = REPO_ROOT / ".cache" / "zoo" / "additive"


def additive_record(model: Path, data: Path, seed: int, max_images: int, additive: AdditiveConfig) -> dict[str, object]:
    """What the scan's additive look finds on one model: each label's success, the bound, images and seconds."""
    config = ScanConfig(seed=seed, threads=1, max_images=max_images, additive=additive)
    inputs = scan_inputs(model, data, config)
    started = time.perf_counter()
    bfloat16 = use_bfloat16(config.reverse.precision, inputs.device)
    meter = EvidenceMeter(inputs.model, inputs.data.images, inputs.device, seed, bfloat16)  # as cleanse scan's
    search = probe_labels(inputs.model, inputs.data.images, inputs.labels, additive, meter, seed)
    return {
        "seconds": time.perf_counter() - started,
        "epsilon": search.epsilon,
        "epsilons": list(search.epsilons),
        "images": search.images,
        "probes": [
            {
                "label": p.label,
                "epsilon": p.epsilon,
                "success": p.success,
                "evaluated": p.evaluated,
                "mimicry": p.mimicry,
            }
            for p in search.probes
        ],
    }


def record_path(folder: Path, job: ScanJob) -> Path:
    return folder / job.name / f"seed{job.seed}.json"


def run_job(job: ScanJob, folder: Path, extra: list[str]) -> str:
    """One model and seed in a single-threaded child process (as the zoo scans ran): a line saying what it found."""
    out = record_path(folder, job)
    command = [sys.executable, "-m", "benchmarks.additive_scans", "--one", str(job.model), str(job.data)]
    command += [str(job.seed), "--max-images", str(job.max_images), "--out", str(out), *extra]
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        return f"{job.name} seed {job.seed}: failed ({done.stderr.strip().splitlines()[-1:]})"
    record = json.loads(out.read_text())
    settled = [p for p in record["probes"] if p["epsilon"] == record["epsilon"]]
    best = max(settled, key=lambda p: p["success"], default=None)
    top = f", top label {best['label']} at {best['success']:.2f}" if best else ""
    bounds = " and ".join(f"{epsilon:g}" for epsilon in record["epsilons"])
    return f"{job.name} seed {job.seed}: epsilon {bounds}{top}, {record['seconds']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.additive_scans", description=__doc__.splitlines()[0])
    add_selection_arguments(parser)
    parser.add_argument("--additive", type=Path, default=ADDITIVE_DIR, help="where records go (%(default)s)")
    defaults = AdditiveConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="the scan's --additive-steps")
    parser.add_argument("--epsilon", type=float, default=defaults.epsilon, help="the scan's --additive-epsilon")
    parser.add_argument("--mini-batch", type=int, default=defaults.mini_batch, help="images a step")
    parser.add_argument(
        "--rung-steps", type=int, default=defaults.rung_steps, help="the scan's --additive-rung-steps (0: from zero)"
    )
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    additive = AdditiveConfig(
        steps=args.steps, epsilon=args.epsilon, mini_batch=args.mini_batch, rung_steps=args.rung_steps
    )
    if args.one:
        model, data, seed = args.one
        record = additive_record(Path(model), Path(data), int(seed), args.max_images, additive)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record))
        return 0
    jobs = stage_jobs(args, args.additive)
    pending = [job for job in jobs if not record_path(args.additive, job).is_file()]
    extra = ["--steps", str(args.steps), "--epsilon", str(args.epsilon), "--mini-batch", str(args.mini_batch)]
    extra += ["--rung-steps", str(args.rung_steps)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(run_job, job, args.additive, extra) for job in pending]):
            print(future.result(), flush=True)
    print(f"{len(pending)} runs ({len(jobs) - len(pending)} kept); {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
