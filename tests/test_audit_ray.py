"""`cleanse audit --ray ADDRESS` against a local Ray instance that the test starts and stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.audit_models import AUDIT_INFECTED, CORRUPT, build_audit_models
from scanner.audit.store import ERROR, INFECTED, STORE_NAME, AuditStore

pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")

CHEAP = ["--images-per-step", "64", "--max-steps", "100", "--threads", "1", "--pairs", "0", "--additive-steps", "0"]
CLEANSE = [sys.executable, "-c", "from scanner.cli import main; main()"]
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start exited early"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Ray head did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def models(digits: dict[str, Path]) -> dict[str, Path]:
    """The session's digits fixtures plus the audit's own models, in the same folder."""
    return build_audit_models(digits["digits_test.npz"].parent)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A one-node Ray cluster: `ray start --head --block` runs until the test stops it with SIGTERM."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--object-store-memory=100000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    head = subprocess.Popen(command, env=RAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, head, START_TIMEOUT)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_an_audit_on_ray_writes_the_same_store(ray_address: str, models: dict[str, Path], tmp_path: Path) -> None:
    names = [AUDIT_INFECTED, "digits_clean.onnx", CORRUPT]
    out = tmp_path / "audit"
    args = ["audit", *(str(models[name]) for name in names), "--data", str(models["digits_test.npz"])]
    args += ["--out", str(out), "--ray", ray_address, *CHEAP]
    result = subprocess.run([*CLEANSE, *args], env=RAY_ENV, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1, result.stderr
    with AuditStore(out / STORE_NAME) as store:
        rows = {Path(row.key.path).name: row for row in store.rows()}
    assert sorted(rows) == sorted(names)
    assert rows[AUDIT_INFECTED].verdict == INFECTED and rows[AUDIT_INFECTED].flagged_labels == [7]
    assert rows["digits_clean.onnx"].verdict == "clean"
    assert rows[CORRUPT].status == ERROR and "not a readable ONNX model" in rows[CORRUPT].error
    assert (Path(rows[AUDIT_INFECTED].report_dir) / "report.html").exists()

    rerun = subprocess.run([*CLEANSE, *args], env=RAY_ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 1 and "scanned now 0;" in rerun.stdout, rerun.stderr
