"""The audit's store: one SQLite row per model, committed as each model starts and finishes.

A model is identified by (path, sha256, config hash): the same file scanned with the same settings and data.
WAL journaling with synchronous=FULL makes each commit survive a kill -9 or a power cut; a row left
'running' by a killed audit is simply scanned again on the next run. Only the audit's driver process writes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# the scan report's verdicts, re-exported for the audit's modules
from cleanse_base.exit_codes import CLEAN as CLEAN
from cleanse_base.exit_codes import INCONCLUSIVE as INCONCLUSIVE
from cleanse_base.exit_codes import INFECTED as INFECTED

STORE_NAME = "audit.sqlite"
RUNNING, DONE, ERROR = "running", "done", "error"  # status
# CLEAN, INFECTED, INCONCLUSIVE: the verdict of a model whose status is done (the scan report's verdict)

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    verdict TEXT,
    anomaly_index REAL,
    flagged_labels TEXT NOT NULL DEFAULT '[]',
    report_dir TEXT,
    started_at TEXT,
    finished_at TEXT,
    seconds REAL,
    error TEXT,
    p_value REAL,
    close_flag INTEGER NOT NULL DEFAULT 0,
    close_labels TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (path, sha256, config_hash)
)
"""
# columns added since the first store: (name, declaration); an older store gets them (NULL / 0 in its rows)
ADDED_COLUMNS = (
    ("p_value", "REAL"),
    ("close_flag", "INTEGER NOT NULL DEFAULT 0"),
    ("close_labels", "TEXT NOT NULL DEFAULT '[]'"),
)


@dataclass(frozen=True)
class ModelKey:
    path: str
    sha256: str
    config_hash: str


@dataclass(frozen=True)
class Outcome:
    """How one model's scan ended: done with a verdict, or an error with its message."""

    status: str  # DONE or ERROR
    verdict: str | None = None  # CLEAN, INFECTED or INCONCLUSIVE when done
    anomaly_index: float | None = None
    flagged_labels: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    sha256: str = ""  # of the bytes scanned, when they could be read: the row's key (may differ from the plan's)
    report_dir: str = ""  # where the report went, when it differs from the plan's
    p_value: float | None = None  # the evidence rule's model p-value (None under the paper rule)
    close_flag: bool = False  # infected, but the p-value lies in the close band (DecisionResult.close_flag)
    close_labels: list[int] = field(default_factory=list)  # flagged labels in the band (DecisionResult.close_labels)


@dataclass(frozen=True)
class AuditRow:
    key: ModelKey
    status: str
    verdict: str | None
    anomaly_index: float | None
    flagged_labels: list[int]
    report_dir: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    error: str | None
    p_value: float | None = None
    close_flag: bool = False
    close_labels: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.key.path,
            "sha256": self.key.sha256,
            "config_hash": self.key.config_hash,
            "status": self.status,
            "verdict": self.verdict,
            "anomaly_index": self.anomaly_index,
            "flagged_labels": self.flagged_labels,
            "report_dir": self.report_dir,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": self.seconds,
            "error": self.error,
            "p_value": self.p_value,
            "close_flag": self.close_flag,
            "close_labels": self.close_labels,
        }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each write commits
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA busy_timeout=10000")
        self.connection.execute(SCHEMA)
        present = {row[1] for row in self.connection.execute("PRAGMA table_info(models)")}
        for name, declaration in ADDED_COLUMNS:
            if name not in present:
                self.connection.execute(f"ALTER TABLE models ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_finished(self, key: ModelKey, retry_errors: bool = False) -> bool:
        row = self.get(key)
        finished = (DONE,) if retry_errors else (DONE, ERROR)
        return row is not None and row.status in finished

    def mark_running(self, key: ModelKey, report_dir: str | None) -> None:
        self.connection.execute(
            "INSERT INTO models (path, sha256, config_hash, status, report_dir, started_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (path, sha256, config_hash) DO UPDATE SET status = excluded.status, "
            "report_dir = excluded.report_dir, started_at = excluded.started_at, finished_at = NULL, verdict = NULL, "
            "anomaly_index = NULL, flagged_labels = '[]', seconds = NULL, error = NULL, p_value = NULL, "
            "close_flag = 0, close_labels = '[]'",
            (key.path, key.sha256, key.config_hash, RUNNING, report_dir, now()),
        )

    def finish(self, key: ModelKey, outcome: Outcome, report_dir: str | None = None) -> None:
        """Record the outcome; a model never marked running (refused before it could start) gets its row here."""
        self.connection.execute(
            "INSERT INTO models (path, sha256, config_hash, status, verdict, anomaly_index, flagged_labels, "
            "report_dir, started_at, finished_at, seconds, error, p_value, close_flag, close_labels) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (path, sha256, config_hash) DO UPDATE SET status = excluded.status, "
            "verdict = excluded.verdict, anomaly_index = excluded.anomaly_index, "
            "flagged_labels = excluded.flagged_labels, "
            "report_dir = coalesce(excluded.report_dir, report_dir), finished_at = excluded.finished_at, "
            "seconds = excluded.seconds, error = excluded.error, p_value = excluded.p_value, "
            "close_flag = excluded.close_flag, close_labels = excluded.close_labels",
            (
                key.path,
                key.sha256,
                key.config_hash,
                outcome.status,
                outcome.verdict,
                outcome.anomaly_index,
                json.dumps(outcome.flagged_labels),
                report_dir,
                now(),
                now(),
                outcome.seconds,
                outcome.error or None,
                outcome.p_value,
                int(outcome.close_flag),
                json.dumps(outcome.close_labels),
            ),
        )

    def forget_running(self, key: ModelKey) -> None:
        """Drop a 'running' row whose outcome is recorded under another key (the file changed since planning)."""
        self.connection.execute(
            "DELETE FROM models WHERE path = ? AND sha256 = ? AND config_hash = ? AND status = ?",
            (key.path, key.sha256, key.config_hash, RUNNING),
        )

    def get(self, key: ModelKey) -> AuditRow | None:
        cursor = self.connection.execute(
            "SELECT * FROM models WHERE path = ? AND sha256 = ? AND config_hash = ?",
            (key.path, key.sha256, key.config_hash),
        )
        found = cursor.fetchone()
        return _row(cursor, found) if found else None

    def rows(self) -> list[AuditRow]:
        cursor = self.connection.execute("SELECT * FROM models ORDER BY path, started_at")
        return [_row(cursor, values) for values in cursor.fetchall()]


def _row(cursor: sqlite3.Cursor, values: tuple) -> AuditRow:
    record = dict(zip([column[0] for column in cursor.description], values, strict=True))
    return AuditRow(
        key=ModelKey(record["path"], record["sha256"], record["config_hash"]),
        status=record["status"],
        verdict=record["verdict"],
        anomaly_index=record["anomaly_index"],
        flagged_labels=json.loads(record["flagged_labels"]),
        report_dir=record["report_dir"],
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        seconds=record["seconds"],
        error=record["error"],
        p_value=record["p_value"],
        close_flag=bool(record["close_flag"]),
        close_labels=json.loads(record["close_labels"]),
    )
