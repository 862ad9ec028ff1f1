"""The audit store: one row per model, finished rows skipped on a rerun, rows left running are not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scanner.audit.store import DONE, ERROR, INFECTED, RUNNING, AuditStore, ModelKey, Outcome

KEY = ModelKey("/models/a.onnx", "a" * 64, "c" * 64)
INFECTED_OUTCOME = Outcome(DONE, INFECTED, 4.2, [7], seconds=3.0)


def test_a_finished_model_is_skipped_and_keeps_its_outcome(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "audit.sqlite") as store:
        store.mark_running(KEY, "/out/reports/a")
        store.finish(KEY, INFECTED_OUTCOME, "/out/reports/a")
    with AuditStore(tmp_path / "audit.sqlite") as reopened:
        row = reopened.get(KEY)
        assert reopened.is_finished(KEY)
    assert (row.status, row.verdict, row.anomaly_index, row.flagged_labels) == (DONE, INFECTED, 4.2, [7])
    assert row.report_dir == "/out/reports/a" and row.started_at <= row.finished_at


def test_a_model_left_running_by_a_killed_audit_is_not_done(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "audit.sqlite") as store:
        store.mark_running(KEY, None)
    with AuditStore(tmp_path / "audit.sqlite") as reopened:
        assert reopened.get(KEY).status == RUNNING
        assert not reopened.is_finished(KEY)


def test_rescanning_a_model_updates_its_one_row(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "audit.sqlite") as store:
        for _ in range(3):
            store.mark_running(KEY, None)
        store.finish(KEY, Outcome(ERROR, error="worker died"))
        store.mark_running(KEY, None)
        assert store.get(KEY).error is None  # a new attempt clears the old outcome
        store.finish(KEY, INFECTED_OUTCOME)
        rows = store.rows()
    assert len(rows) == 1 and rows[0].verdict == INFECTED and rows[0].error is None


def test_error_rows_are_retried_only_when_asked(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "audit.sqlite") as store:
        store.finish(KEY, Outcome(ERROR, error="not a readable ONNX model"))  # refused before it started
        assert store.is_finished(KEY)
        assert not store.is_finished(KEY, retry_errors=True)
        assert store.get(KEY).error == "not a readable ONNX model"


def test_the_same_file_with_other_settings_is_another_model(tmp_path: Path) -> None:
    other_config = ModelKey(KEY.path, KEY.sha256, "d" * 64)
    with AuditStore(tmp_path / "audit.sqlite") as store:
        store.finish(KEY, INFECTED_OUTCOME)
        assert not store.is_finished(other_config)


def test_the_store_uses_write_ahead_logging(tmp_path: Path) -> None:
    AuditStore(tmp_path / "audit.sqlite").close()
    connection = sqlite3.connect(tmp_path / "audit.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_the_decision_score_and_close_flag_are_kept(tmp_path: Path) -> None:
    close = Outcome(DONE, INFECTED, 1.5, [12], seconds=2.0, p_value=4.6e-4, close_flag=True, close_labels=[12])
    with AuditStore(tmp_path / "audit.sqlite") as store:
        store.finish(KEY, close)
    with AuditStore(tmp_path / "audit.sqlite") as reopened:
        row = reopened.get(KEY)
        assert (row.p_value, row.close_flag, row.close_labels) == (4.6e-4, True, [12])
        assert row.to_dict()["p_value"] == 4.6e-4 and row.to_dict()["close_flag"] is True
        assert row.to_dict()["close_labels"] == [12]
        reopened.mark_running(KEY, None)  # a rerun starts from nothing
        assert (reopened.get(KEY).close_flag, reopened.get(KEY).close_labels) == (False, [])


def test_a_store_from_before_the_score_columns_gets_them(tmp_path: Path) -> None:
    """An audit store written before p_value, close_flag and close_labels existed opens, its rows read with none."""
    path = tmp_path / "audit.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE models (path TEXT NOT NULL, sha256 TEXT NOT NULL, config_hash TEXT NOT NULL, status TEXT NOT "
        "NULL, verdict TEXT, anomaly_index REAL, flagged_labels TEXT NOT NULL DEFAULT '[]', report_dir TEXT, "
        "started_at TEXT, finished_at TEXT, seconds REAL, error TEXT, PRIMARY KEY (path, sha256, config_hash))"
    )
    old.execute(
        "INSERT INTO models (path, sha256, config_hash, status, verdict, anomaly_index, flagged_labels) "
        "VALUES (?, ?, ?, 'done', 'infected', 3.1, '[7]')",
        (KEY.path, KEY.sha256, KEY.config_hash),
    )
    old.commit()
    old.close()
    with AuditStore(path) as store:
        row = store.get(KEY)
        assert (row.verdict, row.flagged_labels, row.p_value, row.close_flag) == (INFECTED, [7], None, False)
        assert row.close_labels == []
        store.finish(KEY, Outcome(DONE, INFECTED, 3.1, [7], p_value=2e-9))
        assert store.get(KEY).p_value == 2e-9
