"""Running an audit: the driver loop over a backend, and the local backend (a pool of worker processes).

The driver alone writes the store: a model's row becomes 'running' when it is handed to a worker and gets its
outcome as soon as the worker returns, so an interrupted audit loses at most the models in flight. A backend
only runs `run_job` somewhere: `ProcessBackend` here, `RayBackend` in ray_runner.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import torch

from cleanse_base.errors import ConfigError
from scanner.audit.jobs import AuditJob, run_job
from scanner.audit.store import ERROR, AuditStore, ModelKey, Outcome
from scanner.progress import Progress


class Backend(Protocol):
    slots: int  # models run at once

    def submit(self, job: AuditJob) -> Hashable: ...

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Outcome]]:
        """Block until at least one of `handles` has finished; their outcomes."""
        ...

    def close(self) -> None: ...


def run_jobs(
    jobs: Sequence[AuditJob], backend: Backend, store: AuditStore, progress: Progress
) -> dict[ModelKey, ModelKey]:
    """Run `jobs` on `backend`, at most `backend.slots` at a time, recording each outcome as it comes, under the
    sha256 of the bytes the worker scanned. Returns each job's planned key -> the key its outcome is under."""
    if backend.slots < 1:
        raise ConfigError(f"an audit needs at least one worker slot, not {backend.slots}")
    queue, in_flight, recorded = deque(jobs), {}, {}
    while queue or in_flight:
        while queue and len(in_flight) < backend.slots:
            job = queue.popleft()
            store.mark_running(job.key, job.report_dir)
            in_flight[backend.submit(job)] = job
        for handle, outcome in backend.wait(list(in_flight)):
            job = in_flight.pop(handle)
            recorded[job.key] = record_outcome(store, job, outcome)
            progress.advance(outcome_detail(job, outcome))
    return recorded


def outcome_detail(job: AuditJob, outcome: Outcome) -> str:
    """The progress line's word on a finished model: its file name and verdict (or error)."""
    return f"{Path(job.model).name}: {outcome.verdict or outcome.status}"


def record_outcome(store: AuditStore, job: AuditJob, outcome: Outcome) -> ModelKey:
    """Store the outcome under the hash of the bytes scanned; a file swapped since planning loses its planned
    'running' row, so that a rerun never skips it on the strength of another file's verdict."""
    key = dataclasses.replace(job.key, sha256=outcome.sha256) if outcome.sha256 else job.key
    if key != job.key:
        store.forget_running(job.key)
    store.finish(key, outcome, outcome.report_dir or job.report_dir)
    return key


# ---------------------------------------------------------------- local worker processes


def local_devices(device: str) -> list[str]:
    """One entry per GPU worker when the scans go to GPUs; empty for CPU scans."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return []


def default_workers(device: str, models: int) -> int:
    """One worker per GPU, else one per CPU core; never more than there are models."""
    count = len(local_devices(device)) or os.cpu_count() or 1
    return max(1, min(count, models))


def at_least_one(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


def default_threads(workers: int) -> int:
    """The CPU cores shared out among the workers."""
    return max(1, (os.cpu_count() or 1) // workers)


_worker_device: str | None = None  # set in each worker process by _init_worker
_worker_threads: int | None = None


def _init_worker(devices: multiprocessing.Queue | None, threads: int) -> None:
    global _worker_device, _worker_threads
    _worker_device = devices.get() if devices is not None else None
    _worker_threads = threads
    torch.set_num_threads(threads)


def _run_in_worker(job: AuditJob) -> Outcome:
    return run_job(job, _worker_device, _worker_threads)


class ProcessBackend:
    """Worker processes started with 'spawn' (a fresh interpreter: torch's thread pools and CUDA state
    are not inherited from a forked parent). A worker that dies (segfault, out of memory) turns the models
    in flight into error rows, and a new pool takes the rest."""

    def __init__(self, workers: int, threads: int, device: str = "auto") -> None:
        self.slots, self.threads = at_least_one("workers", workers), at_least_one("threads", threads)
        gpus = local_devices(device)
        self.devices = [gpus[index % len(gpus)] for index in range(workers)] if gpus else []
        self.context = multiprocessing.get_context("spawn")
        self.executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self.executor is None:
            devices = None
            if self.devices:
                devices = self.context.Queue()
                for device in self.devices:
                    devices.put(device)
            self.executor = ProcessPoolExecutor(
                self.slots, mp_context=self.context, initializer=_init_worker, initargs=(devices, self.threads)
            )
        return self.executor

    def submit(self, job: AuditJob) -> Future:
        return self._pool().submit(_run_in_worker, job)

    def wait(self, handles: Sequence[Future]) -> list[tuple[Future, Outcome]]:
        finished, _ = wait(handles, return_when=FIRST_COMPLETED)
        results = []
        for future in finished:
            try:
                results.append((future, future.result()))
            except BrokenProcessPool:
                self.close()  # the next submit starts a fresh pool
                results.append((future, Outcome(ERROR, error="the worker process died (crash or out of memory)")))
        return results

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
