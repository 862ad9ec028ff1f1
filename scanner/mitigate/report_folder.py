"""The scan report a mitigation works from, read from its (untrusted) folder through `ScanReport.from_json`."""

from __future__ import annotations

import json
from pathlib import Path

from cleanse_base.errors import ConfigError
from cleanse_base.files import read_small_file
from scanner.preprocess import Scaling, make_scaling
from scanner.report import ScanReport

REPORT_FILE = "report.json"
# a report holds a few hundred bytes per label: this is far more than any real one, and bounds what is parsed
MAX_REPORT_BYTES = 64 << 20


def report_json(folder: Path) -> Path:
    return folder / REPORT_FILE


def read_scan_report(folder: Path) -> ScanReport:
    """The report in `folder`, every value's type checked; ConfigError with one line when it is not one."""
    path = report_json(folder)
    hint = f" (run `cleanse scan MODEL --out {folder}` first)"
    raw = read_small_file(path, "scan report", MAX_REPORT_BYTES, hint)
    try:
        payload = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable scan report ({type(exc).__name__})") from None
    return ScanReport.from_json(payload, str(path))


def report_scaling(report: ScanReport, channels: int) -> Scaling:
    """The input scaling the scan used (its config's, else the one it chose)."""
    config = report.config
    return make_scaling(config.scale or report.scaling.name, channels, config.mean or None, config.std or None)
