"""benchmarks.zoo_scans runs the real CLI: the flags it writes must be ones `cleanse scan` reads as meant."""

from __future__ import annotations

from pathlib import Path

from benchmarks.zoo_scans import DEFAULT, ScanJob
from scanner.cli import scan, scan_settings
from scanner.config import ScanConfig, make_config


def config_of(job: ScanJob) -> ScanConfig:
    """The ScanConfig `cleanse scan` makes of the job's command line."""
    arguments = job.command()[4:]  # after `python -m scanner.cli scan`
    context = scan.make_context("scan", arguments)
    return make_config(scan_settings(context.params))


def job(tmp_path: Path, **changes: object) -> ScanJob:
    model, data = tmp_path / "model.onnx", tmp_path / "data.npz"
    model.write_bytes(b"")
    data.write_bytes(b"")
    return ScanJob("m", 1, model, data, tmp_path / "out", (3,), 500, **changes)  # type: ignore[arg-type]


def test_the_early_stop_patience_reaches_the_scan_only_when_set(tmp_path: Path) -> None:
    assert "--early-stop-patience" not in job(tmp_path).command()
    assert config_of(job(tmp_path)).reverse.early_stop_patience == DEFAULT.early_stop_patience
    changed = config_of(job(tmp_path, early_stop_patience=8))
    assert changed.reverse.early_stop_patience == 8
    assert (changed.seed, changed.max_images, changed.schedule.mode) == (1, 500, "full")
