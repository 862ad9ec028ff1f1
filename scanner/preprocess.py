"""Input scaling: how raw 0-255 pixels become the model's input.

As in the reference code, triggers are stamped on raw pixels and the scaling runs after the stamp, inside
the differentiable path. Every mode is an affine map per channel, with an optional RGB->BGR swap:
    model_input[c] = (raw[order[c]] - offset[c]) / divisor[c]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cleanse_base.errors import ConfigError
from scanner.config import SCALE_NAMES

IMAGENET_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_TORCH_MEAN = (0.485, 0.456, 0.406)
IMAGENET_TORCH_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALE = "unit"


@dataclass(frozen=True)
class Scaling:
    name: str
    offset: tuple[float, ...]  # per channel, in raw pixel units
    divisor: tuple[float, ...]
    bgr: bool = False

    def describe(self) -> str:
        if self.name != "custom":
            return self.name
        mean = ", ".join(f"{o / 255:.4g}" for o in self.offset)
        std = ", ".join(f"{d / 255:.4g}" for d in self.divisor)
        return f"custom (mean {mean}; std {std})"

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw NCHW pixels (0-255) to model input."""
        if self.bgr:
            raw = raw.flip(1)
        shape = (1, -1, 1, 1)
        offset = torch.tensor(self.offset, dtype=raw.dtype, device=raw.device).view(shape)
        divisor = torch.tensor(self.divisor, dtype=raw.dtype, device=raw.device).view(shape)
        return (raw - offset) / divisor


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    raise ConfigError(f"{len(values)} mean/std values given for a {channels}-channel model")


def make_scaling(
    name: str,
    channels: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Scaling:
    """A scaling mode by name. `mean`/`std` (in 0-1 units, torchvision style) are for `custom`."""
    if name == "raw":
        return Scaling("raw", (0.0,) * channels, (1.0,) * channels)
    if name == "unit":
        return Scaling("unit", (0.0,) * channels, (255.0,) * channels)
    if name == "inception":
        return Scaling("inception", (127.5,) * channels, (127.5,) * channels)
    if name in ("imagenet-caffe", "imagenet-torch") and channels != 3:
        raise ConfigError(f"scale {name} needs 3-channel images, the model takes {channels}")
    if name == "imagenet-caffe":
        return Scaling(name, IMAGENET_CAFFE_BGR_MEAN, (1.0,) * 3, bgr=True)
    if name == "imagenet-torch":
        return Scaling(name, tuple(255 * m for m in IMAGENET_TORCH_MEAN), tuple(255 * s for s in IMAGENET_TORCH_STD))
    if name == "custom":
        if mean is None or std is None:
            raise ConfigError("scale custom needs --mean and --std (per channel, in 0-1 units)")
        if any(s <= 0 for s in std):
            raise ConfigError("--std values must be positive")
        mean_c, std_c = _per_channel(mean, channels), _per_channel(std, channels)
        return Scaling("custom", tuple(255 * m for m in mean_c), tuple(255 * s for s in std_c))
    raise ConfigError(f"unknown scale {name!r}; choose one of {', '.join(SCALE_NAMES)}")


def candidate_scalings(channels: int) -> list[Scaling]:
    """The modes tried, in order, when the user names none and the data has labels."""
    names = ["unit", "raw", "inception"] + (["imagenet-torch", "imagenet-caffe"] if channels == 3 else [])
    return [make_scaling(name, channels) for name in names]
