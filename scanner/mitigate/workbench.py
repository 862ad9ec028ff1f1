"""The bundle every mitigation method works on: the loaded model, its weight links, the data and the triggers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from converters.onnx_to_torch import ConvertedModel
from scanner.data import CleanData
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.triggers import AnyTrigger
from scanner.mitigate.writeback import WeightMap
from scanner.model import ScoringModel

# a method's rounds as they finish, one call a round (unlearning's epochs, pruning's steps): (rounds done, rounds at
# most, what a round is called, what the last one did); where the method stops early, its last call gives rounds at
# most = rounds done
MethodProgress = Callable[[int, int, str, str], None]


def no_progress(done: int, total: int, unit: str, detail: str) -> None:
    """The MethodProgress of a run nobody watches."""


@dataclass
class Workbench:
    converted: ConvertedModel
    model: ScoringModel  # raw NCHW pixels -> log-probabilities, around converted.module
    weight_map: WeightMap
    repair: CleanData
    holdout: CleanData
    triggers: list[AnyTrigger]  # the reversed ones being removed
    config: MitigationConfig
    device: torch.device
    progress: MethodProgress = no_progress

    @property
    def module(self) -> torch.nn.Module:
        """The converted graph whose weights are patched and whose layers are hooked."""
        return self.converted.module
