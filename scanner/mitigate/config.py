"""Every knob of a mitigation, in one dataclass that the CLI, the API and mitigation.json share."""

from __future__ import annotations

import dataclasses
import math
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError

METHODS_FOLDER = Path(__file__).with_name("methods")  # one module per method, registered by its file name


def method_names() -> tuple[str, ...]:
    """The methods' names, from the module names in scanner/mitigate/methods/ (nothing is imported)."""
    modules = pkgutil.iter_modules([str(METHODS_FOLDER)])
    return tuple(sorted(module.name for module in modules if not module.name.startswith("_")))


@dataclass(frozen=True)
class MitigationConfig:
    method: str = "unlearn"  # the name a MitigationMethod is registered under (scanner/mitigate/methods/)
    labels: tuple[int, ...] = ()  # whose reversed triggers to remove; empty = the report's flagged labels
    pair_triggers: bool = True  # also the triggers of the source-specific pairs that flagged those labels
    holdout_fraction: float = 0.3  # of the labelled clean images, kept out of the repair for the table
    max_images: int = 0  # clean images used; 0 = all
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # unlearn
    unlearn_fraction: float = 0.2  # of the repair images, stamped with a reversed trigger (true label kept)
    # epochs run until every reversed trigger's attack success on the repair images judged is below
    # unlearn_target and their clean accuracy is back within max_accuracy_drop of where it started, `epochs` at
    # most: one epoch over a few hundred repair images (a dozen steps) may leave the backdoor half working or the
    # accuracy down, and a fixed larger count costs every large repair set epochs it does not need
    epochs: int = 10
    unlearn_target: float = 0.05  # 0 = run every epoch
    learning_rate: float = 1e-3
    unlearn_batch: int = 32  # images per fine-tuning step
    max_accuracy_drop: float = 0.03  # prune: never lose more clean accuracy than this; unlearn: see epochs
    # prune and filter: the neurons feeding this Conv/Gemm/MatMul node; empty = the last one
    layer: str = ""
    prune_target: float = 0.05  # stop once every reversed trigger's attack success is below this
    # once the reversed trigger fails, it is re-attacked with a mask this many times its L1 norm and must fail
    # too (scanner/mitigate/reattack.py); 0 = judge the fixed reversed trigger only, as the paper. A little over
    # 1 leaves the re-attack room to find what the pruning left of the backdoor; a much larger mask succeeds
    # without any backdoor, and pruning then runs on to the accuracy limit.
    prune_reattack_norm: float = 1.25
    # filter
    filter_fpr: float = 0.05  # false-positive rate on clean repair images that sets the threshold
    filter_top_fraction: float = 0.01  # of the layer's neurons, those most raised by the triggers

    def validate(self) -> MitigationConfig:
        """ConfigError on a value no run can use (the method name is checked where methods are looked up)."""
        fractions = {
            "holdout_fraction": (self.holdout_fraction, False),
            "unlearn_fraction": (self.unlearn_fraction, True),
            "unlearn_target": (self.unlearn_target, True),
            "prune_target": (self.prune_target, True),
            "max_accuracy_drop": (self.max_accuracy_drop, True),
            "filter_fpr": (self.filter_fpr, False),
            "filter_top_fraction": (self.filter_top_fraction, False),
        }
        for name, (value, may_be_zero) in fractions.items():
            if not (0 <= value < 1 if may_be_zero else 0 < value < 1):
                bounds = "[0, 1)" if may_be_zero else "(0, 1)"
                raise ConfigError(f"{name} must be in {bounds}, not {value}")
        for name in ("epochs", "unlearn_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"learning_rate must be positive, not {self.learning_rate}")
        if not 0 <= self.prune_reattack_norm < math.inf:
            raise ConfigError(f"prune_reattack_norm must be 0 (off) or positive, not {self.prune_reattack_norm}")
        if self.max_images < 0 or self.threads < 0:
            raise ConfigError("max_images and threads must be 0 (no limit / default) or positive")
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or positive, not {self.seed}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be distinct, not {list(self.labels)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
