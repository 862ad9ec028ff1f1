"""One model's audit task: planned in the driver (identity, settings, report folder), run anywhere.

`run_job` is the same task for local worker processes and Ray workers: it never raises, a model that cannot
be scanned becomes an error outcome. It reads the model's bytes once into a private copy (0600, under the
audit's work folder), hashes those bytes and scans that copy, so the recorded sha256 is always of the bytes
whose verdict it records, however the file changes between planning and scanning. An ONNX model's external
data files are copied beside it and hashed into that sha256 (scanner/audit/external_data.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.errors import InputError, ModelError
from cleanse_base.files import bytes_sha256, file_sha256, is_regular_file, private_copy, tree_sha256
from scanner.audit.external_data import ExternalDataRefused, copy_external_data, planned_sha256
from scanner.audit.manifest import ModelEntry
from scanner.audit.store import DONE, ERROR, ModelKey, Outcome
from scanner.config import ScanConfig, settings_to_config
from scanner.html_report import write_html_report
from scanner.report import write_report
from scanner.run_scan import scan

REPORTS_FOLDER = "reports"
WORK_FOLDER = "work"  # private copies of the models being scanned, removed as each scan ends
# Settings that change where and how fast a scan runs, not its result: a rerun with other values skips.
RUN_ONLY_SETTINGS = ("device", "threads")


@dataclass(frozen=True)
class AuditJob:
    key: ModelKey  # its sha256 is the planned one; the outcome carries the sha256 of the bytes scanned
    model: str
    data: str
    config: ScanConfig | None  # None: the settings make no config, and `settings_error` says why
    report_dir: str
    work_dir: str = ""  # where the private copy goes (default: the system's temporary folder)
    follow_symlinks: bool = True  # False for a model found by searching a folder
    settings_error: str = ""  # the one-line reason a model's settings make no config: its error row


@dataclass(frozen=True)
class PlannedConfig:
    """A model's settings layers, parsed once: the config, or why there is none."""

    config: ScanConfig | None
    error: str
    layers: tuple[dict[str, Any], ...]

    def hashed(self) -> dict[str, Any]:
        """What the config hash covers: the full config, or the raw layers when they make no config."""
        if self.config is None:
            return {"invalid settings": list(self.layers)}
        return self.config.to_dict()


def plan_config(*layers: dict[str, Any]) -> PlannedConfig:
    """The config of settings layers (the manifest's, the model's own, the command line's; later ones win)."""
    try:
        return PlannedConfig(settings_to_config(*layers), "", layers)
    except InputError as exc:  # a model's bad settings are its error row, not a failed audit
        return PlannedConfig(None, str(exc), layers)


def data_fingerprint(path: str) -> str:
    """The clean data's content: a file's sha256, a folder's names and file contents; a missing path its name."""
    if not path:
        return "none"
    data = Path(path)
    if data.is_dir():
        return tree_sha256(data)
    if is_regular_file(data):
        return file_sha256(data)
    return f"missing:{path}"


def config_hash(planned: PlannedConfig, data: str, fingerprint: Callable[[str], str] = data_fingerprint) -> str:
    """A hash of what decides a verdict: the full scan config (or the raw settings if they are invalid)
    and the data's content."""
    hashed = {key: value for key, value in planned.hashed().items() if key not in RUN_ONLY_SETTINGS}
    payload = json.dumps({"config": hashed, "data": fingerprint(data)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def model_sha256(path: Path, follow_symlinks: bool = True) -> str:
    """The planned content hash (an ONNX file's external data files included); never reads a FIFO or device,
    nor through a link it may not follow."""
    if not follow_symlinks and path.is_symlink():
        return "symlink"  # the scan refuses it by name
    try:
        if path.is_dir():
            return tree_sha256(path)
        return planned_sha256(path, file_sha256(path)) if is_regular_file(path) else "unreadable"
    except OSError:
        return "unreadable"  # the scan reports why, as an error row


def model_location(path: Path) -> Path:
    """An absolute path naming the model as given: its folder resolved, its own name kept, so a symlink is
    recorded as itself, not as whatever it points to."""
    absolute = Path(os.path.abspath(path))
    return absolute.parent.resolve() / absolute.name


def report_folder(reports: Path, model: str, sha256: str, config: str) -> str:
    """One folder per model path, content and settings: two files with the same name in different folders
    never share one. The name is made of plain characters whatever the file is called."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model).stem)[:60] or "model"
    return str(reports / f"{stem}-{bytes_sha256(model.encode())[:8]}-{sha256[:10]}-{config[:6]}")


def plan_job(
    entry: ModelEntry,
    default_data: Path | None,
    shared: dict[str, Any],
    command_line: dict[str, Any],
    out: Path,
    fingerprint: Callable[[str], str] = data_fingerprint,
) -> AuditJob:
    """`fingerprint` is data_fingerprint, or a cached one when many models share their data."""
    model = model_location(entry.path)
    follow = not entry.from_folder
    data = entry.data or default_data
    data_path = str(data.resolve()) if data else ""
    planned = plan_config(shared, entry.settings, command_line)
    key = ModelKey(str(model), model_sha256(model, follow), config_hash(planned, data_path, fingerprint))
    reports = (out / REPORTS_FOLDER).resolve()
    report_dir = report_folder(reports, key.path, key.sha256, key.config_hash)
    work = str((out / WORK_FOLDER).resolve())
    return AuditJob(key, str(model), data_path, planned.config, report_dir, work, follow, planned.error)


def cached_fingerprint() -> Callable[[str], str]:
    """data_fingerprint, each path hashed once: for one planning pass, not for a process's lifetime."""
    return functools.cache(data_fingerprint)


def run_job(job: AuditJob, device: str | None = None, threads: int | None = None) -> Outcome:
    """Scan one model's bytes (read once, hashed, scanned from a private copy) and write its report folder
    (report.json, report.html, triggers)."""
    started = time.perf_counter()
    scanned = ScannedBytes(job.key.sha256, job.report_dir)
    try:
        if not job.data:
            raise InputError("no clean data for this model (give --data or a data entry in the manifest)")
        if job.config is None:
            raise InputError(job.settings_error)
        config = job.config
        run_settings = {"device": device, "threads": threads}
        config = dataclasses.replace(config, **{key: value for key, value in run_settings.items() if value})
        work = job.work_dir or None
        if work:
            os.makedirs(work, mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work, prefix="scan-") as private:
            copy, digest = private_copy(job.model, private, job.follow_symlinks, ModelError)
            scanned = scanned.of(digest, job, str(copy))
            if copy.is_file():
                try:
                    scanned = scanned.of(copy_external_data(job.model, copy, digest), job, str(copy))
                except ExternalDataRefused as exc:
                    scanned = scanned.of(exc.sha256, job, str(copy))
                    raise
            report = dataclasses.replace(scan(copy, job.data, config), model_path=job.model)
            write_report(report, scanned.report_dir, [job.model, job.data])
            write_html_report(report, scanned.report_dir)
    except InputError as exc:
        return scanned.outcome(ERROR, error=scanned.named(str(exc), job.model), started=started)
    except Exception as exc:  # a bug or a crash inside a converter: the audit goes on with the next model
        message = scanned.named(f"internal error: {type(exc).__name__}: {exc}", job.model)
        return scanned.outcome(ERROR, error=message, started=started)
    anomaly, decision = report.mad.anomaly_index, report.judged
    return scanned.outcome(
        DONE,
        verdict=report.verdict,
        anomaly_index=anomaly if math.isfinite(anomaly) else None,
        flagged_labels=report.flagged,
        p_value=report.score if decision.score_kind == "p_value" else None,
        close_flag=report.close_flag,
        close_labels=report.close_labels,
        started=started,
    )


@dataclass(frozen=True)
class ScannedBytes:
    """What a job learnt about the bytes it scanned: their hash, their report folder, the private copy's path."""

    sha256: str
    report_dir: str
    copy: str = ""

    def of(self, sha256: str, job: AuditJob, copy: str) -> ScannedBytes:
        """The bytes `sha256` names, reported in their own folder beside the planned one."""
        reports = Path(job.report_dir).parent
        return ScannedBytes(sha256, report_folder(reports, job.model, sha256, job.key.config_hash), copy)

    def named(self, message: str, model: str) -> str:
        """An error message that names the model, not its private copy."""
        return message.replace(self.copy, model) if self.copy else message

    def outcome(self, status: str, started: float, **fields: Any) -> Outcome:
        seconds = time.perf_counter() - started
        return Outcome(status, seconds=seconds, sha256=self.sha256, report_dir=self.report_dir, **fields)
