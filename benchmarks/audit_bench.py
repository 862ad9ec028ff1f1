"""Audit throughput: wall time of a 6-model audit with 1 and 2 local workers, and the store's cost per model.

    python -m benchmarks.audit_bench [--preset default] [--cheap] [--threads 0] [--repeats 1]

The six models are the digits fixtures that scan (built into .cache/fixtures on first use). By default one
worker runs with all the cores as torch threads and two workers share them out (the audit's defaults);
--threads fixes the threads per worker for both. The store's overhead
is what the driver adds per model: the skip check, the 'running' row and the outcome row, each a durable
(synchronous=FULL) SQLite commit. The load average is printed with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from fixtures.audit_models import SCANNABLE, build_audit_models
from fixtures.paths import DEFAULT_CACHE
from scanner.audit.run_audit import AuditOptions, run_audit
from scanner.audit.store import DONE, INFECTED, AuditStore, ModelKey, Outcome

CHEAP_REVERSE = {"images_per_step": 64, "max_steps": 100}
STORE_SAMPLES = 300


def time_audit(paths: list[Path], data: Path, settings: dict, workers: int, threads: int) -> tuple[float, float]:
    """(wall seconds, sum of the models' own scan seconds) of a fresh audit."""
    with tempfile.TemporaryDirectory() as out:
        options = AuditOptions(Path(out), data, settings, workers=workers, threads=threads, quiet=True)
        started = time.perf_counter()
        result = run_audit(paths, None, options)
        wall = time.perf_counter() - started
    assert all(row.status == DONE for row in result.rows), [row.error for row in result.rows]
    return wall, sum(row.seconds for row in result.rows)


def store_overhead_ms(samples: int) -> dict[str, float]:
    """Milliseconds per model for each store call the driver makes, on a fresh store in a temp folder."""
    keys = [ModelKey(f"/models/m{index}.onnx", f"{index:064x}", "c" * 64) for index in range(samples)]
    outcome = Outcome(DONE, INFECTED, 4.2, [7], 5.0)
    timings = {}
    with tempfile.TemporaryDirectory() as folder, AuditStore(Path(folder) / "audit.sqlite") as store:
        for name, call in (
            ("is_finished", lambda key: store.is_finished(key)),
            ("mark_running", lambda key: store.mark_running(key, "/out/reports/m")),
            ("finish", lambda key: store.finish(key, outcome, "/out/reports/m")),
        ):
            started = time.perf_counter()
            for key in keys:
                call(key)
            timings[name] = (time.perf_counter() - started) / samples * 1000
    timings["total"] = sum(timings.values())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cheap", action="store_true", help="images_per_step 64, max_steps 100 (as the tests)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: the cores shared out)")
    parser.add_argument("--repeats", type=int, default=1, help="audits per worker count; the best is kept")
    args = parser.parse_args()
    files = build_audit_models(DEFAULT_CACHE)
    paths = [files[name] for name in SCANNABLE]
    settings = {"preset": args.preset, **({"reverse": CHEAP_REVERSE} if args.cheap else {})}
    threads = args.threads or "default"
    print(f"{len(paths)} models, preset {args.preset}{' (cheap)' if args.cheap else ''}, threads/worker {threads}")
    print(f"{os.cpu_count()} CPU(s)")
    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")

    walls = {}
    for workers in (1, 2):
        runs = [
            time_audit(paths, files["digits_test.npz"], settings, workers, args.threads) for _ in range(args.repeats)
        ]
        wall, scan_seconds = min(runs)
        walls[workers] = wall
        print(
            f"{workers} worker(s): {wall:.1f} s wall, {scan_seconds:.1f} s of scans ({wall / len(paths):.2f} s/model)"
        )
    print(f"speed-up with 2 workers: {walls[1] / walls[2]:.2f}x")

    overhead = store_overhead_ms(STORE_SAMPLES)
    print("store overhead per model: " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in overhead.items()))
    print(f"= {overhead['total'] / 1000 / (walls[1] / len(paths)) * 100:.3f}% of a model's wall time with 1 worker")
    print(f"load average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
