"""Audit integrity: the hash recorded is of the bytes scanned, a folder's symlinks are named and never read,
every model path gets its own report folder, bad worker counts and unreachable Ray addresses fail fast, and
file names cannot drive the terminal."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from cleanse_base.errors import ConfigError
from cleanse_base.files import file_sha256
from scanner.audit.jobs import AuditJob, plan_job, run_job
from scanner.audit.manifest import Manifest, ModelEntry, entries_from_paths
from scanner.audit.ray_runner import RayBackend, host_and_port
from scanner.audit.run_audit import AuditOptions, plan, run_audit
from scanner.audit.runner import ProcessBackend, outcome_detail, record_outcome
from scanner.audit.store import DONE, ERROR, STORE_NAME, AuditRow, AuditStore, ModelKey, Outcome
from scanner.audit.summary import format_table
from scanner.progress import Progress

CHEAP = {
    "labels": [0, 1, 2, 7],
    "threads": 1,
    "reverse": {"max_steps": 5, "images_per_step": 16},
    "additive": {"steps": 0},
}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finishes_within(seconds: float, action) -> object:
    """action()'s result, or a failed test when it blocks longer than `seconds` (a hang, not an answer)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


# ---------------------------------------------------------------- counts and addresses


@pytest.mark.parametrize(("field", "value"), [("workers", -1), ("threads", -1), ("workers", True), ("threads", 1.5)])
def test_the_audit_api_refuses_worker_and_thread_counts_no_backend_can_run(
    tmp_path: Path, field: str, value: object
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    options = AuditOptions(tmp_path / "out", **{field: value})
    with pytest.raises(ConfigError, match=f"--{field}"):
        finishes_within(5, lambda: run_audit([tmp_path / "m.onnx"], None, options))
    assert not (tmp_path / "out" / STORE_NAME).exists()


def test_a_process_backend_needs_at_least_one_worker_and_thread() -> None:
    with pytest.raises(ConfigError, match="workers"):
        ProcessBackend(0, 1)
    with pytest.raises(ConfigError, match="threads"):
        ProcessBackend(1, -1)


def test_a_ray_address_where_nothing_listens_fails_within_seconds() -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster"):
        RayBackend(f"127.0.0.1:{closed_port()}", 1)
    assert time.perf_counter() - started < 30  # one 5 s probe, where Ray itself retried for minutes
    with pytest.raises(ConfigError, match="HOST:PORT"):
        host_and_port("\x1b[2Jnowhere")
    assert host_and_port("ray://head.example:10001") == ("head.example", 10001)


# ---------------------------------------------------------------- symlinks in audited folders


def test_a_symlink_in_an_audited_folder_is_named_as_itself_and_never_opened(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block: a followed link hangs this test
    (zoo / "blocks.onnx").symlink_to(fifo)
    (tmp_path / "secret").write_bytes(b"secret")
    (zoo / "leaks.onnx").symlink_to(tmp_path / "secret")
    (tmp_path / "data.npz").write_bytes(b"unused")
    entries = entries_from_paths([zoo])
    assert [(entry.path.name, entry.from_folder) for entry in entries] == [("blocks.onnx", True), ("leaks.onnx", True)]

    for entry in entries:
        job = finishes_within(5, lambda entry=entry: plan_job(entry, tmp_path / "data.npz", {}, {}, tmp_path / "out"))
        assert job.key.path == str(zoo.resolve() / entry.path.name) and job.key.sha256 == "symlink"
        outcome = finishes_within(10, lambda job=job: run_job(job))
        assert outcome.status == ERROR and f"{job.key.path}: is a symlink" in outcome.error


def test_a_model_named_directly_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real.onnx").write_bytes(b"model")
    (tmp_path / "named.onnx").symlink_to(tmp_path / "real.onnx")
    job = plan_job(ModelEntry(tmp_path / "named.onnx", None), None, {}, {}, tmp_path / "out")
    assert job.follow_symlinks and job.key.sha256 == file_sha256(tmp_path / "real.onnx")
    assert job.key.path.endswith("named.onnx")


# ---------------------------------------------------------------- what a row records


@pytest.mark.slow
def test_same_stem_models_in_two_folders_get_their_own_reports(digits: dict[str, Path], tmp_path: Path) -> None:
    paths = [tmp_path / folder / "model.onnx" for folder in ("vendor_a", "vendor_b")]
    for path in paths:
        path.parent.mkdir()
        shutil.copyfile(digits["digits_infected.onnx"], path)  # the same name and the same bytes
    options = AuditOptions(tmp_path / "out", digits["digits_test.npz"], CHEAP)
    jobs = plan(Manifest(None, {}, [ModelEntry(path, None) for path in paths]), options)
    assert len({job.report_dir for job in jobs}) == 2
    outcomes = [run_job(job) for job in jobs]
    assert [outcome.status for outcome in outcomes] == [DONE, DONE]
    reports = [json.loads((Path(outcome.report_dir) / "report.json").read_text()) for outcome in outcomes]
    assert [report["model"]["path"] for report in reports] == [job.model for job in jobs]
    assert reports[0]["model"]["sha256"] == reports[1]["model"]["sha256"] == file_sha256(paths[0])


@pytest.mark.slow
def test_a_model_swapped_after_planning_is_recorded_under_the_bytes_scanned(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "zoo" / "model.onnx"
    model.parent.mkdir()
    shutil.copyfile(digits["digits_infected.onnx"], model)
    planned_sha = file_sha256(model)
    job = plan_job(ModelEntry(model, None), digits["digits_test.npz"], {}, CHEAP, tmp_path / "out")
    assert job.key.sha256 == planned_sha

    swapped = tmp_path / "swap.onnx"  # the swap a second writer makes between planning and scanning
    shutil.copyfile(digits["digits_clean.onnx"], swapped)
    os.replace(swapped, model)
    scanned_sha = file_sha256(model)

    outcome = run_job(job)
    assert outcome.status == DONE and outcome.sha256 == scanned_sha != planned_sha
    report = json.loads((Path(outcome.report_dir) / "report.json").read_text())
    assert report["model"] == {"path": job.model, "sha256": scanned_sha}
    assert scanned_sha[:10] in outcome.report_dir and planned_sha[:10] not in outcome.report_dir

    with AuditStore(tmp_path / "out" / STORE_NAME) as store:
        store.mark_running(job.key, job.report_dir)
        recorded = record_outcome(store, job, outcome)
        assert recorded == ModelKey(job.key.path, scanned_sha, job.key.config_hash)
        assert store.get(job.key) is None  # the planned file's hash holds no verdict
        assert [row.key.sha256 for row in store.rows()] == [scanned_sha]
        assert not store.is_finished(job.key)  # the infected file put back is scanned on the next run


# ---------------------------------------------------------------- the terminal


def test_file_names_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    name = "/models/\x1b]0;owned\x07\x1b[2Jevil\x1b[31m.onnx"
    row = AuditRow(ModelKey(name, "s", "c"), ERROR, None, None, [], None, None, None, 0.0, f"{name}: \x1b[2J bad")
    assert "\x1b" not in format_table([row]) and "evil" in format_table([row])
    progress = Progress(2, "models", quiet=False)
    progress.advance(outcome_detail(AuditJob(ModelKey(name, "s", "c"), name, "", None, ""), Outcome(ERROR)))
    shown = capsys.readouterr().err
    assert "evil" in shown and "\x1b" not in shown and "\x07" not in shown
