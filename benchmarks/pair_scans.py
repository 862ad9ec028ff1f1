"""Run the scan's source-specific stage alone (scanner/pairs.py) on zoo models and keep each model's pair norms.

The pair stage does not depend on the label stage, so its norms join the label scans of benchmarks/zoo_scans.py
in benchmarks/detection_table.py (`--pairs`) as a whole scan's would: same model, clean images, seed, budget and
labels a pass as `cleanse scan` (checked by `--check REPORT`: a scan's report.json whose decision holds pairs).

    python -m benchmarks.pair_scans --seeds 0,1,2            # every built zoo model but Tiny-ImageNet's
    python -m benchmarks.pair_scans --check scan/report.json --only NAME --seeds 0
    python -m benchmarks.pair_scans --only NAME,... --max-pairs 2000 --pairs DIR   # whole tables past 10 classes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.zoo_scans import ScanJob, add_selection_arguments, parse_ints, scan_jobs, single_thread_env
from fixtures.paths import REPO_ROOT, shared_data_dir
from scanner.config import PairConfig, ScanConfig
from scanner.pairs import reverse_pairs
from scanner.run_scan import likeliest_labels, scan_inputs

PAIRS_DIR = REPO_ROOT / ".cache" / "zoo" / "pairs"
SKIPPED_PREFIXES = ("tiny-",)  # Tiny-ImageNet models: the 126-scan zoo table leaves them out


def pair_record(
    model: Path, data: Path, seed: int, max_images: int, pairs: PairConfig, likeliest: int = 0
) -> dict[str, object]:
    """What the scan's pair stage finds on one model: the pairs' norms, the images and seconds it took; with
    `likeliest`, the pairs of every source to that many likeliest targets (scanner.retry.likeliest_targets) alone."""
    config = ScanConfig(seed=seed, threads=1, max_images=max_images, pairs=pairs)
    inputs = scan_inputs(model, data, config)
    started = time.perf_counter()
    targets = inputs.labels
    if likeliest:
        targets = [label for label in likeliest_labels(inputs) if label in inputs.labels][:likeliest]
    triggers = reverse_pairs(
        inputs.model, inputs.data.images, targets, config.reverse, config.pairs, inputs.device, config.seed
    ).triggers
    return {
        "seconds": time.perf_counter() - started,
        "images": sum(trigger.images for trigger in triggers),
        "pairs": [
            {
                "source": t.source,
                "target": t.target,
                "l1_norm": t.norm,
                "found": t.found,
                "images": t.source_images,
                "carried": [[c.label, c.to, c.share] for c in t.carried],
            }
            for t in triggers
        ],
    }


def stage_jobs(args: argparse.Namespace, records_dir: Path) -> list[ScanJob]:
    """The jobs of a stage run alone on the zoo (add_selection_arguments' options, one record each in
    `records_dir`): every built model but Tiny-ImageNet's unless named; prints the models not built."""
    only = args.only.split(",") if args.only else None
    jobs, missing = scan_jobs(
        only, parse_ints(args.seeds), args.max_images, args.models, args.data or shared_data_dir(), records_dir
    )
    if missing:
        print(f"not built (python -m fixtures.build zoo): {', '.join(missing)}", flush=True)
    return [job for job in jobs if not job.name.startswith(SKIPPED_PREFIXES) or only]


def record_path(pairs_dir: Path, job: ScanJob) -> Path:
    return pairs_dir / job.name / f"seed{job.seed}.json"


def run_job(job: ScanJob, pairs_dir: Path, pairs: PairConfig, likeliest: int = 0) -> tuple[str, bool]:
    """One model and seed in a single-threaded child process (as the zoo scans ran): a line saying what it found,
    and whether it ran."""
    out = record_path(pairs_dir, job)
    command = [sys.executable, "-m", "benchmarks.pair_scans", "--one", str(job.model), str(job.data), str(job.seed)]
    command += ["--max-images", str(job.max_images), "--max-pairs", str(pairs.max_pairs), "--out", str(out)]
    command += ["--initial-mask-max", str(pairs.initial_mask_max), "--likeliest-targets", str(likeliest)]
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        return f"{job.name} seed {job.seed}: failed ({done.stderr.strip().splitlines()[-1:]})", False
    record = json.loads(out.read_text())
    pairs, images, seconds = len(record["pairs"]), record["images"], record["seconds"]
    return f"{job.name} seed {job.seed}: {pairs} pairs, {images:,} images, {seconds:.0f} s", True


def check(report_path: Path, record: dict[str, object]) -> str:
    """Whether a whole scan's pairs match the stage run alone (same norms)."""
    scanned = {
        (p["source"], p["target"]): p["l1_norm"] for p in json.loads(report_path.read_text())["decision"]["pairs"]
    }
    alone = {(p["source"], p["target"]): round(p["l1_norm"], 4) for p in record["pairs"]}  # type: ignore[union-attr]
    differ = [pair for pair in alone if scanned.get(pair) != alone[pair]]
    return f"{len(alone)} pairs, {len(differ)} differ from the scan's" + (f": {differ[:5]}" if differ else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pair_scans", description=__doc__.splitlines()[0])
    add_selection_arguments(parser)
    parser.add_argument("--pairs", type=Path, default=PAIRS_DIR, help="where records go (%(default)s)")
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=PairConfig().max_pairs,
        help="the scan's --pairs: the largest table reversed (default: %(default)s)",
    )
    parser.add_argument(
        "--initial-mask-max",
        type=float,
        default=PairConfig().initial_mask_max,
        help="each pair's mask begins uniform on [0, this] (default: %(default)s)",
    )
    parser.add_argument(
        "--likeliest-targets",
        type=int,
        default=0,
        help="the pairs of every source to this many likeliest targets alone (default: 0, every target)",
    )
    parser.add_argument("--check", type=Path, default=None, help="a scan's report.json to compare with (one job)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pairs = PairConfig(max_pairs=args.max_pairs, initial_mask_max=args.initial_mask_max)
    if args.one:
        model, data, seed = args.one
        record = pair_record(Path(model), Path(data), int(seed), args.max_images, pairs, args.likeliest_targets)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record))
        return 0
    jobs = stage_jobs(args, args.pairs)
    if args.check:
        for job in jobs:
            line, ran = run_job(job, args.pairs, pairs, args.likeliest_targets)
            if not ran:
                print(line)
                continue
            print(
                f"{job.name} seed {job.seed}: {check(args.check, json.loads(record_path(args.pairs, job).read_text()))}"
            )
        return 0
    pending = [job for job in jobs if not record_path(args.pairs, job).is_file()]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, job, args.pairs, pairs, args.likeliest_targets) for job in pending]
        for future in as_completed(futures):
            print(future.result()[0], flush=True)
    print(f"{len(pending)} runs ({len(jobs) - len(pending)} kept); {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
