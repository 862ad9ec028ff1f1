"""Filtering: score each input by the mean activation of the few neurons the reversed triggers raise most,
and flag it above a threshold set on clean images for a chosen false-positive rate (Wang et al. 2019,
section VI-A). The classifier is not changed; the ONNX graph gains two outputs, the score and the flag.

With several flagged labels each trigger gets its own neurons: their mean activation is standardized by its
spread on clean images, and the score is the largest of these, so one trigger's neurons cannot hide another's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from cleanse_base.errors import ModelError
from converters.contract import to_model_layout
from converters.onnx_prepare import opset_of
from converters.onnx_to_torch import ort_session
from scanner.data import CleanData
from scanner.mitigate.layers import Layer, neuron_activations, trigger_elevation
from scanner.mitigate.workbench import Workbench

ELEVATION_IMAGES = 1000  # repair images on which neurons are ranked
SCORE_OUTPUT, FLAG_OUTPUT = "backdoor_score", "backdoor_flag"
NODE_PREFIX = "cleanse_filter"
REDUCE_AXES_AS_INPUT_OPSET = 18  # ReduceMean takes its axes as an input from opset 18 on
SCORE_TOLERANCE = 1e-4
STEPS = ("picked", "mean", "shifted", "scaled")  # intermediate tensors of one trigger's score


@dataclass
class BackdoorFilter:
    """score = max over triggers k of (mean activation of k's neurons - centers[k]) / spreads[k]."""

    layer: Layer
    groups: list[np.ndarray]  # per trigger: int64 indices of the neurons it raises most
    centers: np.ndarray  # float32 per group: mean of the group's activation on clean images
    spreads: np.ndarray  # float32 per group: its standard deviation on clean images
    threshold: float  # flag when score > threshold
    activation_rank: int

    def scores(self, bench: Workbench, images: np.ndarray) -> np.ndarray:
        activations = neuron_activations(bench, self.layer, images)
        return standardized(group_means(activations, self.groups), self.centers, self.spreads).max(axis=1)

    def flags(self, bench: Workbench, images: np.ndarray) -> np.ndarray:
        return self.scores(bench, images) > self.threshold


def group_means(activations: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """(N, groups): each group's mean activation."""
    return np.stack([activations[:, group].mean(axis=1) for group in groups], axis=1)


def standardized(values: np.ndarray, centers: np.ndarray, spreads: np.ndarray) -> np.ndarray:
    return (values - centers) / spreads


@dataclass
class FilterOutcome:
    layer: str
    neurons: list[list[int]]  # per trigger
    threshold: float
    false_positive_rate: float  # on the clean repair images
    score_output: str
    flag_output: str

    @classmethod
    def of(cls, backdoor_filter: BackdoorFilter, false_positive_rate: float, graph: onnx.ModelProto) -> FilterOutcome:
        neurons = [group.tolist() for group in backdoor_filter.groups]
        layer, threshold = backdoor_filter.layer.node, backdoor_filter.threshold
        return cls(layer, neurons, threshold, false_positive_rate, *output_names(graph))


def calibrate_filter(bench: Workbench, layer: Layer, repair: CleanData) -> tuple[BackdoorFilter, float]:
    """The filter on `layer` for the bench's triggers, calibrated on `repair`, and its false-positive rate there."""
    config = bench.config
    rng = np.random.default_rng(config.seed)
    ranked = repair.images[np.sort(rng.permutation(len(repair))[:ELEVATION_IMAGES])]
    count = max(1, round(config.filter_top_fraction * layer.neurons))
    groups = [
        np.argsort(-trigger_elevation(bench, layer, ranked, [trigger]), kind="stable")[:count]
        for trigger in bench.triggers
    ]
    clean = group_means(neuron_activations(bench, layer, repair.images), groups)
    centers = clean.mean(axis=0).astype(np.float32)
    spreads = np.maximum(clean.std(axis=0), np.finfo(np.float32).eps).astype(np.float32)
    clean_scores = standardized(clean, centers, spreads).max(axis=1)
    threshold = float(np.quantile(clean_scores, 1 - config.filter_fpr, method="higher"))
    rank = _activation_rank(bench, layer, repair.images[:1])
    groups = [group.astype(np.int64) for group in groups]
    return BackdoorFilter(layer, groups, centers, spreads, threshold, rank), float(np.mean(clean_scores > threshold))


def _activation_rank(bench: Workbench, layer: Layer, image: np.ndarray) -> int:
    ranks = []
    reader = bench.module.get_submodule(layer.node)
    handle = reader.register_forward_pre_hook(lambda _m, args: ranks.append(args[0].dim()))
    try:
        with torch.no_grad():
            bench.model(torch.from_numpy(image).to(bench.device))
    finally:
        handle.remove()
    return ranks[0]


def _fresh_name(model: onnx.ModelProto, wanted: str) -> str:
    graph = model.graph
    taken = {value.name for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]}
    taken |= {name for node in graph.node for name in [*node.output, node.name]}
    name, suffix = wanted, 1
    while name in taken:
        name, suffix = f"{wanted}_{suffix}", suffix + 1
    return name


def add_filter_outputs(original: onnx.ModelProto, backdoor_filter: BackdoorFilter) -> onnx.ModelProto:
    """A copy of `original` with a per-input score (float) and flag (bool) as extra outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    activation = backdoor_filter.layer.activation
    if activation not in {name for node in graph.node for name in node.output}:
        raise ModelError(
            f"tensor {activation!r} that the filter reads is not in the original graph (the conversion renamed it); "
            "choose another layer with --layer"
        )
    score, flag = _fresh_name(model, SCORE_OUTPUT), _fresh_name(model, FLAG_OUTPUT)
    threshold = _fresh_name(model, f"{NODE_PREFIX}_threshold")
    graph.initializer.append(numpy_helper.from_array(np.asarray(backdoor_filter.threshold, np.float32), threshold))
    rank = backdoor_filter.activation_rank
    axes = list(range(1, rank))
    if opset_of(model) >= REDUCE_AXES_AS_INPUT_OPSET:
        axes_name = _fresh_name(model, f"{NODE_PREFIX}_axes")
        graph.initializer.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), axes_name))
    group_scores = []
    for k, neurons in enumerate(backdoor_filter.groups):
        names = {part: _fresh_name(model, f"{NODE_PREFIX}_{part}_{k}") for part in ("neurons", "center", "spread")}
        values = (neurons, backdoor_filter.centers[k : k + 1], backdoor_filter.spreads[k : k + 1])
        graph.initializer.extend(
            numpy_helper.from_array(v, name) for v, name in zip(values, names.values(), strict=True)
        )
        picked, mean, shifted, scaled = (_fresh_name(model, f"{NODE_PREFIX}_{step}_{k}") for step in STEPS)
        axis = backdoor_filter.layer.neuron_axis % rank
        reduce_inputs = [picked, axes_name] if opset_of(model) >= REDUCE_AXES_AS_INPUT_OPSET else [picked]
        reduce_axes = {} if opset_of(model) >= REDUCE_AXES_AS_INPUT_OPSET else {"axes": axes}
        graph.node.extend(
            [
                helper.make_node(
                    "Gather", [activation, names["neurons"]], [picked], name=f"{NODE_PREFIX}/gather_{k}", axis=axis
                ),
                helper.make_node(
                    "ReduceMean", reduce_inputs, [mean], name=f"{NODE_PREFIX}/mean_{k}", keepdims=0, **reduce_axes
                ),
                helper.make_node("Sub", [mean, names["center"]], [shifted], name=f"{NODE_PREFIX}/center_{k}"),
                helper.make_node("Div", [shifted, names["spread"]], [scaled], name=f"{NODE_PREFIX}/scale_{k}"),
            ]
        )
        group_scores.append(scaled)
    graph.node.append(helper.make_node("Max", group_scores, [score], name=f"{NODE_PREFIX}/max"))
    graph.node.append(helper.make_node("Greater", [score, threshold], [flag], name=f"{NODE_PREFIX}/flag"))
    batch = onnx.TensorShapeProto.Dimension()
    batch.CopyFrom(graph.input[0].type.tensor_type.shape.dim[0])
    for name, elem_type in ((score, onnx.TensorProto.FLOAT), (flag, onnx.TensorProto.BOOL)):
        value = helper.make_tensor_value_info(name, elem_type, [None])
        value.type.tensor_type.shape.dim[0].CopyFrom(batch)
        graph.output.append(value)
    return model


def output_names(model: onnx.ModelProto) -> tuple[str, str]:
    """(score, flag) output names of a filtered model: its last two outputs."""
    return model.graph.output[-2].name, model.graph.output[-1].name


def check_filter_outputs(
    filtered: onnx.ModelProto, backdoor_filter: BackdoorFilter, bench: Workbench, images: np.ndarray
) -> None:
    """The filtered file's score and flag in onnxruntime agree with the torch filter on `images`."""
    contract = bench.converted.contract
    images = images[: contract.batch_size or len(images)]
    raw = torch.from_numpy(images)
    inputs = to_model_layout(bench.model.scaling.apply(raw), contract).contiguous().numpy()
    score, flag = output_names(filtered)
    got_score, got_flag = ort_session(filtered).run([score, flag], {contract.input_name: inputs})
    expected = backdoor_filter.scores(bench, images)
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not np.allclose(got_score, expected, rtol=0, atol=SCORE_TOLERANCE * scale):
        raise ModelError("the filter's score in onnxruntime disagrees with the torch filter; nothing written")
    near = np.abs(expected - backdoor_filter.threshold) <= SCORE_TOLERANCE * scale
    if np.any((got_flag != (expected > backdoor_filter.threshold)) & ~near):
        raise ModelError("the filter's flag in onnxruntime disagrees with the torch filter; nothing written")
