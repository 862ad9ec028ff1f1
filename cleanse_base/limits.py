"""Resource limits on untrusted model and data files, checked against declared sizes before anything is
allocated or decompressed.

The limits live in one process-wide setting, so that the deep readers (archive members, ONNX graphs, data
arrays) need no extra argument; `set_limits` also writes them to the environment so that audit worker
processes inherit them. Users raise them with `--limit NAME=VALUE` (or a `[limits]` table in a config file).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from cleanse_base.errors import ConfigError, InputError

ENV_VAR = "CLEANSE_LIMITS"
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    model_bytes: int = 2 * GiB  # a model file (or SavedModel folder) on disk
    unpacked_bytes: int = 2 * GiB  # what one archive (.pt2, TorchScript, .keras, .npz) may inflate to
    data_bytes: int = 2 * GiB  # clean images once decoded, as uint8/float arrays
    image_elements: int = 4096 * 4096 * 3  # one input image, C*H*W, as the graph declares it
    tensor_bytes: int = 1 * GiB  # one tensor of the graph (an initializer, a constant, an inferred activation)
    graph_nodes: int = 100_000  # nodes of an ONNX graph, subgraphs included
    images: int = 100_000  # image files read from a folder

    def describe(self) -> str:
        return ", ".join(f"{field.name}={getattr(self, field.name)}" for field in dataclasses.fields(self))


def parse_limits(text: str, base: Limits | None = None) -> Limits:
    """`name=value,name=value` (values may end in K, M or G) over `base`; ConfigError on anything else."""
    values: dict[str, int] = {}
    names = {field.name for field in dataclasses.fields(Limits)}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in names:
            raise ConfigError(f"unknown limit {name!r}; known: {', '.join(sorted(names))}")
        values[name] = parse_size(raw.strip(), name)
    return dataclasses.replace(base or Limits(), **values)


def parse_size(raw: str, name: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": GiB}.get(raw[-1:].upper(), 1)
    digits = raw[:-1] if scale != 1 else raw
    if not digits.isdigit() or int(digits) <= 0:
        raise ConfigError(f"limit {name} must be a positive whole number (optionally with K, M or G), not {raw!r}")
    return int(digits) * scale


def current_limits() -> Limits:
    return parse_limits(os.environ.get(ENV_VAR, ""))


def set_limits(limits: Limits) -> None:
    """Make `limits` the process-wide limits (and those of processes started from here)."""
    defaults = Limits()
    changed = [
        f"{field.name}={getattr(limits, field.name)}"
        for field in dataclasses.fields(Limits)
        if getattr(limits, field.name) != getattr(defaults, field.name)
    ]
    os.environ[ENV_VAR] = ",".join(changed)


def check_limit(what: str, size: int, limit_name: str, error: type[InputError] = InputError) -> None:
    """Raise `error` ('WHAT: N is over the limit NAME=L (raise it with --limit NAME=N)') when `size` exceeds the
    named limit."""
    limit = getattr(current_limits(), limit_name)
    if size > limit:
        raise error(f"{what}: {size} is over the limit {limit_name}={limit} (raise it with --limit {limit_name}=N)")
