"""index.html: an audit's models with their verdicts, linking to each model's report.html."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from cleanse_base.text import format_number as fmt
from scanner.audit.store import DONE, ERROR, INCONCLUSIVE, INFECTED, AuditRow
from scanner.audit.summary import flagged_text, p_value_text, shown_verdict, undecided, verdict_label
from scanner.html_report import REPORT_HTML, page, table

INDEX_HTML = "index.html"


def index_row(row: AuditRow, out: Path) -> list[str]:
    verdict = shown_verdict(row)
    name = (
        f'<span title="{escape(row.key.path)} sha256 {escape(row.key.sha256)}">{escape(Path(row.key.path).name)}</span>'
    )
    report = Path(row.report_dir or "") / REPORT_HTML
    if row.status == DONE and report.exists():
        name = f'<a href="{escape(Path(os.path.relpath(report, out)).as_posix())}">{name}</a>'
    flagged = flagged_text(row, ", ", " (close)")
    return [
        name,
        f'<span class="verdict {escape(verdict or ERROR)}">{escape(verdict_label(row) if verdict else ERROR)}</span>',
        p_value_text(row),
        fmt(row.anomaly_index),
        flagged,
        fmt(row.seconds, 1),
        escape(row.error or ""),
    ]


def render_index(rows: list[AuditRow], out: Path) -> str:
    infected = sum(row.verdict == INFECTED for row in rows)
    inconclusive = sum(row.status == DONE and row.verdict == INCONCLUSIVE for row in rows)
    errors = sum(row.status != DONE for row in rows)
    undecided_text = f"{inconclusive} inconclusive, " if inconclusive else ""
    ordered = sorted(rows, key=lambda row: (row.verdict != INFECTED, not undecided(row), row.key.path))
    headers = ["model", "verdict", "p-value", "anomaly index", "flagged", "seconds", "error"]
    models = table(headers, [index_row(row, out) for row in ordered], {2, 3, 5})
    body = f"""
<h1>Cleanse audit</h1>
<p>{len(rows)} model(s): {infected} infected, {undecided_text}{errors} could not be scanned.</p>
{models}
"""
    return page("Cleanse audit", body)


def write_index(rows: list[AuditRow], out: str | Path) -> Path:
    path = Path(out) / INDEX_HTML
    path.write_text(render_index(rows, Path(out)), encoding="utf-8")
    return path
