"""Run every hostile input of fixtures.hostile as a real `cleanse` process and print its outcome, wall time and
peak RSS, against the memory ceiling the README promises.

    python -m benchmarks.hostile_inputs [--only bomb,huge] [--ceiling-mib 1536]

Builds the digits models into .cache/fixtures when missing (seconds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from fixtures.digits import build_digits
from fixtures.hostile import load_all_cases, make_corpus, run_case, snapshot, violations
from fixtures.paths import DEFAULT_CACHE, REPO_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated words: run only the cases whose name has one")
    parser.add_argument("--ceiling-mib", type=float, default=1536, help="the peak RSS every case must stay under")
    args = parser.parse_args()
    digits = build_digits(DEFAULT_CACHE)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'case':<58} {'exit':>4} {'seconds':>8} {'peak MiB':>9}  problems")
    worst, failures = 0, 0
    with tempfile.TemporaryDirectory() as folder:
        corpus = make_corpus(
            Path(folder), digits["digits_infected.onnx"], digits["digits_clean.onnx"], digits["digits_test.npz"]
        )
        for name, build in sorted(load_all_cases().items()):
            if args.only and not any(word in name for word in args.only.split(",")):
                continue
            case = build(corpus)
            kept = snapshot(case.keep)
            run = run_case(case, REPO_ROOT)
            problems = violations(case, run, corpus, kept)
            peak = run.peak_rss_bytes / 2**20
            if peak > args.ceiling_mib:
                problems.append(f"peak RSS over the {args.ceiling_mib:.0f} MiB ceiling")
            worst, failures = max(worst, peak), failures + bool(problems)
            print(f"{name:<58} {run.exit_code!s:>4} {run.seconds:>8.1f} {peak:>9.0f}  {'; '.join(problems)}")
    print(f"\nworst peak RSS {worst:.0f} MiB (ceiling {args.ceiling_mib:.0f} MiB); cases with problems: {failures}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
