"""Where and how a run computes: the torch device, CPU threads and the seed, set up the same way for a scan
and a mitigation."""

from __future__ import annotations

import torch

from cleanse_base.errors import ConfigError
from cleanse_base.text import printable
from scanner.config import DEVICE_HELP


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA where torch sees one, else CPU), `cpu`, `cuda` or `cuda:N`; ConfigError for anything else
    (meta, mps, ...: the scan needs real arithmetic on a device we test) or a CUDA device that is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {printable(name)!r} (use {DEVICE_HELP})") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise ConfigError(f"unsupported device {printable(name)!r} (use {DEVICE_HELP})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} asked for, but torch sees no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def prepare_runtime(device: str, threads: int, seed: int) -> torch.device:
    """Resolve the device, set torch's CPU threads (0: leave torch's default) and seed torch's generators."""
    if threads < 0:
        raise ConfigError(f"threads must be 0 (torch's default) or positive, not {threads}")
    if seed < 0:
        raise ConfigError(f"seed must be 0 or positive, not {seed}")
    resolved = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return resolved
