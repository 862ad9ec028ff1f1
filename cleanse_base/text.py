"""Text that reaches a terminal or a one-line error message."""

from __future__ import annotations

import math
import re

MESSAGE_WIDTH = 300
# C0 controls but tab, DEL and C1 controls: ESC sequences in a file name must not drive the user's terminal
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """`text` with terminal control characters (escape sequences, carriage returns, ...) shown as `?`."""
    return _CONTROL.sub("?", str(text))


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """An exception as 'Type: first line' (framework errors run long), safe to print on a terminal."""
    text = str(exc).strip() or type(exc).__name__
    first = printable(text.splitlines()[0][:MESSAGE_WIDTH])
    return f"{type(exc).__name__}: {first}" if with_type else first


def format_number(value: float | None, digits: int = 2) -> str:
    """A figure for a table: '-' when missing, 'inf' when infinite."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"
