"""The data a mitigation works with: clean images split into repair and held-out parts, and triggers
(reversed ones from a scan report, or the real one the user holds) stamped on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanse_base.errors import ConfigError, DataError
from scanner.data import CleanData
from scanner.report import read_trigger
from scanner.reverse import PIXEL_MAX, stamp


@dataclass(frozen=True)
class Trigger:
    name: str  # as shown in the table: "label 7 (reversed)" or "real"
    mask: np.ndarray  # float32 (H, W) in [0, 1]
    pattern: np.ndarray  # float32 (C, H, W) raw pixels 0-255
    target: int

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw NCHW images with the trigger stamped on, as the scan stamps them."""
        return stamp(images, self.mask[None, None], self.pattern[None]).astype(np.float32)


def reversed_trigger(report_folder: Path, label: int) -> Trigger:
    mask, pattern_hwc = read_trigger(report_folder, label)
    return Trigger(f"label {label} (reversed)", mask.astype(np.float32), _to_chw(pattern_hwc), label)


def load_trigger_files(
    mask_path: Path, pattern_path: Path, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, ...]:
    """(mask (H, W), pattern (C, H, W)) from the .npy files `--trigger` names, checked against the model."""
    channels, height, width = image_shape
    arrays = []
    for path in (mask_path, pattern_path):
        try:
            arrays.append(np.load(path, allow_pickle=False).astype(np.float32))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({type(exc).__name__})") from None
    mask, pattern = arrays
    if mask.shape != (height, width):
        raise DataError(f"{mask_path}: trigger mask has shape {list(mask.shape)}, the model needs [{height}, {width}]")
    if pattern.shape != (height, width, channels):
        raise DataError(
            f"{pattern_path}: trigger pattern has shape {list(pattern.shape)}, "
            f"the model needs [{height}, {width}, {channels}] (H, W, C raw pixels)"
        )
    if mask.min() < 0 or mask.max() > 1:
        raise DataError(f"{mask_path}: trigger mask values must lie in [0, 1]")
    if pattern.min() < 0 or pattern.max() > PIXEL_MAX:
        raise DataError(f"{pattern_path}: trigger pattern values must be raw pixels in [0, 255]")
    return mask, _to_chw(pattern)


def _to_chw(pattern_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pattern_hwc.transpose(2, 0, 1), dtype=np.float32)


def split_holdout(data: CleanData, holdout_fraction: float, seed: int) -> tuple[CleanData, CleanData]:
    """(repair, held-out): a seeded random split of labelled clean data."""
    if data.labels is None:
        raise DataError(f"{data.source}: mitigation needs labelled clean data (a y / labels array)")
    order = np.random.default_rng(seed).permutation(len(data))
    held = round(holdout_fraction * len(data))
    if held < 1 or held >= len(data):
        raise DataError(f"{data.source}: {len(data)} images are too few to hold {holdout_fraction:.0%} out")
    return data.subset(np.sort(order[held:])), data.subset(np.sort(order[:held]))


def stamp_fraction(
    images: np.ndarray, triggers: list[Trigger], fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A copy of `images` with a random `fraction` of them stamped, the triggers taking turns."""
    chosen = rng.choice(len(images), size=round(fraction * len(images)), replace=False)
    stamped = images.copy()
    for turn, trigger in enumerate(triggers):
        picked = chosen[turn :: len(triggers)]
        stamped[picked] = trigger.apply(images[picked])
    return stamped


def require_labels(labels: tuple[int, ...], flagged: list[int], num_classes: int) -> list[int]:
    """The labels to mitigate: the user's, else the report's flagged ones."""
    chosen = list(labels) or flagged
    if not chosen:
        raise ConfigError("the scan report flags no label: nothing to mitigate (name labels with --labels)")
    bad = [label for label in chosen if not 0 <= label < num_classes]
    if bad:
        raise ConfigError(f"label(s) {bad} out of range for a model with {num_classes} classes")
    return chosen
