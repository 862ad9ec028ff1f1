"""Run the scan's retry alone (scanner/retry.py) on saved zoo scans and keep every round's evidence.

The retry reverses again the labels with the smallest triggers of a finished label stage and the likeliest targets
(by the clean images' log-probabilities), so its records join the
saved label scans of benchmarks/zoo_scans.py in benchmarks/detection_table.py (`--retry DIR`): the same model,
clean images, seed and reversal settings as the scan, the candidates chosen from the saved report's norms as
`cleanse scan` chooses them.

    python -m benchmarks.retry_scans --seeds 0,1,2                  # every saved zoo scan but Tiny-ImageNet's
    python -m benchmarks.retry_scans --only NAME,... --rounds 1 --labels 3 --retry DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.pair_scans import stage_jobs
from benchmarks.zoo_scans import SCANS_DIR, ScanJob, add_selection_arguments, single_thread_env
from fixtures.paths import REPO_ROOT
from scanner.config import RetryConfig
from scanner.mitigate.report_folder import read_scan_report
from scanner.retry import retry_candidates, retry_rounds
from scanner.run_scan import label_reversal, likeliest_labels, scan_inputs

RETRY_DIR = REPO_ROOT / ".cache" / "zoo" / "retry"


def retry_record(model: Path, data: Path, scan_folder: Path, retry: RetryConfig) -> dict[str, object]:
    """Every round's trigger evidence (and whether it reached the attack success threshold) for the candidates of one
    saved scan, why each was chosen, with the images and seconds spent."""
    report = read_scan_report(scan_folder)
    config = dataclasses.replace(report.config, threads=1, retry=retry)
    inputs = scan_inputs(model, data, config)
    started = time.perf_counter()
    norms = {label.label: label.estimated_norm for label in report.labels}
    final = {label.label for label in report.labels if label.final}
    chosen = retry_candidates(norms, final, retry.labels, likeliest_labels(inputs), retry.likeliest)
    session, meter = label_reversal(inputs, config)
    found = retry_rounds(session, list(chosen), retry.rounds, retry.initial_mask_max)
    return {
        "seconds": time.perf_counter() - started,
        "images": sum(trigger.images for triggers in found.values() for trigger in triggers),
        "candidates": list(chosen),
        "chosen_as": {str(label): why for label, why in chosen.items()},
        "likeliest": retry.likeliest,
        "rounds": {
            str(label): [
                {**dataclasses.asdict(meter.measure(label, t.mask, t.pattern)), "found": t.found} for t in triggers
            ]
            for label, triggers in found.items()
        },
    }


def record_path(folder: Path, job: ScanJob) -> Path:
    return folder / job.name / f"seed{job.seed}.json"


def run_job(job: ScanJob, folder: Path, scans: Path, extra: list[str]) -> str:
    """One saved scan in a single-threaded child process (as the zoo scans ran): a line saying what it found."""
    out = record_path(folder, job)
    scan_folder = scans / job.name / f"seed{job.seed}"
    if not (scan_folder / "report.json").is_file():
        return f"{job.name} seed {job.seed}: no saved scan in {scan_folder}"
    command = [sys.executable, "-m", "benchmarks.retry_scans", "--one", str(job.model), str(job.data)]
    command += [str(scan_folder), "--out", str(out), *extra]
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        return f"{job.name} seed {job.seed}: failed ({done.stderr.strip().splitlines()[-1:]})"
    record = json.loads(out.read_text())
    smallest = {label: min(item["norm"] for item in rounds) for label, rounds in record["rounds"].items()}
    found = ", ".join(f"{label}: {norm:.1f}" for label, norm in smallest.items())
    return f"{job.name} seed {job.seed}: {found}; {record['images']} images, {record['seconds']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retry_scans", description=__doc__.splitlines()[0])
    add_selection_arguments(parser)
    parser.add_argument("--scans", type=Path, default=SCANS_DIR, help="saved scans (%(default)s)")
    parser.add_argument("--retry", type=Path, default=RETRY_DIR, help="where records go (%(default)s)")
    defaults = RetryConfig()
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="the scan's --retry-rounds")
    parser.add_argument("--labels", type=int, default=defaults.labels, help="the scan's --retry-labels")
    parser.add_argument(
        "--initial-mask-max",
        type=float,
        default=defaults.initial_mask_max,
        help="the scan's --retry-initial-mask-max (default: %(default)s; 1: the reference's, as the first round's)",
    )
    parser.add_argument("--likeliest", type=int, default=defaults.likeliest, help="the scan's --retry-likeliest")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "SCAN"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    retry = RetryConfig(args.rounds, args.labels, args.likeliest, args.initial_mask_max)  # in RetryConfig's order
    if args.one:
        model, data, scan_folder = args.one
        record = retry_record(Path(model), Path(data), Path(scan_folder), retry)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record))
        return 0
    jobs = stage_jobs(args, args.retry)
    pending = [job for job in jobs if not record_path(args.retry, job).is_file()]
    extra = ["--rounds", str(args.rounds), "--labels", str(args.labels)]
    extra += ["--initial-mask-max", str(args.initial_mask_max), "--likeliest", str(args.likeliest)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, job, args.retry, args.scans, extra) for job in pending]
        for future in as_completed(futures):
            print(future.result(), flush=True)
    print(f"{len(pending)} runs ({len(jobs) - len(pending)} kept); {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
