"""Re-attack: can a trigger about as small as the reversed one still hijack the patched model?

A reversed trigger is the smallest that reaches 99% attack success on the original model, so it sits at the
edge of what works; once a few of the neurons it uses are pruned it fails, while the real trigger, which the
model learned at full strength, keeps working through the neurons left (README, "Mitigation", has the figures
measured on the GTSRB replica). So pruning is judged against a trigger re-optimized on the pruned model:
warm-started from the reversed one, its mask held to a budget of L1 norm, trained to send clean images to the
target label. There it tracked the real trigger's attack success along the whole pruning curve.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scanner.data import CleanData
from scanner.mitigate.measure import victims
from scanner.mitigate.triggers import AdditiveTrigger, AnyTrigger, Trigger
from scanner.model import predict_labels
from scanner.optim import Adam
from scanner.reverse import PIXEL_MAX, mask_from_tanh, pattern_from_tanh, stamp, to_tanh

UPDATES = 100  # Adam updates of the re-attack
REATTACK_BATCH = 32  # images per Adam update of the re-attack
LEARNING_RATE, BETAS = 0.1, (0.5, 0.9)  # Neural Cleanse's optimizer
SATURATION = 1e-4  # keeps arctanh finite for mask / pattern values at 0 or 1


def within_budget(mask: torch.Tensor, budget: float) -> torch.Tensor:
    """The mask scaled down to L1 norm `budget` when it is larger."""
    norm = float(mask.sum())
    return mask * (budget / norm) if norm > budget else mask


def tanh_parameter(values01: np.ndarray, device: torch.device) -> torch.Tensor:
    clipped = np.clip(values01, SATURATION, 1 - SATURATION)
    return torch.from_numpy(to_tanh(clipped).astype(np.float32)).to(device).requires_grad_(True)


def reattack(
    model: nn.Module,
    trigger: Trigger,
    images: np.ndarray,
    labels: np.ndarray,
    budget: float,
    device: torch.device,
    seed: int,
) -> Trigger:
    """`trigger` re-optimized against `model` (raw NCHW pixels -> log-probabilities) on the clean `images` that
    are not of its target, with a mask of L1 norm at most `budget`."""
    mask_tanh = tanh_parameter(trigger.mask[None], device)
    pattern_tanh = tanh_parameter(trigger.pattern / PIXEL_MAX, device)
    optimizer = Adam([mask_tanh, pattern_tanh], lr=LEARNING_RATE, betas=BETAS)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels != trigger.target)  # indices, so that no copy of the images is made per call
    for _ in range(UPDATES):
        batch = torch.from_numpy(images[pool[rng.integers(0, len(pool), REATTACK_BATCH)]]).to(device)
        mask = mask_from_tanh(mask_tanh)
        log_probs = model(stamp(batch, mask, pattern_from_tanh(pattern_tanh)))
        # cross-entropy to the target, and a penalty that only acts while the mask is over budget
        loss = -log_probs[:, trigger.target].mean() + torch.relu(mask.sum() - budget)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mask = within_budget(mask_from_tanh(mask_tanh)[0], budget)
        pattern = pattern_from_tanh(pattern_tanh)
    return Trigger(f"{trigger.name}, re-attacked", mask.cpu().numpy(), pattern.cpu().numpy(), trigger.target)


def reattack_additive(
    model: nn.Module,
    trigger: AdditiveTrigger,
    images: np.ndarray,
    labels: np.ndarray,
    bound: float,
    device: torch.device,
    seed: int,
) -> AdditiveTrigger:
    """`trigger` re-optimized against `model` on the clean `images` not of its target, within +-`bound` per pixel
    (warm-started from its own perturbation)."""
    start = np.clip(trigger.delta / bound, -1 + SATURATION, 1 - SATURATION)
    weights = torch.from_numpy(np.arctanh(start).astype(np.float32)).to(device).requires_grad_(True)
    optimizer = Adam([weights], lr=LEARNING_RATE, betas=BETAS)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels != trigger.target)
    for _ in range(UPDATES):
        batch = torch.from_numpy(images[pool[rng.integers(0, len(pool), REATTACK_BATCH)]]).to(device)
        log_probs = model((batch + bound * torch.tanh(weights)).clamp(0.0, PIXEL_MAX))
        loss = -log_probs[:, trigger.target].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    delta = (bound * torch.tanh(weights)).detach().cpu().numpy()
    return AdditiveTrigger(f"{trigger.name}, re-attacked", delta, bound, trigger.target)


def reattack_success(
    model: nn.Module,
    trigger: AnyTrigger,
    repair: CleanData,
    judged: CleanData,
    budget_factor: float,
    device: torch.device,
    seed: int,
) -> float:
    """Attack success on the judged images (those not of the target) of `trigger` re-attacked on the repair
    images: a mask allowed `budget_factor` times the reversed mask's L1 norm, an additive perturbation that many
    times its bound (at most the pixel range)."""
    attacked: AnyTrigger
    if isinstance(trigger, AdditiveTrigger):
        bound = min(PIXEL_MAX, budget_factor * trigger.epsilon)
        attacked = reattack_additive(model, trigger, repair.images, repair.labels, bound, device, seed)
    else:
        budget = budget_factor * float(np.abs(trigger.mask).sum())
        attacked = reattack(model, trigger, repair.images, repair.labels, budget, device, seed)
    stamped = attacked.apply(victims(judged.images, judged.labels, trigger.target))
    return float(np.mean(predict_labels(model, stamped, device) == trigger.target))
