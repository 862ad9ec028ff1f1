"""The audit's results for people and machines: a terminal table, audit.csv, audit.json and the exit code."""

from __future__ import annotations

import csv
from pathlib import Path

from cleanse_base.exit_codes import EXIT_CLEAN, EXIT_ERROR, EXIT_INFECTED
from cleanse_base.files import atomic_output, write_json_atomic
from cleanse_base.text import format_number as fmt
from cleanse_base.text import printable
from scanner.audit.store import CLEAN, DONE, ERROR, INCONCLUSIVE, INFECTED, AuditRow

CSV_NAME, JSON_NAME = "audit.csv", "audit.json"
SCHEMA_VERSION = "1.2"  # 1.1: per model "p_value" and "close_flag"; 1.2: per model "close_labels"
ERROR_WIDTH = 70


def exit_code(rows: list[AuditRow], errors_win: bool) -> int:
    """1 if any model is infected, 2 if any could not be scanned or got an inconclusive verdict (as a scan exits
    2 for one); `errors_win` decides when both hold."""
    infected = any(row.verdict == INFECTED for row in rows)
    errors = any(undecided(row) for row in rows)
    if infected and errors:
        return EXIT_ERROR if errors_win else EXIT_INFECTED
    return EXIT_INFECTED if infected else EXIT_ERROR if errors else EXIT_CLEAN


def undecided(row: AuditRow) -> bool:
    """A model with no verdict to act on: an error (or still running), or a scan that could not decide."""
    return row.status != DONE or row.verdict == INCONCLUSIVE


def shown_verdict(row: AuditRow) -> str:
    return row.verdict if row.status == DONE else row.status


def verdict_label(row: AuditRow) -> str:
    """The shown verdict, "infected (close)" for a close flag (a finding another seed may not repeat)."""
    return shown_verdict(row) + (" (close)" if row.close_flag else "")


def p_value_text(row: AuditRow) -> str:
    return "-" if row.p_value is None else f"{row.p_value:.2g}"


def flagged_text(row: AuditRow, separator: str = ",", mark: str = "?") -> str:
    """The flagged labels, each close one marked (flagged only just beside a sure one: DecisionResult.close_labels;
    under a close flag the verdict says it for them all)."""
    marked = [] if row.close_flag else row.close_labels
    return separator.join(f"{label}{mark}" if label in marked else str(label) for label in row.flagged_labels)


def verdict_counts(rows: list[AuditRow]) -> dict[str, int]:
    """Models per shown verdict: clean, infected, inconclusive (only when some are), error (a row still running
    counts as one)."""
    shown = [shown_verdict(row) for row in rows]
    counts = {name: shown.count(name) for name in (CLEAN, INFECTED, INCONCLUSIVE)}
    if not counts[INCONCLUSIVE]:
        del counts[INCONCLUSIVE]
    return {**counts, ERROR: len(rows) - sum(counts.values())}


def format_table(rows: list[AuditRow]) -> str:
    names = [printable(Path(row.key.path).name) for row in rows]
    width = max([len("model"), *map(len, names)])
    verdicts = max([len("verdict"), *(len(verdict_label(row)) for row in rows)])
    lines = [
        f"{'model':<{width}}  {'verdict':<{verdicts}}  {'p-value':>7}  {'anomaly':>7}  {'flagged':<10}  "
        f"{'seconds':>7}  error"
    ]
    for row, name in zip(rows, names, strict=True):
        error = printable((row.error or "").splitlines()[0][:ERROR_WIDTH]) if row.error else ""
        flagged = flagged_text(row)
        lines.append(
            f"{name:<{width}}  {verdict_label(row):<{verdicts}}  {p_value_text(row):>7}  {fmt(row.anomaly_index):>7}  "
            f"{flagged:<10}  {fmt(row.seconds, 1):>7}  {error}"
        )
    counts = verdict_counts(rows)
    lines.append(f"{len(rows)} model(s): " + ", ".join(f"{count} {name}" for name, count in counts.items()))
    return "\n".join(lines)


def write_csv(rows: list[AuditRow], path: Path) -> Path:
    records = [row.to_dict() for row in rows]
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]) if records else ["path"])
        writer.writeheader()
        for record in records:
            spaced = {name: " ".join(map(str, record[name])) for name in ("flagged_labels", "close_labels")}
            writer.writerow({**record, **spaced})
    return path


def write_summary(rows: list[AuditRow], out: Path, errors_win: bool) -> int:
    """audit.csv and audit.json into `out`; returns the exit code they record."""
    code = exit_code(rows, errors_win)
    write_csv(rows, out / CSV_NAME)
    write_json_atomic(
        out / JSON_NAME,
        {"schema_version": SCHEMA_VERSION, "exit_code": code, "models": [row.to_dict() for row in rows]},
    )
    return code
