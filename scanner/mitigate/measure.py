"""Before/after figures on the held-out images: clean accuracy, and each trigger's attack success."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from scanner.data import CleanData
from scanner.mitigate.triggers import AnyTrigger, Trigger
from scanner.model import predict_labels

# raw NCHW images -> a bool flag per image (True: rejected as triggered)
Screen = Callable[[np.ndarray], np.ndarray]
CLEAN = "clean"
JUDGED_IMAGES = 1000  # repair images a method's stopping rule is judged on (each pruning step, each unlearning epoch)


@dataclass
class Measurement:
    clean_accuracy: float
    # trigger name -> fraction of held-out images not of the trigger's target that it sends to the target
    # (with a filter: sends there without being flagged)
    attack_success: dict[str, float]
    flagged: dict[str, float] = field(default_factory=dict)  # filter only: "clean" and trigger name -> flagged rate


def judged_subset(repair: CleanData, seed: int) -> CleanData:
    """The repair images a stopping rule judges: a seeded sample of JUDGED_IMAGES, in their order."""
    order = np.random.default_rng(seed).permutation(len(repair))
    return repair.subset(np.sort(order[:JUDGED_IMAGES]))


def victims(images: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
    return images[labels != target]


def measure(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    triggers: list[AnyTrigger],
    device: torch.device,
    screen: Screen | None = None,
) -> Measurement:
    """`model` maps raw NCHW pixels to scores (a ScoringModel); `screen`, when given, rejects inputs."""
    clean_accuracy = float(np.mean(predict_labels(model, images, device) == labels))
    attack_success, flagged = {}, {}
    if screen is not None:
        flagged[CLEAN] = float(np.mean(screen(images)))
    for trigger in triggers:
        stamped = trigger.apply(victims(images, labels, trigger.target))
        hijacked = predict_labels(model, stamped, device) == trigger.target
        if screen is not None:
            caught = screen(stamped)
            flagged[trigger.name] = float(np.mean(caught))
            hijacked &= ~caught
        attack_success[trigger.name] = float(np.mean(hijacked))
    return Measurement(clean_accuracy, attack_success, flagged)


def likely_target(model: nn.Module, images: np.ndarray, mask: np.ndarray, pattern: np.ndarray, device) -> int:
    """The label the model gives most images carrying a trigger: the real trigger's target when the user
    does not name it."""
    stamped = Trigger("real", mask, pattern, -1).apply(images)
    return int(np.bincount(predict_labels(model, stamped, device)).argmax())


def format_table(before: Measurement, after: Measurement) -> str:
    rows = [("", "before", "after"), ("clean accuracy", f"{before.clean_accuracy:.4f}", f"{after.clean_accuracy:.4f}")]
    for name, value in before.attack_success.items():
        rows.append((f"attack success, {name}", f"{value:.4f}", f"{after.attack_success[name]:.4f}"))
    for name, value in after.flagged.items():
        what = "false positives on clean images" if name == CLEAN else f"flagged, {name}"
        rows.append((what, "-", f"{value:.4f}"))
    width = max(len(row[0]) for row in rows)
    return "\n".join(f"{label:<{width}}  {b:>8}  {a:>8}" for label, b, a in rows)
