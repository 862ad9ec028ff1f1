"""The layer pruning and filtering work on, when the user names none.

The paper uses the second-to-last layer. Where the backdoor is carried depends on the model: a layer with
many dead neurons may carry part of it by switching neurons off, which pruning cannot undo, while the layer
before it may hold the trigger in a few position-specific features that pruning removes cheaply (the GTSRB
replica is such a model; README, "Mitigation"). So the candidates are the inputs of the last few weighted
nodes, and the one where inputs carrying the reversed triggers stand out most from clean ones wins: a filter
is calibrated on half of a sample of repair images and judged on the other half. Ties go to the later layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.data import CleanData
from scanner.mitigate.filter import calibrate_filter
from scanner.mitigate.layers import Layer, choose_layer, find_layers
from scanner.mitigate.measure import victims
from scanner.mitigate.workbench import Workbench
from scanner.mitigate.writeback import onnx2torch_nodes

CANDIDATES = 2  # the inputs of the last two weighted nodes: the paper's second-to-last layer and the one before
SAMPLE_IMAGES = 2000  # repair images the choice is made on, half to calibrate and half to judge
MARGIN = 0.005  # an earlier layer must separate better by this much to replace a later one


@dataclass(frozen=True)
class LayerChoice:
    layer: Layer
    chosen_by: str  # "user", "last layer" (one candidate) or "separation"
    # candidate (ONNX node reading it) -> fraction of judged images carrying a reversed trigger that a filter
    # on that layer flags at the configured false-positive rate
    separation: dict[str, float]


def separation(bench: Workbench, layer: Layer, calibration: CleanData, judged: CleanData) -> float:
    """Mean over triggers of the fraction of judged images (not of its target) carrying it that a filter on
    `layer`, calibrated on `calibration`, flags."""
    backdoor_filter, _ = calibrate_filter(bench, layer, calibration)
    caught = []
    for trigger in bench.triggers:
        stamped = trigger.apply(victims(judged.images, judged.labels, trigger.target))
        caught.append(np.mean(backdoor_filter.flags(bench, stamped)))
    return float(np.mean(caught))


def choose_working_layer(bench: Workbench) -> LayerChoice:
    """The user's layer (config.layer), else the candidate where triggered inputs separate best."""
    config, repair = bench.config, bench.repair
    layers = find_layers(bench.module, onnx2torch_nodes(bench.converted.prepared.convertible))
    if config.layer or len(layers) < 2:
        return LayerChoice(choose_layer(layers, config.layer), "user" if config.layer else "last layer", {})
    candidates = layers[::-1][:CANDIDATES]  # latest first
    order = np.random.default_rng(config.seed).permutation(len(repair))[:SAMPLE_IMAGES]
    half = len(order) // 2
    calibration, judged = repair.subset(np.sort(order[:half])), repair.subset(np.sort(order[half:]))
    scores = {layer.name: separation(bench, layer, calibration, judged) for layer in candidates}
    best = candidates[0]
    for layer in candidates[1:]:
        if scores[layer.name] > scores[best.name] + MARGIN:
            best = layer
    return LayerChoice(best, "separation", scores)
