"""Mitigation on the GTSRB replica (white 4x4 trigger bottom-right, target 33): the before/after table of
each method with the real trigger, and the time each method takes.

    python -m fixtures.build gtsrb            # once: .cache/fixtures/gtsrb_infected.onnx
    python -m benchmarks.mitigate_gtsrb [--threads 2] [--methods unlearn,prune,filter]   # from the repository root

Clean data: the shared gtsrb_test.npz (never seen in training), split 70/30 into repair and held-out images.
The scan report is made first with the default preset unless --report names one that exists.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from cleanse_base.errors import InputError
from cleanse_base.files import file_sha256
from fixtures.export import ModelCard
from fixtures.paths import DEFAULT_CACHE, shared_data_dir
from scanner.config import ScanConfig
from scanner.mitigate import METHODS, MitigationConfig, mitigate
from scanner.mitigate.report_folder import read_scan_report
from scanner.report import write_report
from scanner.run_scan import scan

MODEL = DEFAULT_CACHE / "gtsrb_infected.onnx"
TRIGGER = (DEFAULT_CACHE / "gtsrb_trigger_mask.npy", DEFAULT_CACHE / "gtsrb_trigger_pattern.npy")
DATA_FILE = "gtsrb_test.npz"
# the targets: real attack success below, clean accuracy lost at most
TARGETS = {"unlearn": (0.02, 0.01), "prune": (0.05, 0.03)}
FILTER_DETECTION_TARGET = 0.98


def ensure_report(folder: Path, data: Path, threads: int) -> None:
    """Scan the model unless `folder` holds a report of this very file."""
    try:
        if read_scan_report(folder).model_sha256 == file_sha256(MODEL):
            print(f"scan report: {folder} (reused)")
            return
    except InputError:
        pass  # none there, or not a report of this model: scan
    started = time.perf_counter()
    report = scan(MODEL, data, ScanConfig(threads=threads))
    write_report(report, folder)
    print(f"scan: {time.perf_counter() - started:.0f} s, flagged {report.flagged}, report in {folder}")


def verdict(method: str, result) -> str:
    real_after = result.after.attack_success["real"]
    if method == "filter":
        caught, fpr = result.after.flagged["real"], result.after.flagged["clean"]
        ok = caught >= FILTER_DETECTION_TARGET
        return f"{'MET' if ok else 'MISSED'}: catches {caught:.2%} of triggered inputs at {fpr:.2%} false positives"
    success_limit, accuracy_limit = TARGETS[method]
    lost = result.before.clean_accuracy - result.after.clean_accuracy
    ok = real_after < success_limit and lost <= accuracy_limit
    return (
        f"{'MET' if ok else 'MISSED'}: real attack success {real_after:.2%} (target < {success_limit:.0%}), "
        f"clean accuracy lost {lost * 100:.2f} points (target <= {accuracy_limit * 100:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--report", type=Path, default=DEFAULT_CACHE / "gtsrb_infected_scan")
    parser.add_argument("--out", type=Path, default=None, help="folder for the patched models (default: a temp one)")
    args = parser.parse_args()
    data = shared_data_dir() / DATA_FILE
    for needed in (MODEL, data, *TRIGGER):
        if not needed.exists():
            raise SystemExit(f"missing {needed} (build it with `python -m fixtures.build gtsrb`)")
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ensure_report(args.report, data, args.threads)
    target = ModelCard.read(MODEL).target
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="mitigate_gtsrb_"))
    for method in args.methods.split(","):
        config = MitigationConfig(method=method, threads=args.threads)
        result, _ = mitigate(
            MODEL,
            args.report,
            data,
            config,
            out_dir / f"gtsrb_{method}.onnx",
            TRIGGER,
            target,
            out_dir / f"gtsrb_{method}.json",
        )
        print(f"\n== {method}\n{result.format()}\n{verdict(method, result)}")


if __name__ == "__main__":
    main()
