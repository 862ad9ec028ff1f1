"""Scan the GTSRB replica of the Neural Cleanse paper's model (BadNets, target 33) and print the figures.

    python -m benchmarks.scan_gtsrb [--threads 2] [--paper-labels 33,0,12] [--clean] [--data DIR]

Default preset over all 43 labels: anomaly index, flagged labels, label 33's norm against the median, steps
per label and wall time. Then the `paper` preset on a few labels (33 among them), from the same run: its
time and norm per label and the default preset's speed-up per label. The paper's own sample model gave anomaly
index 3.65 with only label 33 flagged (norm 16.1 against a median of 64.5), about 10 minutes on a 2019 GPU.
The model is built by `python -m fixtures.build gtsrb` when missing (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from fixtures.gtsrb import build_gtsrb
from fixtures.paths import DEFAULT_CACHE, shared_data_dir
from scanner import ScanReport, make_config, scan
from scanner.data import load_clean_data

TARGET = 33


def print_scan(title: str, report: ScanReport) -> None:
    by_label = {result.label: result for result in report.labels}
    steps = [result.steps for result in report.labels]
    print(f"\n== {title}")
    print(f"verdict {report.verdict}, flagged {report.flagged}, anomaly index {report.mad.anomaly_index:.2f}")
    if TARGET in by_label:
        print(
            f"label {TARGET}: L1 {by_label[TARGET].l1_norm:.1f} against median {report.mad.median:.1f} "
            f"(MAD {report.mad.mad:.1f})"
        )
    print(
        f"steps per label: mean {statistics.mean(steps):.0f}, min {min(steps)}, max {max(steps)}; "
        f"labels that never reached the success threshold: {[r.label for r in report.labels if not r.found]}"
    )
    print(
        f"wall time {report.seconds_total:.0f} s for {len(report.labels)} labels "
        f"({report.seconds_total / len(report.labels):.1f} s per label) on {report.device}, "
        f"{report.threads} threads, {report.precision}, "
        f"clean accuracy {report.scaling.accuracy:.3f} ({report.scaling.name})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper-labels", default="33,0,12", help="labels to time with the paper preset ('' skips)")
    parser.add_argument("--clean", action="store_true", help="also scan the clean replica (false-positive check)")
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, torch {torch.__version__}")
    models = build_gtsrb(DEFAULT_CACHE, args.data, infected=True)
    model = models["gtsrb_infected.onnx"]
    data = load_clean_data(args.data / "gtsrb_test.npz", 3, 32, 32, 43)
    base = {"threads": args.threads, "seed": args.seed}

    default = scan(model, data, make_config(base))
    print_scan("default preset, 43 labels", default)

    paper_labels = [int(label) for label in args.paper_labels.split(",") if label.strip()]
    if paper_labels:
        paper = scan(model, data, make_config({**base, "preset": "paper", "labels": paper_labels}))
        print("\n== paper preset on labels", paper_labels)
        default_by_label = {result.label: result for result in default.labels}
        print(f"{'label':>5} {'paper L1':>9} {'default L1':>10} {'paper s':>8} {'default s':>9} {'speed-up':>8}")
        for result in paper.labels:
            fast = default_by_label[result.label]
            print(
                f"{result.label:>5} {result.l1_norm:>9.1f} {fast.l1_norm:>10.1f} {result.seconds:>8.1f} "
                f"{fast.seconds:>9.1f} {result.seconds / fast.seconds:>7.1f}x"
            )
        paper_seconds = np.mean([r.seconds for r in paper.labels])
        default_seconds = np.mean([default_by_label[r.label].seconds for r in paper.labels])
        print(
            f"mean per label: paper {paper_seconds:.1f} s, default {default_seconds:.1f} s, "
            f"speed-up {paper_seconds / default_seconds:.1f}x"
        )

    if args.clean:
        clean_model = build_gtsrb(DEFAULT_CACHE, args.data, infected=False)["gtsrb_clean.onnx"]
        print_scan("default preset, clean replica", scan(clean_model, data, make_config(base)))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
