"""Full schedule against the screened one on the same models, seeds and thread count: flagged labels, images
used, wall time and their ratios.

    python -m benchmarks.schedule_bench [--models digits,gtsrb,gtsrb-clean] [--seeds 0,1,2] [--threads 2]

Models are built into .cache/fixtures when missing (digits in seconds; GTSRB from ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from fixtures.paths import DEFAULT_CACHE, shared_data_dir
from scanner import make_config
from scanner.data import load_clean_data
from scanner.mad import mad_outliers
from scanner.reverse import TriggerReverser
from scanner.run_scan import choose_scaling, scoring_model
from scanner.schedule import LabelScheduler, ScheduleConfig

# name -> (model file, data file, C, H, classes); the data paths are relative to the shared data folder
MODELS = {
    "digits": ("digits_infected.onnx", None, 1, 8, 10),
    "digits-clean": ("digits_clean.onnx", None, 1, 8, 10),
    "gtsrb": ("gtsrb_infected.onnx", "gtsrb_test.npz", 3, 32, 43),
    "gtsrb-clean": ("gtsrb_clean.onnx", "gtsrb_test.npz", 3, 32, 43),
}


def model_files(name: str, data_dir: Path) -> tuple[Path, Path]:
    model_file, data_file, *_ = MODELS[name]
    if name.startswith("digits"):
        from fixtures.digits import build_digits

        files = build_digits(DEFAULT_CACHE)
        return files[model_file], files["digits_test.npz"]
    from fixtures.gtsrb import build_gtsrb

    files = build_gtsrb(DEFAULT_CACHE, data_dir, infected=name == "gtsrb")
    return files[model_file], data_dir / data_file


def scan_once(name: str, data_dir: Path, mode: str, seed: int, threads: int) -> dict:
    from converters.onnx_to_torch import load_onnx_classifier

    model_path, data_path = model_files(name, data_dir)
    _, _, channels, size, classes = MODELS[name]
    torch.set_num_threads(threads)
    config = make_config({"seed": seed, "threads": threads})
    device = torch.device("cpu")
    converted = load_onnx_classifier(model_path)
    data = load_clean_data(data_path, channels, size, size, classes, None, seed)
    scaling, _ = choose_scaling(converted, data, config, device)
    model = scoring_model(converted, scaling, device)
    started = time.perf_counter()
    session = TriggerReverser(model, config.reverse, device, seed).session(data.images, classes)

    def decide(norms: dict[int, float]) -> frozenset[int]:
        return frozenset(mad_outliers(norms, config.mad_threshold).flagged)

    scheduler = LabelScheduler(session, ScheduleConfig(mode=mode), decide, seed)
    _, summary = scheduler.run(list(range(classes)))
    seconds = time.perf_counter() - started
    mad = mad_outliers(summary.estimates(), config.mad_threshold)
    return {
        "flagged": mad.flagged,
        "index": mad.anomaly_index,
        "median": mad.median,
        "images": summary.images,
        "seconds": seconds,
        "final": sum(item.final for item in summary.labels),
        "rounds": summary.rounds,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,digits-clean")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=shared_data_dir())
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.threads} threads")
    header = f"{'model':<12} {'seed':>4} {'full flags':<12} {'screened':<12} {'same':<5} {'images x':>8} {'time x':>7}"
    rows = []
    for name in args.models.split(","):
        for seed in (int(seed) for seed in args.seeds.split(",")):
            full = scan_once(name, args.data, "full", seed, args.threads)
            screened = scan_once(name, args.data, "screened", seed, args.threads)
            rows.append((name, seed, full, screened))
            print(
                f"{name} seed {seed}: full flagged {full['flagged']} index {full['index']:.2f} median "
                f"{full['median']:.1f}, {full['images']} images, {full['seconds']:.1f} s | screened flagged "
                f"{screened['flagged']} index {screened['index']:.2f} median {screened['median']:.1f}, "
                f"{screened['images']} images, {screened['seconds']:.1f} s, {screened['final']}/"
                f"{len(screened['summary'].labels)} labels final, {screened['rounds']} settle rounds",
                flush=True,
            )
    print("\n" + header)
    for name, seed, full, screened in rows:
        same = full["flagged"] == screened["flagged"]
        print(
            f"{name:<12} {seed:>4} {str(full['flagged']):<12} {str(screened['flagged']):<12} {str(same):<5} "
            f"{full['images'] / screened['images']:>7.2f}x {full['seconds'] / screened['seconds']:>6.2f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
