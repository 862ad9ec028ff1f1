"""The audit's summary: an inconclusive model (a scan that could not decide) exits 2 like an error row, and is
shown as inconclusive in the table, audit.csv, audit.json and index.html."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from cleanse_base.exit_codes import EXIT_CLEAN, EXIT_ERROR, EXIT_INFECTED
from scanner.audit.index_page import render_index
from scanner.audit.jobs import plan_job, run_job
from scanner.audit.manifest import ModelEntry
from scanner.audit.store import CLEAN, DONE, ERROR, INCONCLUSIVE, INFECTED, AuditRow, ModelKey
from scanner.audit.summary import CSV_NAME, JSON_NAME, exit_code, format_table, write_summary


def row(name: str, status: str, verdict: str | None) -> AuditRow:
    return AuditRow(ModelKey(f"/m/{name}.onnx", "s", "c"), status, verdict, None, [], None, None, None, 1.0, None)


CLEAN_ROW, INFECTED_ROW = row("a", DONE, CLEAN), row("b", DONE, INFECTED)
UNDECIDED_ROW, ERROR_ROW = row("undecided", DONE, INCONCLUSIVE), row("d", ERROR, None)


@pytest.mark.parametrize(
    ("rows", "errors_win", "code"),
    [
        ([CLEAN_ROW], False, EXIT_CLEAN),
        ([CLEAN_ROW, UNDECIDED_ROW], False, EXIT_ERROR),
        ([CLEAN_ROW, ERROR_ROW], False, EXIT_ERROR),
        ([INFECTED_ROW, UNDECIDED_ROW], False, EXIT_INFECTED),
        ([INFECTED_ROW, UNDECIDED_ROW], True, EXIT_ERROR),
    ],
)
def test_an_inconclusive_model_exits_2_like_an_error(rows: list[AuditRow], errors_win: bool, code: int) -> None:
    assert exit_code(rows, errors_win) == code


def test_an_inconclusive_model_is_shown_as_inconclusive_everywhere(tmp_path: Path) -> None:
    rows = [CLEAN_ROW, INFECTED_ROW, UNDECIDED_ROW, ERROR_ROW]
    table = format_table(rows)
    assert "4 model(s): 1 clean, 1 infected, 1 inconclusive, 1 error" in table
    line = next(text for text in table.splitlines() if text.startswith("undecided.onnx"))
    assert line.split()[1] == INCONCLUSIVE
    assert write_summary(rows, tmp_path, errors_win=False) == EXIT_INFECTED
    with open(tmp_path / CSV_NAME, newline="") as file:
        assert [record["verdict"] for record in csv.DictReader(file)] == ["clean", "infected", "inconclusive", ""]
    summary = json.loads((tmp_path / JSON_NAME).read_text())
    assert [model["verdict"] for model in summary["models"]] == [CLEAN, INFECTED, INCONCLUSIVE, None]
    page = render_index(rows, tmp_path)
    assert "1 infected, 1 inconclusive, 1 could not be scanned" in page
    assert '<span class="verdict inconclusive">inconclusive</span>' in page
    assert "inconclusive" not in format_table([CLEAN_ROW])
    assert "inconclusive," not in render_index([CLEAN_ROW], tmp_path)  # counted only where there are some


def test_a_real_scan_of_two_labels_is_an_inconclusive_row(digits: dict[str, Path], tmp_path: Path) -> None:
    settings = {"labels": [0, 7], "threads": 1, "reverse": {"max_steps": 5, "images_per_step": 16}}
    job = plan_job(ModelEntry(digits["digits_infected.onnx"], None), digits["digits_test.npz"], {}, settings, tmp_path)
    outcome = run_job(job)
    assert (outcome.status, outcome.verdict) == (DONE, INCONCLUSIVE)
    assert outcome.p_value is not None and 0 <= outcome.p_value <= 1 and not outcome.close_flag
    assert outcome.close_labels == []  # not infected: no flag, close or sure
    finished = AuditRow(job.key, DONE, outcome.verdict, None, [], None, None, None, outcome.seconds, None)
    assert exit_code([finished], errors_win=False) == EXIT_ERROR


def test_the_p_value_and_a_close_flag_are_shown(tmp_path: Path) -> None:
    """Under the evidence rule the table, audit.json and index.html give each model's p-value; a flag in the
    close band reads "infected (close)"."""
    close = AuditRow(
        ModelKey("/m/close.onnx", "s", "c"), DONE, INFECTED, 1.2, [12], None, None, None, 1.0, None, 4.6e-4, True
    )
    sure = AuditRow(ModelKey("/m/sure.onnx", "s", "c"), DONE, INFECTED, 6.3, [7], None, None, None, 1.0, None, 2e-30)
    table = format_table([close, sure])
    assert table.splitlines()[0].split()[:4] == ["model", "verdict", "p-value", "anomaly"]
    close_line = next(text for text in table.splitlines() if text.startswith("close.onnx"))
    assert "infected (close)" in close_line and "0.00046" in close_line
    sure_line = next(text for text in table.splitlines() if text.startswith("sure.onnx"))
    assert "close" not in sure_line.removeprefix("sure.onnx") and "2e-30" in sure_line
    write_summary([close, sure], tmp_path, errors_win=False)
    summary = json.loads((tmp_path / JSON_NAME).read_text())
    assert summary["schema_version"] == "1.2"
    assert [(m["p_value"], m["close_flag"]) for m in summary["models"]] == [(4.6e-4, True), (2e-30, False)]
    assert "infected (close)</span>" in render_index([close, sure], tmp_path)


def test_a_label_flagged_only_just_beside_a_sure_one_is_marked_in_the_table_and_the_files(tmp_path: Path) -> None:
    key = ModelKey("/m/two.onnx", "s", "c")
    row = AuditRow(key, DONE, INFECTED, 6.3, [38, 10], None, None, None, 1.0, None, 2e-17, False, [10])
    line = next(text for text in format_table([row]).splitlines() if text.startswith("two.onnx"))
    assert " 38,10? " in line and "(close)" not in line
    write_summary([row], tmp_path, errors_win=False)
    assert json.loads((tmp_path / JSON_NAME).read_text())["models"][0]["close_labels"] == [10]
    assert next(csv.DictReader((tmp_path / CSV_NAME).open()))["close_labels"] == "10"
    assert "<td>38, 10 (close)</td>" in render_index([row], tmp_path)
    whole = dataclasses.replace(row, flagged_labels=[10], close_flag=True)  # the verdict says it: no mark
    assert " 10 " in next(t for t in format_table([whole]).splitlines() if t.startswith("two.onnx"))
