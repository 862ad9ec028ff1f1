"""The neurons of a layer, as pruning and filtering see them.

A layer is named by the weighted node that reads it (a Conv, a Gemm turned Linear, or a MatMul with a constant
weight): its neurons are that node's input channels (Conv) or features (Gemm, MatMul). Pruning neuron j zeroes
the weights that read it, which removes it exactly whatever activation produced it. The default layer is the
one feeding the last weighted node: the second-to-last layer of a classifier, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from cleanse_base.errors import ConfigError
from scanner.mitigate.triggers import AnyTrigger
from scanner.mitigate.workbench import Workbench
from scanner.mitigate.writeback import INITIALIZER_CONTAINER, tensor_at

ACTIVATION_BATCH = 256


@dataclass(frozen=True)
class Layer:
    node: str  # the reading node's module name (onnx2torch's name for the ONNX node)
    onnx_name: str  # the reading node's name in the ONNX graph
    op_type: str
    activation: str  # ONNX name of the tensor holding the neurons' values
    weight: str  # attribute path of the tensor that reads the neurons
    weight_axis: int  # axis of that tensor indexing the neurons
    neuron_axis: int  # axis of the activation indexing the neurons
    neurons: int

    @property
    def name(self) -> str:
        """As the user names it with --layer: the reading node's ONNX name (its module name when unnamed)."""
        return self.onnx_name or self.node


def _conv_of(module: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """onnx2torch wraps a conv with asymmetric padding in Sequential(pad, conv)."""
    if isinstance(module, nn.Conv2d):
        return "weight", module
    if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Conv2d):
        return f"{len(module) - 1}.weight", module[-1]
    return None


def _layer_of(module: fx.GraphModule, fx_node: fx.Node, onnx_node) -> Layer | None:
    if not onnx_node.input_values:
        return None
    submodule = module.get_submodule(fx_node.target)
    activation = onnx_node.input_values[0]
    if isinstance(submodule, nn.Linear):
        return Layer(
            fx_node.target, onnx_node.name, "Gemm", activation, f"{fx_node.target}.weight", 1, -1, submodule.in_features
        )
    conv = _conv_of(submodule)
    if conv is not None and conv[1].groups == 1:
        local, layer = conv
        return Layer(
            fx_node.target, onnx_node.name, "Conv", activation, f"{fx_node.target}.{local}", 1, 1, layer.in_channels
        )
    if onnx_node.operation_type == "MatMul" and len(fx_node.args) == 2:
        weight = fx_node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr" and weight.target.startswith(INITIALIZER_CONTAINER):
            tensor = tensor_at(module, weight.target)
            if tensor.dim() == 2 and tensor.dtype.is_floating_point:
                return Layer(
                    fx_node.target, onnx_node.name, "MatMul", activation, weight.target, 0, -1, tensor.shape[0]
                )
    return None


def find_layers(module: fx.GraphModule, onnx_nodes: dict) -> list[Layer]:
    """Every prunable layer, in graph order."""
    layers = []
    for fx_node in module.graph.nodes:
        if fx_node.op == "call_module" and fx_node.target in onnx_nodes:
            layer = _layer_of(module, fx_node, onnx_nodes[fx_node.target])
            if layer is not None:
                layers.append(layer)
    return layers


def choose_layer(layers: list[Layer], name: str) -> Layer:
    """The named layer (by its reading node's ONNX or module name, or its tensor's name), else the one feeding
    the last weighted node."""
    if not layers:
        raise ConfigError(
            "the model has no Conv, Gemm or MatMul-with-constant-weight node whose inputs could be pruned"
        )
    if not name:
        return layers[-1]
    for layer in layers:
        if name in (layer.node, layer.onnx_name, layer.activation):
            return layer
    choices = ", ".join(layer.onnx_name or layer.node for layer in layers)
    raise ConfigError(f"no prunable layer named {name!r}; name the node that reads it, one of: {choices}")


def neuron_activations(bench: Workbench, layer: Layer, images: np.ndarray) -> np.ndarray:
    """(N, neurons): each neuron's value on each raw image, averaged over positions for a conv layer."""
    reader = bench.module.get_submodule(layer.node)
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple) -> None:
        values = args[0].detach().movedim(layer.neuron_axis, 1)
        seen.append(values.reshape(values.shape[0], values.shape[1], -1).mean(dim=2))

    handle = reader.register_forward_pre_hook(record)
    rows = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), ACTIVATION_BATCH):
                batch = torch.from_numpy(images[start : start + ACTIVATION_BATCH]).to(bench.device)
                seen.clear()
                bench.model(batch)
                rows.append(torch.cat(seen)[: len(batch)].cpu().numpy())  # a fixed-batch graph saw padding too
    finally:
        handle.remove()
    return np.concatenate(rows)


def trigger_elevation(bench: Workbench, layer: Layer, images: np.ndarray, triggers: list[AnyTrigger]) -> np.ndarray:
    """How much more each neuron fires on triggered images than on the same images clean, on average."""
    clean = neuron_activations(bench, layer, images).mean(axis=0)
    triggered = [neuron_activations(bench, layer, t.apply(images)).mean(axis=0) for t in triggers]
    return np.mean(triggered, axis=0) - clean
