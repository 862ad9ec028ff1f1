"""Pruning: zero, one step at a time, the neurons that the reversed triggers raise most, until the triggers
no longer work or clean accuracy falls too far (Wang et al. 2019, section VI-B).

"No longer work" is judged twice: the reversed trigger as the scan found it, then, once that one fails, the
trigger re-attacked on the pruned model (scanner.mitigate.reattack), because the fixed reversed trigger fails
long before the backdoor is gone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from scanner.mitigate.layers import Layer, trigger_elevation
from scanner.mitigate.measure import judged_subset, measure
from scanner.mitigate.reattack import reattack_success
from scanner.mitigate.workbench import Workbench
from scanner.mitigate.writeback import tensor_at

STEP_FRACTION = 0.01  # of the layer's neurons pruned per step


@dataclass
class PruneOutcome:
    layer: str
    neurons: int
    pruned: int
    fraction_pruned: float
    stopped: str  # "target reached", "accuracy limit" or "no raised neurons left"
    accuracy_drop: float  # on the repair images judged
    attack_success: dict[str, float]  # of the reversed triggers on the repair images judged
    reattack_success: dict[str, float]  # of the triggers re-attacked at the last check (empty: none made)


def interleaved_order(elevations: list[np.ndarray]) -> np.ndarray:
    """Neurons in pruning order: each trigger's ranking (most raised first, neurons it does not raise left out)
    takes turns, so that one trigger's strong neurons do not use up the accuracy budget before another's are
    reached. Dead neurons (never active) are left out too: zeroing them changes nothing."""
    rankings = [np.argsort(-elevation, kind="stable") for elevation in elevations]
    rankings = [ranking[elevation[ranking] > 0] for ranking, elevation in zip(rankings, elevations, strict=True)]
    turns = [
        ranking[turn]
        for turn in range(max(map(len, rankings), default=0))
        for ranking in rankings
        if turn < len(ranking)
    ]
    _, first = np.unique(turns, return_index=True)
    return np.asarray(turns, dtype=np.int64)[np.sort(first)]


def zero_neurons(weight: torch.Tensor, axis: int, neurons: np.ndarray) -> torch.Tensor:
    """Zero the weights reading `neurons`; returns their old values."""
    index = torch.from_numpy(neurons).to(weight.device)
    old = weight.index_select(axis, index).clone()
    with torch.no_grad():
        weight.index_fill_(axis, index, 0.0)
    return old


def prune(bench: Workbench, layer: Layer) -> PruneOutcome:
    """Prune `layer` of the bench's module in place."""
    model, repair, triggers, config, device = bench.model, bench.repair, bench.triggers, bench.config, bench.device
    judged = judged_subset(repair, config.seed)
    order = interleaved_order([trigger_elevation(bench, layer, judged.images, [trigger]) for trigger in triggers])
    weight = tensor_at(bench.module, layer.weight)
    step = max(1, round(STEP_FRACTION * layer.neurons))

    def judge():
        return measure(model, judged.images, judged.labels, triggers, device)

    def reattacked() -> dict[str, float]:
        budget = config.prune_reattack_norm
        return {
            trigger.name: reattack_success(model, trigger, repair, judged, budget, device, config.seed)
            for trigger in triggers
        }

    baseline = judge()
    current, pruned, steps, reattack = baseline, 0, 0, {}
    most = math.ceil(len(order) / step)  # pruning steps at most: every raised neuron

    def stop_reason() -> str | None:
        """Why pruning stops at `current` (None: it goes on); re-attacks once the reversed triggers fail."""
        nonlocal reattack
        if max(current.attack_success.values()) < config.prune_target:
            reattack = reattacked() if config.prune_reattack_norm > 0 else {}
            if max(reattack.values(), default=0.0) < config.prune_target:
                return "target reached"
        return "no raised neurons left" if pruned >= len(order) else None

    stopped = stop_reason()
    while stopped is None:
        chosen = order[pruned : pruned + step]
        old = zero_neurons(weight, layer.weight_axis, chosen)
        trial = judge()
        steps += 1
        if baseline.clean_accuracy - trial.clean_accuracy > config.max_accuracy_drop:
            with torch.no_grad():
                weight.index_copy_(layer.weight_axis, torch.from_numpy(chosen).to(weight.device), old)
            stopped = "accuracy limit"
        else:
            current, pruned = trial, pruned + len(chosen)
            stopped = stop_reason()
        tried = f"attack success {max(trial.attack_success.values()):.3f}, clean accuracy {trial.clean_accuracy:.3f}"
        kept = "undone, over the accuracy limit" if stopped == "accuracy limit" else "kept"
        detail = f"{pruned} of {layer.neurons} neurons pruned | last step {kept}: {tried}"
        bench.progress(steps, steps if stopped else most, "pruning steps", detail)
    return PruneOutcome(
        layer=layer.node,
        neurons=layer.neurons,
        pruned=pruned,
        fraction_pruned=pruned / layer.neurons,
        stopped=stopped,
        accuracy_drop=baseline.clean_accuracy - current.clean_accuracy,
        attack_success=current.attack_success,
        reattack_success=reattack,
    )
