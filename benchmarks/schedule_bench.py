"""The screened schedule against the full one: the same flagged labels, fewer images, less time.

    python -m benchmarks.schedule_bench zoo [--only NAME,...] [--seeds 0,1,2] [--jobs 2] [--replica] [--full DIR]
        [--screened DIR] [--screen-starts N] [--labels-per-batch K]
    python -m benchmarks.schedule_bench timed [--models digits,gtsrb,NAME] [--threads 2] [--full-labels N]
        [--labels-per-batch K,...] [--screen-starts 1,0] [--look-shares 0.5,1] [--device D]

`zoo`: a screened CLI scan of each zoo model and seed (reports under .cache/zoo/scans-screened/), compared with
the full scan that `benchmarks.zoo_scans` keeps (run here where missing), both judged by the evidence rule
(the full scan's re-measured evidence where `benchmarks.detection_table --remeasure` left it; `--replica` adds
the GTSRB replica and the clean replica, as `gtsrb-replica` and `gtsrb-replica-clean`, which `--only` may name too):
flagged labels,
images used and their ratio, seconds (each scan on one thread; runs at different times, so compare the
images). `timed`: both schedules one after the other in this process, on the same model, data and thread
count: seconds, images, flagged labels and the ratios (`gtsrb` is the GTSRB replica, built when missing; with
`--full-labels N` the full schedule runs on N sampled labels and its cost is scaled to every label, marked as
projected; `--screen-starts` and `--look-shares` time the screened schedule once per value of
`schedule.screen_starts` and of `schedule.look_share`, `--labels-per-batch` both schedules once per value).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench_models import bench_model
from benchmarks.detection_table import saved_evidence, verdict_text
from benchmarks.zoo_scans import REPORT, SCANS_DIR, ScanJob, parse_ints, parse_list, run_all, scan_jobs
from fixtures.paths import DEFAULT_CACHE, REPO_ROOT, shared_data_dir
from scanner import make_config, scan
from scanner.config import ScheduleConfig
from scanner.decision.rules import EvidenceDecision
from scanner.mitigate.report_folder import read_scan_report

SCREENED_DIR = REPO_ROOT / ".cache" / "zoo" / "scans-screened"
# the seed's GTSRB models (benchmarks.bench_models names), not zoo models: the paper CNN with BadNets target 33, and
# the same network trained clean
REPLICAS = {"gtsrb-replica": "gtsrb", "gtsrb-replica-clean": "gtsrb-clean"}


@dataclass(frozen=True)
class Judged:
    verdict: str  # the flagged labels, "close call" or "clean" (detection_table.verdict_text)
    images: int
    seconds: float


def judged(folder: Path) -> Judged:
    """A saved scan judged by today's evidence rule, on the re-measured evidence where it was kept."""
    report = read_scan_report(folder)
    evidence = saved_evidence(report, folder)
    verdict = verdict_text(EvidenceDecision().judge(evidence))
    return Judged(verdict, report.schedule["images"], report.seconds_total)


def compare_zoo(args: argparse.Namespace) -> None:
    only = args.only.split(",") if args.only else None
    replicas = [name for name in only or () if name in REPLICAS] or (list(REPLICAS) if args.replica else [])
    zoo_only = [name for name in only if name not in REPLICAS] if only else None
    data_dir = args.data or shared_data_dir()
    seeds = parse_ints(args.seeds)
    full_jobs, missing = scan_jobs(zoo_only, seeds, args.max_images, DEFAULT_CACHE, data_dir, args.full)
    full_jobs += replica_jobs(replicas, seeds, args.max_images, data_dir, args.full)
    full_jobs = [dataclasses.replace(job, labels_per_batch=args.labels_per_batch) for job in full_jobs]
    screened_jobs = [
        dataclasses.replace(
            job,
            out=args.screened / job.name / f"seed{job.seed}",
            schedule="screened",
            screen_starts=args.screen_starts,
            labels_per_batch=args.labels_per_batch,
        )
        for job in full_jobs
    ]
    if missing:
        print(f"not built (python -m fixtures.build zoo): {', '.join(missing)}")
    run_all([*full_jobs, *screened_jobs], args.jobs)
    header = f"{'model':42s} {'seed':>4}  {'full':12s} {'screened':12s} same  images full/screened (x)  seconds"
    print("\n" + header)
    same = ratios = 0
    rows = 0
    for full_job, screened_job in zip(full_jobs, screened_jobs, strict=True):
        if not ((full_job.out / REPORT).is_file() and (screened_job.out / REPORT).is_file()):
            continue
        full, screened = judged(full_job.out), judged(screened_job.out)
        rows += 1
        same += full.verdict == screened.verdict
        ratio = full.images / screened.images
        ratios += ratio
        print(
            f"{full_job.name:42s} {full_job.seed:>4}  {full.verdict:12s} {screened.verdict:12s} "
            f"{str(full.verdict == screened.verdict):5s} {full.images:>8d}/{screened.images:<8d} ({ratio:.2f}x)  "
            f"{full.seconds:.0f}/{screened.seconds:.0f}"
        )
    if rows:
        print(f"\n{same} of {rows} scans give the same verdict; mean images ratio {ratios / rows:.2f}x")


def replica_jobs(names: list[str], seeds: list[int], max_images: int, data_dir: Path, scans: Path) -> list[ScanJob]:
    """Full scans of the named GTSRB replicas (REPLICAS), built when missing."""
    jobs = []
    for name in names:
        replica = bench_model(REPLICAS[name], data_dir)
        out = scans / name
        jobs += [
            ScanJob(name, seed, replica.model, replica.data, out / f"seed{seed}", replica.targets, max_images)
            for seed in seeds
        ]
    return jobs


def sampled_labels(classes: int, count: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).permutation(classes)[:count].tolist())


def timed(args: argparse.Namespace) -> None:
    data_dir = args.data or shared_data_dir()
    print(
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.threads} threads, "
        f"device {args.device}{device_name(args.device)}"
    )
    for name in args.models.split(","):
        chosen = bench_model(name, data_dir)
        for width in parse_ints(args.labels_per_batch):
            timed_model(name, chosen.model, chosen.data, width, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def device_name(device: str) -> str:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return ""
    return f" ({torch.cuda.get_device_name(torch.device(device if device != 'auto' else 'cuda'))})"


def warm_up(model: Path, data: Path, settings: dict) -> None:
    """One step of three labels, untimed: the first scan in a process pays once for what the others reuse (a
    GPU's context, torch's lazily imported modules: about 7 s on a fresh CUDA machine)."""
    reverse = {**settings["reverse"], "max_steps": 1}
    scan(model, data, make_config({**settings, "labels": [0, 1, 2], "reverse": reverse, "pairs": {"max_pairs": 0}}))


def timed_model(name: str, model: Path, data: Path, width: int, args: argparse.Namespace) -> None:
    """Both schedules one after the other, `width` labels a forward pass (0: auto)."""
    settings = {
        "seed": args.seed,
        "threads": args.threads,
        "max_images": args.max_images,
        "device": args.device,
        "reverse": {"labels_per_batch": width},
        "second_opinions": 0,  # schedules compared run against run: a close result's reruns would time three scans
    }
    warm_up(model, data, settings)
    screened_runs = []
    for screen_starts in parse_ints(args.screen_starts):
        for look_share in parse_list(args.look_shares, float):
            schedule = {"mode": "screened", "screen_starts": screen_starts, "look_share": look_share}
            started = time.perf_counter()
            report = scan(model, data, make_config({**settings, "schedule": schedule}))
            screened_runs.append(
                (f"screen_starts {screen_starts}, look_share {look_share:g}", report, time.perf_counter() - started)
            )
    classes = screened_runs[0][1].contract.num_classes
    labels = sampled_labels(classes, args.full_labels, args.seed) if args.full_labels else []
    started = time.perf_counter()
    full = scan(model, data, make_config({**settings, "labels": labels, "schedule": {"mode": "full"}}))
    full_s, full_images = time.perf_counter() - started, full.schedule["images"]
    if labels:  # the full schedule's cost grows with the labels: scale the sample's up to every label
        scale = classes / len(labels)
        full_s, full_images = full_s * scale, int(full_images * scale)
    kind = f"projected from {len(labels)} sampled labels" if labels else "measured"
    print(
        f"{name} ({classes} classes, labels a pass: {width or 'auto'}): full ({kind}) {full_s:.1f} s, "
        f"{full_images} images" + ("" if labels else f", flagged {full.flagged}, score {full.decision.score:.3g}")
    )
    for settings_text, screened, screened_s in screened_runs:
        look = screened.additive_stage
        print(
            f"  screened, {settings_text}: {screened_s:.1f} s (additive look {look.images} images, "
            f"{look.seconds:.1f} s), {screened.schedule['images']} "
            f"images, {screened.schedule['final_labels']} labels final, flagged {screened.flagged}, score "
            f"{screened.decision.score:.3g} | full/screened: time {full_s / screened_s:.2f}x, images "
            f"{full_images / screened.schedule['images']:.2f}x",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.schedule_bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    zoo = commands.add_parser("zoo", help="screened against full on zoo models, through the CLI")
    zoo.add_argument("--only", default=None, help="comma-separated zoo model names (default: every built one)")
    zoo.add_argument("--seeds", default="0")
    zoo.add_argument("--jobs", type=int, default=2)
    zoo.add_argument("--max-images", type=int, default=1000)
    zoo.add_argument("--data", type=Path, default=None)
    zoo.add_argument(
        "--replica",
        action="store_true",
        help=f"the GTSRB replicas too ({', '.join(REPLICAS)}: not zoo models; --only may name them instead)",
    )
    zoo.add_argument("--full", type=Path, default=SCANS_DIR, help="full scans kept here (%(default)s)")
    zoo.add_argument("--screened", type=Path, default=SCREENED_DIR, help="screened scans kept here (%(default)s)")
    zoo.add_argument("--screen-starts", type=int, default=ScheduleConfig().screen_starts, help="(0: all starts)")
    zoo.add_argument(
        "--labels-per-batch", type=int, default=1, help="labels per forward pass of both schedules (1; 0: auto)"
    )
    zoo.set_defaults(run=compare_zoo)
    clock = commands.add_parser("timed", help="both schedules timed in one process")
    clock.add_argument(
        "--models", default="digits,gtsrb", help="digits, gtsrb (the replica), gtsrb-clean or zoo model names"
    )
    clock.add_argument("--full-labels", type=int, default=0, help="time `full` on this many sampled labels only")
    clock.add_argument("--max-images", type=int, default=1000)
    clock.add_argument("--threads", type=int, default=2)
    clock.add_argument("--seed", type=int, default=0)
    clock.add_argument(
        "--labels-per-batch", default="0", help="labels stacked per forward pass, one run per value (0: auto)"
    )
    clock.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    clock.add_argument("--data", type=Path, default=None)
    clock.add_argument(
        "--screen-starts", default=str(ScheduleConfig().screen_starts), help="screen_starts values to time (0: all)"
    )
    clock.add_argument(
        "--look-shares",
        default=str(ScheduleConfig().look_share),
        help="schedule.look_share values to time, each with every --screen-starts value (1: the whole look)",
    )
    clock.set_defaults(run=timed)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
