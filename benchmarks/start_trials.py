"""How often one reversal start misses a planted trigger, and which start trial catches it at what cost.

    python -m benchmarks.start_trials record [--models gtsrb,digits,NAME,...] [--seeds 0,1,...] [--starts 4]
        [--data-seed 0] [--initial-mask-max 1] [--out .cache/zoo/start-trials.jsonl]
    python -m benchmarks.start_trials judge [--file .cache/zoo/start-trials.jsonl]

`record` reverses each backdoored model's target label(s) alone, from `--starts` starts for every reversal seed,
each start to its own early stop (default preset, one thread, one label a pass, 1,000 clean images drawn with
`--data-seed`), and appends one line per start: its best norm after every step and its final trigger's L1
norm. `gtsrb` is the GTSRB replica, `digits` the digits fixture, any other name a zoo model (`python -m
fixtures.build zoo`). Reversing a start alone gives what it gives inside a scan (each start has its own
seeded stream of images and its own state).

`judge` replays start trials on the recordings (one `--initial-mask-max` a file) without reversing anything: K
starts, each runs T steps, the one with the smallest best norm at step T goes on to its end (T = "end": every start
to its end, the smallest trigger kept); K = 1 is today's single start. A start MISSES when its final norm is more
than twice the smallest that any start reached for that label (the planted trigger's size as the reversal finds it).
Prints, per rule, the misses and the steps spent relative to one start."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.bench_models import bench_model
from benchmarks.zoo_scans import parse_ints
from fixtures.paths import REPO_ROOT, shared_data_dir
from scanner import make_config
from scanner.reverse import LabelRun, StartRun, TriggerReverser, start_rng
from scanner.run_scan import scan_inputs

RECORDINGS = REPO_ROOT / ".cache" / "zoo" / "start-trials.jsonl"
TRIAL_STEPS = (5, 10, 15, 20, 0)  # 0: every start to its end
MISS_FACTOR = 2.0


def record(args: argparse.Namespace) -> None:
    data_dir = args.data or shared_data_dir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        chosen = bench_model(name, data_dir)
        model, data, labels = chosen.model, chosen.data, list(chosen.targets)
        settings = {"seed": args.data_seed, "threads": 1, "max_images": 1000, "labels": labels}
        config = make_config(
            {**settings, "reverse": {"labels_per_batch": 1, "initial_mask_max": args.initial_mask_max}}
        )
        inputs = scan_inputs(model, data, config)
        for seed in parse_ints(args.seeds):
            session = TriggerReverser(inputs.model, config.reverse, inputs.device, seed).session(inputs.data.images, 1)
            for label in labels:
                for k in range(args.starts):
                    run = LabelRun(label, [StartRun(label, start_rng(seed, label, k))])
                    session.advance([run], None)
                    line = {
                        "model": name,
                        "data_seed": args.data_seed,
                        "initial_mask_max": args.initial_mask_max,
                        "seed": seed,
                        "label": label,
                        "start": k,
                        "best": [norm if math.isfinite(norm) else None for norm in run.starts[0].best_norms],
                        "final": session.result(run).norm,
                    }
                    with args.out.open("a") as file:
                        file.write(json.dumps(line) + "\n")
        print(f"{name}: recorded", flush=True)


def norm_at(start: dict, step: int) -> float:
    """A start's best norm after `step` steps (its last if it finished earlier; inf before any was found)."""
    best = start["best"]
    norm = best[min(step, len(best)) - 1]
    return math.inf if norm is None else norm


def trial_outcome(starts: list[dict], trial_steps: int) -> tuple[dict, int]:
    """(the start the trial keeps, the steps spent over all starts)."""
    if trial_steps == 0:
        return min(starts, key=lambda s: s["final"]), sum(len(s["best"]) for s in starts)
    kept = min(starts, key=lambda s: norm_at(s, trial_steps))
    spent = sum(min(trial_steps, len(s["best"])) for s in starts) + max(0, len(kept["best"]) - trial_steps)
    return kept, spent


def judge(args: argparse.Namespace) -> None:
    lines = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
    inits = {line.get("initial_mask_max", 1.0) for line in lines}  # lines from before the option: the reference's
    if len(inits) > 1:
        raise SystemExit(f"{args.file} mixes initial masks {sorted(inits)}: record each to its own --out")
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    smallest: dict[tuple, float] = defaultdict(lambda: math.inf)
    for line in lines:
        label = (line["model"], line.get("data_seed", 0), line["label"])
        groups[(*label, line["seed"])][line["start"]] = line
        smallest[label] = min(smallest[label], line["final"])
    most = max(len(starts) for starts in groups.values())
    print(f"{len(groups)} (model, data seed, target, reversal seed) cases, up to {most} starts each")
    rules = [(1, 0)] + [(k, t) for k in range(2, most + 1) for t in TRIAL_STEPS]
    for count, trial_steps in rules:
        missed, spent, single = Counter(), 0, 0
        complete = {key: starts for key, starts in groups.items() if all(k in starts for k in range(count))}
        for key, starts in complete.items():
            kept, steps = trial_outcome([starts[k] for k in range(count)], trial_steps)
            if kept["final"] > MISS_FACTOR * smallest[key[:3]]:
                missed[key[0]] += 1
            spent += steps
            single += len(starts[0]["best"])
        trial = "end" if trial_steps == 0 else str(trial_steps)
        where = ", ".join(f"{name} {n}" for name, n in sorted(missed.items()))
        print(
            f"{count} start{'s' if count > 1 else ' '}, trial {trial:>3}: missed {sum(missed.values()):3d} of "
            f"{len(complete)}, steps {spent / single:.2f}x one start" + (f"  ({where})" if where else "")
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.start_trials", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="reverse the targets of backdoored models from several starts")
    rec.add_argument("--models", default="gtsrb", help="gtsrb (the replica), digits, or zoo model names")
    rec.add_argument("--seeds", default="0,1,2,3,4,5")
    rec.add_argument("--starts", type=int, default=4)
    rec.add_argument("--data-seed", type=int, default=0, help="the seed that draws the 1,000 clean images")
    rec.add_argument("--initial-mask-max", type=float, default=1.0, help="each start's mask begins on [0, this]")
    rec.add_argument("--data", type=Path, default=None)
    rec.add_argument("--out", type=Path, default=RECORDINGS)
    rec.set_defaults(run=record)
    jdg = commands.add_parser("judge", help="replay start trials on the recordings")
    jdg.add_argument("--file", type=Path, default=RECORDINGS)
    jdg.set_defaults(run=judge)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
