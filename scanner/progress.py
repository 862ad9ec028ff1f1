"""One progress display for long runs (the labels of a scan, the models of an audit): a line on stderr with a
bar, items done of the total, the latest item's detail, the time so far and an estimate of the time left.
Redrawn in place on a terminal; on a log (not a terminal) each item gets its own line."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import click

from cleanse_base.text import printable

BAR_WIDTH = 30


def progress_line(done: int, total: int, unit: str, detail: str, elapsed: float, eta: float | None) -> str:
    filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
    left = f", ~{eta:.0f}s left" if eta is not None else ""
    detail = f" | {printable(detail)}" if detail else ""
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {unit}{detail} | {elapsed:.0f}s{left}"


class Progress:
    """`advance(detail)` as each item finishes; `close()` at the end (also when the run stops early).
    `done`: items already finished before this run (an audit's resumed models), not counted in the estimate."""

    def __init__(self, total: int, unit: str, quiet: bool = False, done: int = 0, stream: TextIO | None = None):
        self.total, self.unit, self.quiet = total, unit, quiet
        self.done = self.skipped = done
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.started = time.monotonic()
        self.open = False  # a line is drawn in place and not yet ended

    def eta_seconds(self) -> float | None:
        finished_now = self.done - self.skipped
        if finished_now <= 0:
            return None
        return (time.monotonic() - self.started) / finished_now * (self.total - self.done)

    def show(self, detail: str = "") -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        line = progress_line(self.done, self.total, self.unit, detail, elapsed, self.eta_seconds())
        if self.interactive:
            click.echo("\r" + line + " ", file=self.stream, nl=False)
            self.open = True
        else:
            click.echo(line, file=self.stream)

    def advance(self, detail: str = "") -> None:
        self.done += 1
        self.show(detail)
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        if self.open:
            click.echo("", file=self.stream)
            self.open = False
