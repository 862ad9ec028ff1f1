"""`cleanse audit` end to end on real models: verdicts and error rows with two workers, resuming after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures.audit_models import (
    AUDIT_INFECTED,
    AUDIT_INFECTED_NHWC,
    CORRUPT,
    SCANNABLE,
    TABULAR,
    TEXT,
    build_audit_models,
)
from scanner import schemas
from scanner.audit.index_page import INDEX_HTML
from scanner.audit.store import DONE, ERROR, INFECTED, STORE_NAME, AuditRow, AuditStore
from scanner.audit.summary import CSV_NAME, JSON_NAME
from scanner.cli import main
from scanner.html_report import REPORT_HTML

# A small budget under which the verdicts hold at the default seed 0 with one thread per worker: the infected
# models' anomaly index is 4.3, the clean model's 1.3 (threshold 2); see fixtures/audit_models.py.
CHEAP = ["--images-per-step", "64", "--max-steps", "100", "--threads", "1", "--pairs", "0", "--additive-steps", "0"]
CLEANSE = [sys.executable, "-c", "from scanner.cli import main; main()"]


@pytest.fixture(scope="module")
def models(digits: dict[str, Path]) -> dict[str, Path]:
    """The session's digits fixtures plus the audit's own models, in the same folder."""
    return build_audit_models(digits["digits_test.npz"].parent)


def rows_by_name(out: Path) -> dict[str, AuditRow]:
    with AuditStore(out / STORE_NAME) as store:
        rows = store.rows()
    assert len({row.key.path for row in rows}) == len(rows), "a model has more than one row"
    return {Path(row.key.path).name: row for row in rows}


@pytest.mark.slow
def test_an_audit_with_two_workers_gives_verdicts_and_error_rows(
    models: dict[str, Path], tmp_path: Path, schema_problems
) -> None:
    manifest = tmp_path / "audit.toml"
    manifest.write_text(
        f'[[models]]\npath = "{models[AUDIT_INFECTED]}"\n'
        f'[[models]]\npath = "{models[AUDIT_INFECTED_NHWC]}"\nscale = "inception"\n[models.contract]\nlayout = "NHWC"\n'
        f'[[models]]\npath = "{models["digits_clean.onnx"]}"\n'
    )
    out = tmp_path / "audit"
    bad = [str(models[name]) for name in (CORRUPT, TABULAR, TEXT)]
    args = ["audit", *bad, "--manifest", str(manifest), "--data", str(models["digits_test.npz"]), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--workers", "2", *CHEAP])

    assert result.exit_code == 1, result.output  # infected wins over errors by default
    rows = rows_by_name(out)
    assert {name: row.verdict for name, row in rows.items() if row.status == DONE} == {
        AUDIT_INFECTED: INFECTED,
        AUDIT_INFECTED_NHWC: INFECTED,
        "digits_clean.onnx": "clean",
    }
    assert rows[AUDIT_INFECTED].flagged_labels == [7] and rows[AUDIT_INFECTED].anomaly_index > 2
    assert rows[CORRUPT].status == ERROR and "not a readable ONNX model" in rows[CORRUPT].error
    assert rows[TABULAR].status == ERROR and "[?, 10]" in rows[TABULAR].error
    assert rows[TEXT].status == ERROR and "not a float32/float64 tensor" in rows[TEXT].error

    nhwc_report = json.loads((Path(rows[AUDIT_INFECTED_NHWC].report_dir) / "report.json").read_text())
    assert nhwc_report["config"]["scale"] == "inception" and nhwc_report["contract"]["layout"] == "NHWC"
    assert nhwc_report["config"]["reverse"]["max_steps"] == 100  # the command line's flag reached the model
    for row in rows.values():
        assert (Path(row.report_dir) / REPORT_HTML).exists() == (row.status == DONE)
    summary = json.loads((out / JSON_NAME).read_text())
    assert schema_problems(schemas.AUDIT, summary) == []
    assert summary["exit_code"] == 1 and len(summary["models"]) == 6
    assert len((out / CSV_NAME).read_text().splitlines()) == 7
    assert (out / INDEX_HTML).read_text().count(f'/{REPORT_HTML}"') == 3
    assert "6 model(s): 1 clean, 2 infected, 3 error" in result.stdout

    rerun = CliRunner().invoke(main, [*args, "--workers", "2", *CHEAP, "--errors-win"])
    assert rerun.exit_code == 2, rerun.output
    assert "scanned now 0" in rerun.stdout  # and no row was rewritten:
    assert {name: row.finished_at for name, row in rows_by_name(out).items()} == {
        name: row.finished_at for name, row in rows.items()
    }


def wait_for_finished_rows(out: Path, count: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the audit ended before it could be killed mid-way"
        if (out / STORE_NAME).exists():
            rows = rows_by_name(out).values()
            if sum(row.status == DONE for row in rows) >= count:
                return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} models finished within {timeout} s")


@pytest.mark.slow
def test_an_audit_killed_with_sigkill_resumes_without_losing_or_repeating_a_model(
    models: dict[str, Path], tmp_path: Path
) -> None:
    names = [*SCANNABLE, CORRUPT]
    out = tmp_path / "audit"
    args = [
        "audit",
        *(str(models[name]) for name in names),
        "--data",
        str(models["digits_test.npz"]),
        "--out",
        str(out),
    ]
    args += ["--workers", "2", *CHEAP]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([*CLEANSE, *args], stdout=log, stderr=log, start_new_session=True)
        try:
            wait_for_finished_rows(out, 2, first, timeout=180)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers, no chance to clean up
            first.wait()
    before = rows_by_name(out)
    finished_before = {name: row.finished_at for name, row in before.items() if row.status in (DONE, ERROR)}
    assert len(finished_before) < len(names), "the kill came after the audit had finished"

    rerun = subprocess.run([*CLEANSE, *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    after = rows_by_name(out)
    assert sorted(after) == sorted(names)
    assert all(row.status in (DONE, ERROR) for row in after.values())
    assert {name: after[name].finished_at for name in finished_before} == finished_before  # not scanned again
    assert f"scanned now {len(names) - len(finished_before)};" in rerun.stdout
    assert after[AUDIT_INFECTED].verdict == INFECTED and after["digits_clean.onnx"].verdict == "clean"
    assert after[CORRUPT].status == ERROR
