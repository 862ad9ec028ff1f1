"""What a pickle would import, read from its opcodes without unpickling it.

Unpickling runs whatever callables the stream names (`GLOBAL`/`STACK_GLOBAL` then `REDUCE`), which is how
a planted checkpoint runs code on load. `pickletools.genops` only parses the opcodes, so listing the
globals a stream names is safe on any input. A stream that builds a global's name in a way this reader
does not follow (e.g. from computed strings) is reported as naming an unknown global, never as clean.
"""

from __future__ import annotations

import io
import pickletools

UNKNOWN_GLOBAL = ("?", "?")
_STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle stream imports; UNKNOWN_GLOBAL stands for one it hides.

    Raises ValueError when the bytes are not a well-formed pickle.
    """
    found: set[tuple[str, str]] = set()
    recent: list[str | None] = []  # string values on the stack, as far as STACK_GLOBAL needs them
    memo: dict[int, str | None] = {}
    memo_next = 0
    try:
        for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attribute = str(argument).partition(" ")
                found.add((module, attribute))
            elif name == "STACK_GLOBAL":
                pair = recent[-2:] if len(recent) >= 2 else [None, None]
                found.add((pair[0], pair[1]) if None not in pair else UNKNOWN_GLOBAL)  # type: ignore[arg-type]
                del recent[-2:]
                recent.append(None)
            elif name in _STRING_OPCODES:
                recent.append(argument.decode("latin-1") if isinstance(argument, bytes) else str(argument))
            elif name == "MEMOIZE":
                memo[memo_next] = recent[-1] if recent else None
                memo_next += 1
            elif name in _MEMO_PUT_OPCODES:
                memo[int(argument)] = recent[-1] if recent else None
            elif name in _MEMO_GET_OPCODES:
                recent.append(memo.get(int(argument)))
            elif name not in ("PROTO", "FRAME"):
                recent.append(None)
    except Exception as exc:
        raise ValueError(f"not a well-formed pickle ({type(exc).__name__}: {exc})") from None
    return found


def is_pickle(data: bytes) -> bool:
    """True when `data` starts like a pickle stream (protocol 2+ header, or an old-protocol opcode)."""
    return len(data) >= 2 and (data[0] == 0x80 and data[1] <= 5 or data[:1] in (b"(", b"]", b"}", b"c"))


def pickle_strings(data: bytes) -> list[str]:
    """Every string constant a pickle stream pushes (attribute names and values alike), read from its opcodes.

    Raises ValueError when the bytes are not a well-formed pickle.
    """
    try:
        return [
            argument.decode("latin-1") if isinstance(argument, bytes) else str(argument)
            for opcode, argument, _ in pickletools.genops(io.BytesIO(data))
            if opcode.name in _STRING_OPCODES
        ]
    except Exception as exc:
        raise ValueError(f"not a well-formed pickle ({type(exc).__name__}: {exc})") from None
