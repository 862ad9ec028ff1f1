"""Unlearning: fine-tune on clean images, a fraction of them carrying a reversed trigger under their true
label, so that the trigger stops meaning anything (Wang et al. 2019, section VI-C).

Every float weight trains, buffers included (tf2onnx Dense weights are buffers of the converted module);
the module stays in eval mode, so BatchNorm statistics and dropout stay as deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scanner.data import CleanData
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.triggers import Trigger, stamp_fraction


@dataclass
class UnlearnOutcome:
    weight_tensors: int
    weights: int  # trained scalars
    steps: int
    final_loss: float  # mean over the last epoch


def unique_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tied buffers appear once."""
    return list({id(tensor): tensor for tensor in tensors}.values())


def unlearn(
    model: nn.Module,
    weights: list[torch.Tensor],
    repair: CleanData,
    triggers: list[Trigger],
    config: MitigationConfig,
    device: torch.device,
) -> UnlearnOutcome:
    """Fine-tune `weights` in place; `model` maps raw NCHW images to log-probabilities."""
    weights = unique_tensors(weights)
    rng = np.random.default_rng(config.seed)
    labels = torch.from_numpy(repair.labels)
    optimizer = torch.optim.Adam(weights, lr=config.learning_rate)
    steps, epoch_loss = 0, 0.0
    for weight in weights:
        weight.requires_grad_(True)
    try:
        for _ in range(config.epochs):
            images = torch.from_numpy(stamp_fraction(repair.images, triggers, config.unlearn_fraction, rng))
            total = 0.0
            for batch in np.array_split(rng.permutation(len(images)), max(1, len(images) // config.batch_size)):
                index = torch.from_numpy(batch)
                loss = F.nll_loss(model(images[index].to(device)), labels[index].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                steps += 1
            epoch_loss = total / len(images)
    finally:
        for weight in weights:
            weight.requires_grad_(False)
            weight.grad = None
    count = sum(weight.numel() for weight in weights)
    return UnlearnOutcome(len(weights), count, steps, epoch_loss)
