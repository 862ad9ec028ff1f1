"""The Ray backend: the same per-model task (`run_job`) as Ray tasks on a cluster, results into the same store.

Ray is an optional extra (`pip install cleanse[ray]`). Every node must see the models, the data and the
output folder at the same paths (a shared filesystem), since the task reads and writes them by path.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from cleanse_base.errors import ConfigError
from cleanse_base.text import one_line, printable
from scanner.audit.jobs import AuditJob, run_job
from scanner.audit.store import ERROR, Outcome

LOCAL = "local"  # start a private Ray instance in this process instead of joining a cluster
AUTO = "auto"  # the cluster `ray start` left running on this machine
CONNECT_SECONDS = 5.0  # Ray itself retries an address where nothing listens for about a minute


def host_and_port(address: str) -> tuple[str, int]:
    """HOST:PORT (or ray://HOST:PORT) as a pair; ConfigError for anything else."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray: expected HOST:PORT, auto or local, not {printable(address)!r}")
    return host.strip("[]"), int(port)


def probe(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """ConfigError within `seconds` when nothing accepts a connection at a HOST:PORT Ray address."""
    if address in (LOCAL, AUTO):
        return
    host, port = host_and_port(address)
    try:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot reach a Ray cluster at {printable(address)!r}: {reason}") from None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'cleanse[ray]' (or pip install ray)") from None
    return ray


class RayBackend:
    """One Ray task per model, each reserving `threads` CPUs (and a GPU when `gpu`); as many models in
    flight as the cluster has room for."""

    def __init__(self, address: str, threads: int, gpu: bool = False) -> None:
        probe(address)
        self.ray = import_ray()
        try:
            self.ray.init(address=None if address == LOCAL else address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot reach a Ray cluster at {printable(address)!r}: {one_line(exc)}") from None
        self.threads = threads
        self.task = self.ray.remote(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=0)(run_job)
        resources = self.ray.cluster_resources()
        room = resources.get("GPU", 0) if gpu else resources.get("CPU", 1) // threads
        self.slots = max(1, int(room))

    def submit(self, job: AuditJob) -> Any:
        return self.task.remote(job, None, self.threads)

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Outcome]]:
        finished, _ = self.ray.wait(list(handles), num_returns=1)
        results = []
        for handle in finished:
            try:
                results.append((handle, self.ray.get(handle)))
            except self.ray.exceptions.RayError as exc:  # the worker died or the task could not run
                results.append((handle, Outcome(ERROR, error=f"Ray task failed: {one_line(exc, with_type=False)}")))
        return results

    def close(self) -> None:
        self.ray.shutdown()
