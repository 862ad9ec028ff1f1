"""One model's audit task: planned in the driver (identity, settings, report folder), run anywhere.

`run_job` is the same task for local worker processes and Ray workers: it never raises, a model that cannot
be scanned becomes an error outcome.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.errors import InputError
from cleanse_base.files import file_sha256
from scanner.audit.manifest import ModelEntry, entry_settings
from scanner.audit.store import DONE, ERROR, ModelKey, Outcome
from scanner.config import make_config
from scanner.html_report import write_html_report
from scanner.report import write_report
from scanner.run_scan import scan

REPORTS_FOLDER = "reports"
# Settings that change where and how fast a scan runs, not its result: a rerun with other values skips.
RUN_ONLY_SETTINGS = ("device", "threads")


@dataclass(frozen=True)
class AuditJob:
    key: ModelKey
    model: str
    data: str
    settings: dict[str, Any]  # make_config's nested form
    report_dir: str


@functools.cache
def data_fingerprint(path: str) -> str:
    """The clean data's content: a file's sha256, a folder's listing with sizes; a missing path its name."""
    if not path:
        return "none"
    data = Path(path)
    if data.is_file():
        return file_sha256(data)
    if data.is_dir():
        listing = sorted(
            (str(item.relative_to(data)), item.stat().st_size) for item in data.rglob("*") if item.is_file()
        )
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return f"missing:{path}"


def config_hash(settings: dict[str, Any], data: str) -> str:
    """A hash of what decides a verdict: the full scan config (or the raw settings if they are invalid)
    and the data's content."""
    try:
        config: dict[str, Any] = make_config(settings).to_dict()
    except InputError:
        config = settings
    hashed = {key: value for key, value in config.items() if key not in RUN_ONLY_SETTINGS}
    payload = json.dumps({"config": hashed, "data": data_fingerprint(data)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def model_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "unreadable"  # the scan reports why, as an error row


def plan_job(
    entry: ModelEntry, default_data: Path | None, shared: dict[str, Any], command_line: dict[str, Any], out: Path
) -> AuditJob:
    model = entry.path.resolve()
    data = entry.data or default_data
    data_path = str(data.resolve()) if data else ""
    settings = entry_settings(entry, shared, command_line)
    key = ModelKey(str(model), model_sha256(model), config_hash(settings, data_path))
    report_dir = out / REPORTS_FOLDER / f"{model.stem}-{key.sha256[:10]}-{key.config_hash[:6]}"
    return AuditJob(key, str(model), data_path, settings, str(report_dir.resolve()))


def run_job(job: AuditJob, device: str | None = None, threads: int | None = None) -> Outcome:
    """Scan one model and write its report folder (report.json, report.html, triggers)."""
    started = time.perf_counter()
    try:
        if not job.data:
            raise InputError("no clean data for this model (give --data or a data entry in the manifest)")
        config = make_config(job.settings)
        run_settings = {"device": device, "threads": threads}
        config = dataclasses.replace(config, **{key: value for key, value in run_settings.items() if value})
        report = scan(job.model, job.data, config)
        write_report(report, job.report_dir)
        write_html_report(report, job.report_dir)
    except InputError as exc:
        return Outcome(ERROR, error=str(exc), seconds=time.perf_counter() - started)
    except Exception as exc:  # a bug or a crash inside a converter: the audit goes on with the next model
        return Outcome(
            ERROR, error=f"internal error: {type(exc).__name__}: {exc}", seconds=time.perf_counter() - started
        )
    anomaly = report.mad.anomaly_index
    return Outcome(
        DONE,
        verdict=report.verdict,
        anomaly_index=anomaly if math.isfinite(anomaly) else None,
        flagged_labels=report.flagged,
        seconds=time.perf_counter() - started,
    )
