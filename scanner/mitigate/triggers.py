"""The data a mitigation works with: clean images split into repair and held-out parts, and triggers
(reversed ones from a scan report, or the real one the user holds) stamped on them: a mask and pattern (a label's,
or where a source-specific pair flagged the label, that pair's too), or, where the scan's additive look flagged the
label, the additive perturbation it found (a blend or a sinusoid over the whole image, which no small mask
expresses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanse_base.errors import ConfigError, DataError
from cleanse_base.files import is_regular_file
from cleanse_base.limits import check_limit
from cleanse_base.text import one_line
from scanner.config import check_label_range
from scanner.data import CleanData
from scanner.report import additive_path, trigger_paths
from scanner.reverse import PIXEL_MAX, stamp

NPY_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class Trigger:
    name: str  # as shown in the table: "label 7 (reversed)" or "real"
    mask: np.ndarray  # float32 (H, W) in [0, 1]
    pattern: np.ndarray  # float32 (C, H, W) raw pixels 0-255
    target: int

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw NCHW images with the trigger stamped on, as the scan stamps them."""
        return stamp(images, self.mask[None, None], self.pattern[None]).astype(np.float32)


@dataclass(frozen=True)
class AdditiveTrigger:
    name: str  # "label 7 (additive)"
    delta: np.ndarray  # float32 (C, H, W) raw-pixel offsets within +-epsilon
    epsilon: float  # the bound the scan optimized it under
    target: int

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw NCHW images with the perturbation added, clipped to the pixel range, as the scan added it."""
        return np.clip(images + self.delta[None], 0.0, PIXEL_MAX).astype(np.float32)


AnyTrigger = Trigger | AdditiveTrigger


def additive_trigger_file(report_folder: Path, label: int) -> Path:
    """The .npy of a label's additive perturbation in a scan report folder."""
    return Path(f"{additive_path(report_folder, label)}.npy")


def reversed_additive_trigger(
    report_folder: Path, label: int, epsilon: float, image_shape: tuple[int, int, int]
) -> AdditiveTrigger:
    """A label's additive perturbation from a report folder, checked against the model's image shape and the bound
    the report says it was optimized under before it is used."""
    path = additive_trigger_file(report_folder, label)
    channels, height, width = image_shape
    delta = read_npy(path, "additive perturbation", (height, width, channels), "[H, W, C] raw-pixel offsets")
    if not np.abs(delta).max() <= epsilon * (1 + 1e-5):  # also false for NaN
        raise DataError(f"{path}: additive perturbation values must be finite and within the bound +-{epsilon:g}")
    return AdditiveTrigger(f"label {label} (additive)", _to_chw(delta), epsilon, label)


def reversed_trigger_files(report_folder: Path, label: int, source: int | None = None) -> tuple[Path, Path]:
    """(mask .npy, pattern .npy) of a label's reversed trigger in a scan report folder, or with `source` of the
    trigger reversed for the pair source -> label."""
    paths = trigger_paths(report_folder, label, source)
    return Path(f"{paths['mask']}.npy"), Path(f"{paths['pattern']}.npy")


def reversed_trigger(
    report_folder: Path, label: int, image_shape: tuple[int, int, int], source: int | None = None
) -> Trigger:
    """A label's reversed trigger, or with `source` the pair source -> label's, from a report folder."""
    mask, pattern = load_trigger_files(*reversed_trigger_files(report_folder, label, source), image_shape)
    name = f"label {label} (reversed)" if source is None else f"pair {source} -> {label} (reversed)"
    return Trigger(name, mask, pattern, label)


def load_trigger_files(
    mask_path: Path, pattern_path: Path, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W) in [0, 1], pattern (C, H, W) in raw pixels) from .npy files (a report's reversed trigger, or
    the real one `--trigger` names), checked against the model's image shape before their data is read."""
    channels, height, width = image_shape
    mask = read_npy(mask_path, "trigger mask", (height, width), "[H, W]")
    pattern = read_npy(pattern_path, "trigger pattern", (height, width, channels), "[H, W, C] raw pixels")
    if not (mask.min() >= 0 and mask.max() <= 1):  # also false for NaN
        raise DataError(f"{mask_path}: trigger mask values must be finite and lie in [0, 1]")
    if not (pattern.min() >= 0 and pattern.max() <= PIXEL_MAX):
        raise DataError(f"{pattern_path}: trigger pattern values must be finite raw pixels in [0, 255]")
    return mask, _to_chw(pattern)


def read_npy(path: Path, what: str, shape: tuple[int, ...], layout: str) -> np.ndarray:
    """A numeric .npy array of exactly `shape` as float32: its header is checked (shape, no pickled objects,
    the size limit) before any data is read, from the same open file."""
    if not path.exists():
        raise DataError(f"{path}: no such file ({what})")
    if not is_regular_file(path):
        raise DataError(f"{path}: the {what} must be a regular file")
    try:
        with open(path, "rb") as file:
            declared, dtype = _npy_header(file)
            check_limit(f"{path}: {what} elements", math.prod(declared), "image_elements", DataError)
            if dtype.hasobject or dtype.kind not in "biuf":
                raise DataError(f"{path}: the {what} must be a numeric array, not {dtype} (pickles are refused)")
            if declared != shape:
                raise DataError(f"{path}: {what} has shape {list(declared)}, the model needs {list(shape)} ({layout})")
            file.seek(0)
            array = np.lib.format.read_array(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({one_line(exc)})") from None
    return array.astype(np.float32)


def _npy_header(file) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(file)
    if version not in NPY_READERS:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _fortran_order, dtype = NPY_READERS[version](file)
    return tuple(shape), dtype


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
    images: np.ndarray, triggers: list[AnyTrigger], fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A copy of `images` with a random `fraction` of them stamped, the triggers taking turns."""
    chosen = rng.choice(len(images), size=round(fraction * len(images)), replace=False)
    stamped = images.copy()
    for turn, trigger in enumerate(triggers):
        picked = chosen[turn :: len(triggers)]
        stamped[picked] = trigger.apply(images[picked])
    return stamped


def require_labels(labels: tuple[int, ...], flagged: list[int], num_classes: int) -> list[int]:
    """The labels to mitigate: the user's, else the report's flagged ones; distinct and in range."""
    chosen = list(labels) or flagged
    if not chosen:
        raise ConfigError("the scan report flags no label: nothing to mitigate (name labels with --labels)")
    check_label_range(chosen, num_classes)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"labels to mitigate must be distinct, not {chosen[:10]}")
    return chosen
