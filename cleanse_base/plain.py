"""Dataclasses from plain values (parsed JSON or TOML) with every value's type checked against the field's type
hint, so that an untrusted file gets one line naming the bad field instead of a TypeError deep inside.

Supported hints: bool, int, float (finite; an int is accepted), str, Any, Literal[...], X | None, tuple[X, ...],
list[X], dict[str, X] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union

from cleanse_base.errors import ConfigError, InputError

T = TypeVar("T")


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def from_plain(
    cls: type[T], values: Any, where: str, error: type[InputError] = ConfigError, allow_unknown: bool = False
) -> T:
    """An instance of dataclass `cls` from a dict of plain values; `error` names `where` and the field that is
    missing or has the wrong type. Fields with a default may be absent; unknown keys are refused unless
    `allow_unknown` (a file written by another version)."""
    if not isinstance(values, dict):
        raise error(f"{where}: expected a table, not {type_name(values)}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(str(key) for key in values if key not in fields)
    if unknown and not allow_unknown:
        raise error(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name, field in fields.items():
        if name not in values and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise error(f"{where}: missing field {name!r}")
    typed = {
        name: _typed(hints[name], value, f"{where}.{name}", error, allow_unknown)
        for name, value in values.items()
        if name in fields
    }
    try:
        return cls(**typed)
    except InputError as exc:  # a dataclass's own check (__post_init__)
        raise error(f"{where}: {exc}") from None


def _typed(hint: Any, value: Any, where: str, error: type[InputError], allow_unknown: bool) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _typed(option, value, where, error, allow_unknown)
            except InputError:
                continue
        raise error(f"{where}: {type_name(value)} is not {_describe(hint)}")
    if origin is Literal:
        if any(value == allowed and type(value) is type(allowed) for allowed in args):
            return value
        raise error(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, where, error, allow_unknown)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, not {type_name(value)}")
        item = args[0] if args else Any
        items = [_typed(item, entry, f"{where}[{i}]", error, allow_unknown) for i, entry in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise error(f"{where}: expected a table with text keys, not {type_name(value)}")
        item = args[1] if args else Any
        return {key: _typed(item, entry, f"{where}.{key}", error, allow_unknown) for key, entry in value.items()}
    return _scalar(hint, value, where, error)


def _scalar(hint: Any, value: Any, where: str, error: type[InputError]) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise error(f"{where}: {value} is not a finite number")
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint not in (bool, int, float, str):
        raise TypeError(f"from_plain does not support the type hint {hint!r} ({where})")
    raise error(f"{where}: expected {_describe(hint)}, not {type_name(value)}")


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
