"""The model as the scanner sees it: raw NCHW pixels in, log-probabilities out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters.contract import ModelContract, to_model_layout
from scanner.preprocess import Scaling

PROBABILITY_FLOOR = torch.finfo(torch.float32).tiny


def run_in_fixed_batches(module: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Run a graph that accepts exactly `batch_size` rows: zero-pad the last chunk and drop the padding."""
    count = inputs.shape[0]
    if count == batch_size:
        return module(inputs)
    padding = (-count) % batch_size
    if padding:
        inputs = torch.cat([inputs, inputs.new_zeros((padding, *inputs.shape[1:]))])
    return torch.cat([module(chunk) for chunk in inputs.split(batch_size)])[:count]


def to_log_probabilities(scores: torch.Tensor, output_kind: str) -> torch.Tensor:
    scores = scores.reshape(scores.shape[0], -1)
    if output_kind == "probabilities":
        return scores.clamp_min(PROBABILITY_FLOOR).log()
    return F.log_softmax(scores, dim=1)  # also renormalizes log-probabilities, leaving them unchanged


class ScoringModel(nn.Module):
    """Scaling, layout and output normalization around a converted classifier."""

    def __init__(self, module: nn.Module, contract: ModelContract, scaling: Scaling, channels_last: bool = False):
        super().__init__()
        self.module = module
        self.contract = contract
        self.scaling = scaling
        # channels_last speeds up convolutions on CPU; only meaningful when the graph takes NCHW directly.
        self.channels_last = channels_last and contract.layout == "NCHW"
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def forward(self, raw_images: torch.Tensor) -> torch.Tensor:
        inputs = to_model_layout(self.scaling.apply(raw_images), self.contract)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.contract.batch_size:
            scores = run_in_fixed_batches(self.module, inputs, self.contract.batch_size)
        else:
            scores = self.module(inputs)
        return to_log_probabilities(scores, self.contract.output_kind)


def log_probabilities(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """The scoring model's log-probabilities of each raw NCHW image, (images, classes)."""
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).to(device)
            scores.append(model(batch).float().cpu().numpy())
    return np.concatenate(scores)


def predict_labels(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Predicted class of each raw NCHW image."""
    return log_probabilities(model, images, device, batch_size).argmax(axis=1)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device) -> float:
    return float(np.mean(predict_labels(model, images, device) == labels))
