"""Unlearning: fine-tune on clean images, a fraction of them carrying a reversed trigger under their true
label, so that the trigger stops meaning anything (Wang et al. 2019, section VI-C). Epochs run until, on the
repair images judged, every reversed trigger fails and clean accuracy is back (MitigationConfig.epochs at most).

Every float weight trains, buffers included (tf2onnx Dense weights are buffers of the converted module);
the module stays in eval mode, so BatchNorm statistics and dropout stay as deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scanner.mitigate.measure import judged_subset, measure
from scanner.mitigate.triggers import stamp_fraction
from scanner.mitigate.workbench import Workbench
from scanner.optim import Adam


@dataclass
class UnlearnOutcome:
    weight_tensors: int
    weights: int  # trained scalars
    epochs: int
    steps: int
    stopped: str  # "target reached" or "epoch limit"
    final_loss: float  # mean over the last epoch
    # on the repair images judged, after the last epoch
    accuracy_drop: float
    attack_success: dict[str, float]  # of the reversed triggers


def unique_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tied buffers appear once."""
    return list({id(tensor): tensor for tensor in tensors}.values())


def unlearn(bench: Workbench, weights: list[torch.Tensor]) -> UnlearnOutcome:
    """Fine-tune `weights` (tensors of the bench's module) in place on the repair images."""
    model, repair, triggers, config, device = bench.model, bench.repair, bench.triggers, bench.config, bench.device
    weights = unique_tensors(weights)
    rng = np.random.default_rng(config.seed)
    judged = judged_subset(repair, config.seed)
    labels = torch.from_numpy(repair.labels)
    optimizer = Adam(weights, lr=config.learning_rate)
    baseline = measure(model, judged.images, judged.labels, triggers, device)
    steps, epochs, epoch_loss, current, stopped = 0, 0, 0.0, baseline, "epoch limit"
    for weight in weights:
        weight.requires_grad_(True)
    try:
        while epochs < config.epochs:
            images = torch.from_numpy(stamp_fraction(repair.images, triggers, config.unlearn_fraction, rng))
            total = 0.0
            for batch in np.array_split(rng.permutation(len(images)), max(1, len(images) // config.unlearn_batch)):
                index = torch.from_numpy(batch)
                loss = F.nll_loss(model(images[index].to(device)), labels[index].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                steps += 1
            epoch_loss, epochs = total / len(images), epochs + 1
            current = measure(model, judged.images, judged.labels, triggers, device)
            worst = max(current.attack_success.values())
            reached = (
                worst < config.unlearn_target
                and baseline.clean_accuracy - current.clean_accuracy <= config.max_accuracy_drop
            )
            detail = f"repair images: attack success {worst:.3f}, clean accuracy {current.clean_accuracy:.3f}"
            bench.progress(epochs, epochs if reached else config.epochs, "epochs", detail)
            if reached:
                stopped = "target reached"
                break
    finally:
        for weight in weights:
            weight.requires_grad_(False)
            weight.grad = None
    count = sum(weight.numel() for weight in weights)
    accuracy_drop = baseline.clean_accuracy - current.clean_accuracy
    return UnlearnOutcome(
        len(weights), count, epochs, steps, stopped, epoch_loss, accuracy_drop, current.attack_success
    )
