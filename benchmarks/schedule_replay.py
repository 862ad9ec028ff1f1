"""The label scheduler replayed on recorded models: how well a screen predicts where each label ends.

    python -m benchmarks.schedule_replay record NAME [NAME ...] [--screen-mini-batch 4] [--screen-steps 10] [--seed S]
    python -m benchmarks.schedule_replay replay [RECORDING ...] [--seeds 0,1,2] [--set calibration_labels=3]

`record` reverses every label of a model (`digits`, `gtsrb` for the replica, or a zoo model's name) through a
screen of `--screen-steps` steps (Adam updates on mini-batches of `--screen-mini-batch` images) and then on to
its early stop, as the screened schedule would if it finished every label, and keeps per label the screen's
bound, evidence and images, the final norm, evidence and images, and the best norm after every step, and the
labels likeliest first (the retry's likeliest targets, which a screened scan runs to their end)
(.cache/zoo/replay/<name>[-s<seed>]-mb<B>.json, one thread, `--seed` 0 by default, 1,000 clean images).

`replay` runs the real LabelScheduler on each recording, its labels jumping to their recorded screened or final
state, and prints: the evidence rule over every label's final trigger (the truth for that trajectory) against
the scheduler's verdict, with the labels it ran to their end and the images saved; and how well the screen
predicts the end (Spearman rank correlation of screened and final values per measurement, and of the best norm
after 10 to 30 steps with the final norm). A projection design, or a schedule setting (`--set NAME=N`), can be
tried here in seconds before the zoo runs it for real (benchmarks/schedule_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench_models import bench_model
from benchmarks.zoo_scans import parse_ints
from fixtures.paths import REPO_ROOT, shared_data_dir
from scanner import make_config
from scanner.decision.evidence import EvidenceMeter, LabelEvidence
from scanner.decision.rules import EvidenceDecision
from scanner.retry import first_likeliest
from scanner.reverse import LabelRun, StartRun, TriggerReverser
from scanner.run_scan import likeliest_labels, scan_inputs
from scanner.schedule import LabelScheduler, screen

REPLAY_DIR = REPO_ROOT / ".cache" / "zoo" / "replay"
PREDICTED = ("norm", "compactness", "mimicry", "success")  # measurements whose screen-to-final rank is printed
BOUND_STEPS = (10, 15, 20, 25, 30)


def record(name: str, screen_steps: int, screen_mini_batch: int, data_dir: Path, seed: int = 0) -> Path:
    chosen = bench_model(name, data_dir)
    model_path, data_path = chosen.model, chosen.data
    # one start per label, one label a pass: a replay moves each label along one trajectory, the one that a real
    # scan's label follows whichever labels share its passes (convolution round-off depends on the batch)
    reverse = {"starts": 1, "labels_per_batch": 1}
    settings = {"seed": seed, "threads": 1, "max_images": 1000, "device": "cpu", "reverse": reverse}
    config = make_config(settings)
    inputs = scan_inputs(model_path, data_path, config)
    reverser = TriggerReverser(inputs.model, config.reverse, inputs.device, config.seed)
    session = reverser.session(inputs.data.images, len(inputs.labels))
    meter = EvidenceMeter(inputs.model, inputs.data.images, inputs.device, config.seed, reverser.bfloat16)
    runs = [session.start(label) for label in inputs.labels]

    def measured(run: LabelRun) -> dict:
        trigger = session.result(run)
        return dataclasses.asdict(meter.measure(run.label, trigger.mask, trigger.pattern))

    screen(session, runs, screen_steps, mini_batch=screen_mini_batch)
    screened = {run.label: (run.steps, run.images, measured(run)) for run in runs}
    session.advance(runs, None)
    rows = [
        {
            "label": run.label,
            "screen_steps": screened[run.label][0],
            "screen_images": screened[run.label][1],
            "screen_evidence": screened[run.label][2],
            "final_steps": run.steps,
            "final_images": run.images,
            "final_evidence": measured(run),
            "best_norms": run.best_norms,
        }
        for run in runs
    ]
    out = REPLAY_DIR / f"{name}{f'-s{seed}' if seed else ''}-mb{screen_mini_batch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    likeliest = likeliest_labels(inputs)  # what the scan finishes for the retry, whatever the screen says
    recording = {"model": name, "seed": seed, "screen_steps": screen_steps, "likeliest": likeliest, "labels": rows}
    out.write_text(json.dumps(recording))
    return out


@dataclass(frozen=True)
class RecordedTrigger:
    """A run's trigger by reference: which recorded evidence measuring it looks up."""

    mask: str  # "screen" or "final"
    pattern: None = None


class RecordedSession:
    """A ReverseSession stand-in whose runs jump to their recorded state: the screen's after the first advance,
    the final one after any later advance."""

    def __init__(self, rows: list[dict]):
        self.rows = {row["label"]: row for row in rows}

    def start(self, label: int, starts: int = 0) -> LabelRun:
        return LabelRun(label, [StartRun(label, np.random.default_rng(0))])

    def open_starts(self, run: LabelRun) -> None:
        """Recordings hold one start per label: nothing more to open."""

    def advance(self, runs, steps, progress=None, mini_batch=None, paused=None) -> None:
        for label_run in runs:
            row, run = self.rows[label_run.label], label_run.starts[0]  # recordings hold one start per label
            screening = run.steps == 0 and steps is not None
            run.steps = row["screen_steps"] if screening else row["final_steps"]
            run.images = row["screen_images"] if screening else row["final_images"]
            run.best_norms = row["best_norms"][: run.steps]
            run.schedule.best_norm = run.best_norms[-1]
            run.finished = run.steps >= row["final_steps"]

    def result(self, run: LabelRun) -> RecordedTrigger:
        return RecordedTrigger("final" if run.finished else "screen")

    def recorded_evidence(self, label: int, state: str, _pattern: None) -> LabelEvidence:
        """The scheduler's measure: the label's recorded evidence in that state."""
        return LabelEvidence(**self.rows[label][f"{state}_evidence"])


def spearman(first: list[float], second: list[float]) -> float:
    ranks = [np.argsort(np.argsort(values)).astype(np.float64) for values in (first, second)]
    return float(np.corrcoef(*ranks)[0, 1])


def value(evidence: dict, name: str) -> float | None:
    item = evidence[name]
    return math.log(item) if name == "norm" and item else item


def predictiveness(rows: list[dict]) -> str:
    parts = []
    for name in PREDICTED:
        pairs = [(value(r["screen_evidence"], name), value(r["final_evidence"], name)) for r in rows]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        parts.append(f"{name} {spearman(*zip(*pairs, strict=True)):.2f}")
    for step in BOUND_STEPS:
        longer = [r for r in rows if len(r["best_norms"]) >= step and math.isfinite(r["best_norms"][step - 1])]
        if len(longer) >= 3:
            bounds = [r["best_norms"][step - 1] for r in longer]
            parts.append(f"bound@{step} {spearman(bounds, [r['final_evidence']['norm'] for r in longer]):.2f}")
    return ", ".join(parts)


def replay(paths: list[Path], seeds: list[int], overrides: dict | None = None) -> None:
    """Each recording replayed with scheduler seeds `seeds`, or with its own scan seed (what a real screened scan
    with that seed does) where none are given."""
    decision = EvidenceDecision()
    for path in paths:
        recording = json.loads(path.read_text())
        rows = recording["labels"]
        truth = decision.judge({row["label"]: LabelEvidence(**row["final_evidence"]) for row in rows})
        full_images = sum(row["final_images"] for row in rows)
        print(f"{path.name}: every label final: flagged {truth.flagged}, p {truth.score:.2g}")
        print(f"  screen predicts the end (Spearman): {predictiveness(rows)}")
        for seed in seeds or [recording.get("seed", 0)]:
            session = RecordedSession(rows)
            config = make_config(
                {"schedule": {"mode": "screened", "screen_steps": recording["screen_steps"], **(overrides or {})}}
            )
            scheduler = LabelScheduler(session, config.schedule, decision, session.recorded_evidence, seed)  # type: ignore[arg-type]
            # recordings from before the likeliest target (stop 34) finish none
            finish = first_likeliest(recording.get("likeliest", []), set(session.rows), config.retry.likeliest)
            outcome = scheduler.run(sorted(session.rows), finish)
            got = decision.judge(outcome.evidence)
            final = sum(outcome.summary.final.values())
            print(
                f"  scheduler seed {seed}: flagged {got.flagged}, p {got.score:.2g}, {final} of {len(rows)} labels "
                f"final, images {full_images / outcome.summary.images:.2f}x fewer"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.schedule_replay", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="reverse every label through a screen and on to its end")
    rec.add_argument("names", nargs="+")
    rec.add_argument("--screen-steps", type=int, default=10)
    rec.add_argument("--screen-mini-batch", type=int, default=16)
    rec.add_argument("--data", type=Path, default=None)
    rec.add_argument("--seed", type=int, default=0, help="the scan seed (recordings of seed S end in -sS)")
    play = commands.add_parser("replay", help="the scheduler on recordings")
    play.add_argument("recordings", nargs="*", type=Path)
    play.add_argument("--seeds", default="", help="scheduler seeds (default: each recording's own scan seed)")
    play.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="a schedule setting to try")
    args = parser.parse_args(argv)
    if args.command == "record":
        data_dir = args.data or shared_data_dir()
        for name in args.names:
            print(record(name, args.screen_steps, args.screen_mini_batch, data_dir, args.seed), flush=True)
    else:
        overrides = {name: int(number) for name, number in (item.split("=", 1) for item in args.set)}
        replay(args.recordings or sorted(REPLAY_DIR.glob("*.json")), parse_ints(args.seeds), overrides)


if __name__ == "__main__":
    main()
