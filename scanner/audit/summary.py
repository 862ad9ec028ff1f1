"""The audit's results for people and machines: a terminal table, audit.csv, audit.json, the exit code,
and the progress display while it runs."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import click

from cleanse_base.exit_codes import EXIT_CLEAN, EXIT_ERROR, EXIT_INFECTED
from cleanse_base.files import write_json_atomic
from cleanse_base.text import format_number as fmt
from cleanse_base.text import printable
from scanner.audit.store import DONE, ERROR, INFECTED, AuditRow, Outcome

CSV_NAME, JSON_NAME = "audit.csv", "audit.json"
SCHEMA_VERSION = "1.0"
ERROR_WIDTH = 70


def exit_code(rows: list[AuditRow], errors_win: bool) -> int:
    """1 if any model is infected, 2 if any could not be scanned; `errors_win` decides when both hold."""
    infected = any(row.verdict == INFECTED for row in rows)
    errors = any(row.status != DONE for row in rows)
    if infected and errors:
        return EXIT_ERROR if errors_win else EXIT_INFECTED
    return EXIT_INFECTED if infected else EXIT_ERROR if errors else EXIT_CLEAN


def shown_verdict(row: AuditRow) -> str:
    return row.verdict if row.status == DONE else row.status


def format_table(rows: list[AuditRow]) -> str:
    width = max([len("model"), *(len(Path(row.key.path).name) for row in rows)])
    lines = [f"{'model':<{width}}  {'verdict':<8}  {'anomaly':>7}  {'flagged':<10}  {'seconds':>7}  error"]
    for row in rows:
        error = printable((row.error or "").splitlines()[0][:ERROR_WIDTH]) if row.error else ""
        flagged = ",".join(map(str, row.flagged_labels))
        lines.append(
            f"{Path(row.key.path).name:<{width}}  {shown_verdict(row):<8}  {fmt(row.anomaly_index):>7}  "
            f"{flagged:<10}  {fmt(row.seconds, 1):>7}  {error}"
        )
    counts = {name: sum(shown_verdict(row) == name for row in rows) for name in ("clean", INFECTED, ERROR)}
    lines.append(f"{len(rows)} model(s): " + ", ".join(f"{count} {name}" for name, count in counts.items()))
    return "\n".join(lines)


def write_csv(rows: list[AuditRow], path: Path) -> Path:
    records = [row.to_dict() for row in rows]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]) if records else ["path"])
        writer.writeheader()
        for record in records:
            writer.writerow({**record, "flagged_labels": " ".join(map(str, record["flagged_labels"]))})
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


class Progress:
    """Models done, running, failed and time left, on one line of stderr (a line per model in logs)."""

    def __init__(self, total: int, skipped: int, quiet: bool) -> None:
        self.total, self.skipped, self.quiet = total, skipped, quiet
        self.done = self.failed = self.running = 0
        self.started = time.perf_counter()
        self.interactive = sys.stderr.isatty()

    def eta_seconds(self) -> float | None:
        finished = self.done + self.failed
        if not finished:
            return None
        remaining = self.total - self.skipped - finished
        return (time.perf_counter() - self.started) / finished * remaining

    def line(self, latest: str = "") -> str:
        eta = self.eta_seconds()
        return (
            f"[audit] {self.done + self.failed + self.skipped}/{self.total} done"
            + (f" ({self.skipped} in earlier runs)" if self.skipped else "")
            + f", {self.running} running, {self.failed} failed | {time.perf_counter() - self.started:.0f}s, "
            + (f"~{eta:.0f}s left" if eta is not None else "time left unknown")
            + (f" | {latest}" if latest else "")
        )

    def show(self, latest: str = "") -> None:
        if self.quiet:
            return
        if self.interactive:
            click.echo("\r" + self.line(latest) + "\033[K", err=True, nl=False)
        else:
            click.echo(self.line(latest), err=True)

    def on_start(self, model: str) -> None:
        self.running += 1
        if self.interactive:  # logs get a line per finished model only
            self.show()

    def on_finish(self, model: str, outcome: Outcome) -> None:
        self.running -= 1
        if outcome.status == DONE:
            self.done += 1
        else:
            self.failed += 1
        self.show(f"{Path(model).name}: {outcome.verdict or 'error'}")

    def close(self) -> None:
        if self.interactive and not self.quiet:
            click.echo("", err=True)
