"""Scan the model zoo with the real CLI: one subprocess per (model, seed), reports kept for the detection table.

    python -m benchmarks.zoo_scans [--only NAME,...] [--seeds 0,1,2] [--jobs 2] [--max-images 1000]
        [--starts N] [--start-trial-steps T] [--schedule full|screened] [--labels-per-batch K]
        [--initial-mask-max M] [--scans DIR]

For each built zoo model (`python -m fixtures.build zoo`) and seed, runs

    python -m scanner.cli scan <model>.onnx --data <the data set's test file> --max-images N
        --seed K --threads 1 --labels-per-batch 1 --schedule full --starts 2 --start-trial-steps 10
        [--initial-mask-max M] --second-opinions 0 --out .cache/zoo/scans/<name>/seed<K>

with OMP_NUM_THREADS=1, at most --jobs at once (by default one label a pass: a convolution's round-off depends on the
batch, so this way a label's trajectory is the same under both schedules, on any CPU), skipping scans whose
report.json exists. Each scan is one run (`--second-opinions 0`): `benchmarks.detection_table --second-opinions N`
combines a close scan with the scans of its next seeds as `cleanse scan` would. Beside each report folder,
`seed<K>.run.json` keeps the exit code, seconds and command of the run that wrote it. Prints one line per scan (name,
seed, exit code, flagged labels, true targets, seconds) and a final count; no statistics.

The test file is in the shared data folder, or for a data set prepared from it (Tiny-ImageNet's decoded
`tinyimagenet/val.npz`) in the models folder, decoded there first if missing (fixtures.zoo.DatasetSpec.folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from fixtures.paths import DEFAULT_CACHE, REPO_ROOT, shared_data_dir
from fixtures.zoo import DATASETS, ZooCard, model_paths, select
from scanner.config import PRESETS, SCHEDULES, ScheduleConfig

T = TypeVar("T")

DEFAULT = PRESETS["default"]  # the scans measure the default preset's reversal unless told otherwise
SCANS_DIR = REPO_ROOT / ".cache" / "zoo" / "scans"
REPORT = "report.json"


@dataclass(frozen=True)
class ScanJob:
    name: str
    seed: int
    model: Path
    data: Path
    out: Path  # the CLI's report folder
    targets: tuple[int, ...]
    max_images: int
    schedule: str = "full"  # the detection table's scans reverse every label to its end
    starts: int = DEFAULT.starts  # reversals per label (scanner.reverse: the label keeps the smallest trigger)
    start_trial_steps: int = DEFAULT.start_trial_steps  # steps after which only the best start goes on
    labels_per_batch: int = 1  # 1: the same trajectory on any CPU, as schedule recordings need; 0: the device's
    screen_starts: int = ScheduleConfig().screen_starts  # the screened schedule's starts per label in the screen
    initial_mask_max: str = ""  # the CLI's --initial-mask-max (empty: the preset's)
    early_stop_patience: int = 0  # the CLI's --early-stop-patience (0: the preset's)

    @property
    def record(self) -> Path:
        """This run's exit code, seconds and command, beside (not inside) the CLI's folder."""
        return self.out.with_name(f"{self.out.name}.run.json")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "scanner.cli",
            "scan",
            str(self.model),
            "--data",
            str(self.data),
            "--max-images",
            str(self.max_images),
            "--seed",
            str(self.seed),
            "--threads",
            "1",
            "--labels-per-batch",
            str(self.labels_per_batch),
            "--schedule",
            self.schedule,
            "--starts",
            str(self.starts),
            "--start-trial-steps",
            str(self.start_trial_steps),
            "--screen-starts",
            str(self.screen_starts),
            *(["--initial-mask-max", self.initial_mask_max] if self.initial_mask_max else []),
            *(["--early-stop-patience", str(self.early_stop_patience)] if self.early_stop_patience else []),
            "--second-opinions",
            "0",
            "--out",
            str(self.out),
            "--quiet",
        ]


@dataclass(frozen=True)
class RunRecord:
    exit_code: int
    seconds: float
    command: list[str]
    stderr_tail: str


@dataclass(frozen=True)
class ScanOutcome:
    job: ScanJob
    exit_code: int | None  # None: a report from an earlier run without a record
    seconds: float | None
    cached: bool
    flagged: list[int] | None  # None: no readable report
    note: str = ""


def parse_list(text: str, kind: Callable[[str], T]) -> list[T]:
    """A comma-separated option's values, each read by `kind` (int, float)."""
    return [kind(part) for part in text.split(",") if part.strip()]


def parse_ints(text: str) -> list[int]:
    return parse_list(text, int)


def scan_jobs(
    only: list[str] | None,
    seeds: list[int],
    max_images: int,
    models_dir: Path,
    data_dir: Path,
    scans_dir: Path,
    starts: int = DEFAULT.starts,
    schedule: str = "full",
    start_trial_steps: int = DEFAULT.start_trial_steps,
    labels_per_batch: int = 1,
    initial_mask_max: str = "",
    screen_starts: int = ScheduleConfig().screen_starts,
    early_stop_patience: int = 0,
) -> tuple[list[ScanJob], list[str]]:
    """(jobs ordered seed by seed, so every model gets its first seed before any gets a second; zoo models
    not built yet)."""
    jobs, missing = [], []
    for spec in select(only):
        model, card_path = model_paths(models_dir, spec.name)
        if not (model.is_file() and card_path.is_file()):
            missing.append(spec.name)
            continue
        card = ZooCard.read(card_path)
        data = DATASETS[spec.dataset].folder(data_dir, models_dir) / card.test_file
        for seed in seeds:
            out = scans_dir / spec.name / f"seed{seed}"
            targets = tuple(card.targets)
            jobs.append(
                ScanJob(
                    spec.name,
                    seed,
                    model,
                    data,
                    out,
                    targets,
                    max_images,
                    schedule,
                    starts,
                    start_trial_steps,
                    labels_per_batch,
                    screen_starts=screen_starts,
                    initial_mask_max=initial_mask_max,
                    early_stop_patience=early_stop_patience,
                )
            )
    return sorted(jobs, key=lambda job: job.seed), missing


def flagged_labels(out: Path) -> list[int] | None:
    try:
        report = json.loads((out / REPORT).read_text())
    except (OSError, ValueError):
        return None
    flagged = report.get("flagged_labels") if isinstance(report, dict) else None
    return [int(label) for label in flagged] if isinstance(flagged, list) else None


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_scan(job: ScanJob) -> ScanOutcome:
    job.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(job.command(), cwd=REPO_ROOT, env=single_thread_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    stderr_tail = "\n".join(done.stderr.strip().splitlines()[-5:])
    record = RunRecord(done.returncode, round(seconds, 1), job.command(), stderr_tail)
    job.record.write_text(json.dumps(asdict(record), indent=2) + "\n")
    last_line = stderr_tail.splitlines()[-1] if stderr_tail and done.returncode not in (0, 1) else ""
    return ScanOutcome(job, done.returncode, seconds, False, flagged_labels(job.out), last_line)


def cached_outcome(job: ScanJob) -> ScanOutcome:
    try:
        record = RunRecord(**json.loads(job.record.read_text()))
        return ScanOutcome(job, record.exit_code, record.seconds, True, flagged_labels(job.out))
    except (OSError, ValueError, TypeError):
        return ScanOutcome(job, None, None, True, flagged_labels(job.out))


def outcome_line(outcome: ScanOutcome) -> str:
    job = outcome.job
    code = "?" if outcome.exit_code is None else str(outcome.exit_code)
    flagged = "?" if outcome.flagged is None else ",".join(map(str, outcome.flagged)) or "-"
    targets = ",".join(map(str, job.targets)) or "-"
    seconds = "?" if outcome.seconds is None else f"{outcome.seconds:.0f}"
    cached = " (cached)" if outcome.cached else ""
    note = f"  [{outcome.note}]" if outcome.note else ""
    return (
        f"{job.name:42s} seed {job.seed}  exit {code:>2}  flagged {flagged:12s} targets {targets:12s} "
        f"{seconds:>5} s{cached}{note}"
    )


def summary(outcomes: list[ScanOutcome]) -> str:
    codes = Counter("?" if outcome.exit_code is None else str(outcome.exit_code) for outcome in outcomes)
    ran = sum(not outcome.cached for outcome in outcomes)
    by_code = ", ".join(f"exit {code}: {count}" for code, count in sorted(codes.items()))
    return f"{len(outcomes)} scans ({ran} run now, {len(outcomes) - ran} cached): {by_code or 'none'}"


def run_all(jobs: list[ScanJob], workers: int) -> list[ScanOutcome]:
    """Cached outcomes first, then each new scan's line as it finishes."""
    outcomes = []
    pending = []
    for job in jobs:
        if (job.out / REPORT).is_file():
            outcomes.append(cached_outcome(job))
            print(outcome_line(outcomes[-1]), flush=True)
        else:
            pending.append(job)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: list[Future[ScanOutcome]] = [pool.submit(run_scan, job) for job in pending]
        try:
            for future in as_completed(futures):
                outcomes.append(future.result())
                print(outcome_line(outcomes[-1]), flush=True)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise
    return outcomes


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick zoo models, seeds and data, and how many run at once."""
    parser.add_argument("--only", default=None, help="comma-separated zoo model names (default: every built one)")
    parser.add_argument("--seeds", default="0", help="comma-separated scan seeds (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default: %(default)s)")
    parser.add_argument("--max-images", type=int, default=1000, help="clean images per scan (default: %(default)s)")
    parser.add_argument("--models", type=Path, default=DEFAULT_CACHE, help="the zoo build's --out (%(default)s)")
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo_scans", description=__doc__.splitlines()[0])
    add_selection_arguments(parser)
    parser.add_argument("--scans", type=Path, default=SCANS_DIR, help="report folders (%(default)s)")
    parser.add_argument("--starts", type=int, default=DEFAULT.starts, help="reversals per label (default: %(default)s)")
    parser.add_argument(
        "--start-trial-steps",
        type=int,
        default=DEFAULT.start_trial_steps,
        help="steps before only the best start goes on (default: %(default)s; 0: every start to its end)",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="full", help="label schedule (default: %(default)s)")
    parser.add_argument(
        "--screen-starts",
        type=int,
        default=ScheduleConfig().screen_starts,
        help="starts each label screens with under --schedule screened (default: %(default)s, all)",
    )
    parser.add_argument(
        "--labels-per-batch",
        type=int,
        default=1,
        help="labels a forward pass (default: 1, as recordings need; 0: auto)",
    )
    parser.add_argument(
        "--initial-mask-max",
        default="",
        help="the scan's --initial-mask-max, e.g. 1,0.1: each start's initial mask range (default: the preset's)",
    )
    parser.add_argument(
        "--early-stop-patience",
        type=int,
        default=0,
        help="the scan's --early-stop-patience: steps without improvement before a label stops (default: the "
        f"preset's, {DEFAULT.early_stop_patience})",
    )
    args = parser.parse_args(argv)
    if (
        args.jobs < 1
        or args.max_images < 1
        or args.starts < 1
        or min(args.start_trial_steps, args.labels_per_batch, args.screen_starts, args.early_stop_patience) < 0
    ):
        parser.error(
            "--jobs, --max-images and --starts must be at least 1, --start-trial-steps, --labels-per-batch, "
            "--screen-starts and --early-stop-patience at least 0"
        )
    args.data = args.data or shared_data_dir()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = args.only.split(",") if args.only else None
    try:
        seeds = parse_ints(args.seeds)
        jobs, missing = scan_jobs(
            only,
            seeds,
            args.max_images,
            args.models,
            args.data,
            args.scans,
            args.starts,
            args.schedule,
            args.start_trial_steps,
            args.labels_per_batch,
            args.initial_mask_max,
            args.screen_starts,
            args.early_stop_patience,
        )
    except FileNotFoundError as error:  # a prepared data set's test file missing and not preparable
        raise SystemExit(f"error: {error}") from None
    if missing:
        print(f"not built (python -m fixtures.build zoo): {', '.join(missing)}", flush=True)
    started = time.perf_counter()
    outcomes = run_all(jobs, args.jobs)
    print(f"{summary(outcomes)}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
