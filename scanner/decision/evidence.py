"""What a reversed trigger does, measured per label with forward passes only (no optimization).

A planted trigger and a natural one can both be small; they differ in how they work. Measured on the
reversed mask and pattern of every label, on a seeded sample of the scan's clean images:

- `success`: the share of images (not already of the label) the trigger sends to the label;
- `core_success`: the same with only the mask's core kept, the fewest pixels holding half its L1 mass
  (a planted trigger's few decisive pixels still work on their own; a natural one spread thin stops working);
- `faded_success`: the same with the mask at half its strength, every pixel blended half as far towards the
  pattern (the reversal stops where its trigger just works, so any trigger loses some; a planted one drives the
  label far past the boundary and keeps more than a natural one, which barely crosses it);
- `compactness`: the share of the mask's mass inside the best square window of the area the norm would
  fill (a planted patch is one place; a natural trigger is scattered);
- `drive`: the share of the rise in the features entering the model's last linear layer that its top 5% of
  features carry (a planted trigger drives a few dedicated neurons, ABS); None where no such layer is found;
- `mimicry`: the cosine similarity of those features on triggered images to their mean on clean images the
  model assigns to the label (a natural trigger adds the label's own look; a planted one reaches the label by a
  shortcut that leaves its own cluster, as activation clustering observed); None where no such layer is found
  or too few clean images fall in the label.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scanner.reverse import stamp

EVALUATION_IMAGES = 256  # clean images each trigger is tried on
FADED_STRENGTH = 0.5  # `faded_success` scales the mask by this
CORE_MASS = 0.5  # the core keeps the fewest pixels holding this share of the mask's L1 mass
DRIVE_TOP = 0.05  # share of the features whose part of the rise `drive` measures
CLASS_MEAN_IMAGES = 2048  # clean images whose features give each label's mean (forward passes only)
# fewest clean images of a label for its mean: a mean of fewer is mostly those images' own features (at 200 classes
# on 1,000 images, 2 to 4 a label, a clean label whose mean held 2 images was the additive look's most suspicious, and
# with a floor of 4 another clean label was flagged; docs/measurements.md, "Mimicry needs a class mean")
CLASS_MEAN_MIN = 5


@dataclass(frozen=True)
class LabelEvidence:
    label: int
    norm: float
    success: float
    core_success: float
    compactness: float
    drive: float | None
    mimicry: float | None = None
    faded_success: float | None = None  # None in reports from before it was measured (schema 1.24)

    def measurements(self) -> dict[str, float | None]:
        """What was measured beyond the label and its norm."""
        return {
            "success": self.success,
            "core_success": self.core_success,
            "faded_success": self.faded_success,
            "compactness": self.compactness,
            "drive": self.drive,
            "mimicry": self.mimicry,
        }


# ---------------------------------------------------------------- pure pieces on arrays


def core_mask(mask: np.ndarray, mass: float = CORE_MASS) -> np.ndarray:
    """The mask with only its largest values kept, the fewest of them that hold `mass` of its sum."""
    flat = mask.ravel()
    total = float(flat.sum())
    if total <= 0:
        return np.zeros_like(mask)
    order = np.argsort(flat)[::-1]
    kept = int(np.searchsorted(np.cumsum(flat[order]), mass * total)) + 1
    core = np.zeros_like(flat)
    core[order[:kept]] = flat[order[:kept]]
    return core.reshape(mask.shape)


def window_side(norm: float, height: int, width: int) -> int:
    """The side of the square a mask of this L1 norm would fill at full strength."""
    return max(1, min(height, width, math.ceil(math.sqrt(max(norm, 0.0)))))


def compactness(mask: np.ndarray) -> float:
    """Share of the mask's mass inside its best square window of `window_side` pixels."""
    total = float(mask.sum())
    if total <= 0:
        return 0.0
    side = window_side(total, *mask.shape)
    windows = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None], side, 1)
    return min(1.0, float(windows.max()) * side * side / total)


def top_share(rise: np.ndarray, top: float = DRIVE_TOP) -> float:
    """Share of the positive rise carried by the top `top` fraction of features."""
    positive = np.clip(rise, 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        return 0.0
    count = max(1, round(top * positive.size))
    return float(np.sort(positive)[::-1][:count].sum() / total)


# ---------------------------------------------------------------- measurements through the model


def last_linear(model: nn.Module) -> nn.Module | None:
    """The last nn.Linear registered in the model (onnx2torch turns a final Gemm/MatMul+Add into one)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


@contextmanager
def captured_inputs(module: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Collects the input of `module` on every forward pass while the context is open."""
    captured: list[torch.Tensor] = []
    if module is None:
        yield captured
        return
    handle = module.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().flatten(1)))
    try:
        yield captured
    finally:
        handle.remove()


def joined(captured: list[torch.Tensor], rows: int) -> torch.Tensor | None:
    """One row of features per input image: a fixed-batch graph runs in padded chunks (the padding dropped)."""
    if not captured:
        return None
    features = torch.cat(captured).float()
    return features[:rows] if len(features) >= rows else None


def stamp_arrays(images: torch.Tensor, mask: np.ndarray, pattern: np.ndarray) -> torch.Tensor:
    """The reversal's stamp, with the mask and pattern as the arrays a LabelTrigger holds."""
    mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(images.device)
    pattern_t = torch.from_numpy(np.ascontiguousarray(pattern, dtype=np.float32)).to(images.device)
    return stamp(images, mask_t, pattern_t)


class EvidenceMeter:
    """`EvidenceMeter(model, images).measure(label, mask, pattern) -> LabelEvidence`.

    `model` maps raw NCHW pixels to class scores; `images` are raw NCHW clean images (a seeded sample of
    EVALUATION_IMAGES is used). `bfloat16`: the model runs under bfloat16 autocast, as the reversal did (on the
    zoo's 126 scans the same verdicts as float32, at a third of the time on GTSRB; docs/measurements.md)."""

    def __init__(
        self, model: nn.Module, images: np.ndarray, device: torch.device, seed: int = 0, bfloat16: bool = False
    ):
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.permutation(len(images))[:EVALUATION_IMAGES])
        self.model, self.device, self.bfloat16 = model, device, bfloat16
        self.chosen = chosen  # indices of the images triggers are tried on
        self.images = torch.from_numpy(np.ascontiguousarray(images[chosen], dtype=np.float32)).to(device)
        self.layer = last_linear(model)
        with self._forward_only(), captured_inputs(self.layer) as features:
            self.clean_predictions = model(self.images).argmax(dim=1)
        self.clean_features = joined(features, len(self.images))
        self.class_means = self._class_means(images, rng) if self.clean_features is not None else {}

    @contextmanager
    def _forward_only(self) -> Iterator[None]:
        """No gradients, and bfloat16 autocast where the meter runs the model so."""
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            yield

    def _class_means(self, images: np.ndarray, rng: np.random.Generator) -> dict[int, torch.Tensor]:
        """Each label's mean feature vector over clean images the model assigns to it."""
        chosen = np.sort(rng.permutation(len(images))[:CLASS_MEAN_IMAGES])
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for start in range(0, len(chosen), EVALUATION_IMAGES):
            batch = torch.from_numpy(np.ascontiguousarray(images[chosen[start : start + EVALUATION_IMAGES]]))
            with self._forward_only(), captured_inputs(self.layer) as features:
                predictions = self.model(batch.to(self.device, torch.float32)).argmax(dim=1)
            rows = joined(features, len(predictions))
            if rows is None:
                return {}
            for label in predictions.unique().tolist():
                chosen_rows = rows[predictions == label]
                sums[label] = sums.get(label, 0) + chosen_rows.sum(dim=0)
                counts[label] = counts.get(label, 0) + len(chosen_rows)
        return {label: sums[label] / counts[label] for label in sums if counts[label] >= CLASS_MEAN_MIN}

    def _success(
        self, label: int, mask: np.ndarray, pattern: np.ndarray
    ) -> tuple[float, torch.Tensor | None, float | None]:
        """(attack success, mean rise of the features, cosine of the triggered features to the label's mean)."""
        return self.outcome(label, lambda images: stamp_arrays(images, mask, pattern))

    def victims(self, label: int) -> int:
        """How many of the images a trigger for `label` is tried on (those the model does not already give it)."""
        return int((self.clean_predictions != label).sum())

    def outcome(
        self, label: int, trigger: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[float, torch.Tensor | None, float | None]:
        """What `trigger` (raw images in, triggered raw images out) does to the images not already of `label`:
        (attack success, mean rise of the features, cosine of the triggered features to the label's mean)."""
        victims = self.clean_predictions != label
        if not bool(victims.any()):
            return 0.0, None, None
        with self._forward_only(), captured_inputs(self.layer) as features:
            predictions = self.model(trigger(self.images[victims])).argmax(dim=1)
        stamped_features = joined(features, len(predictions))
        rise, mimicry = None, None
        if stamped_features is not None and self.clean_features is not None:
            rise = stamped_features.mean(dim=0) - self.clean_features[victims].mean(dim=0)
            if label in self.class_means:
                similarity = F.cosine_similarity(stamped_features.mean(dim=0), self.class_means[label], dim=0)
                mimicry = float(similarity)
        return float((predictions == label).float().mean()), rise, mimicry

    def measure(self, label: int, mask: np.ndarray, pattern: np.ndarray) -> LabelEvidence:
        success, rise, mimicry = self._success(label, mask, pattern)
        core_success, _, _ = self._success(label, core_mask(mask), pattern)
        faded_success, _, _ = self._success(label, mask * FADED_STRENGTH, pattern)
        return LabelEvidence(
            label=label,
            norm=float(mask.sum()),
            success=success,
            core_success=core_success,
            compactness=compactness(mask),
            drive=None if rise is None else top_share(rise.cpu().numpy()),
            mimicry=mimicry,
            faded_success=faded_success,
        )

    def measure_all(
        self, triggers: Sequence[tuple[int, np.ndarray, np.ndarray]], norms: Mapping[int, float]
    ) -> dict[int, LabelEvidence]:
        """Every (label, mask, pattern)'s evidence, with the norm the decision uses (for a label the scheduler
        stopped early, its projected norm rather than its mask's)."""
        return {
            label: dataclasses.replace(self.measure(label, mask, pattern), norm=norms[label])
            for label, mask, pattern in triggers
        }
