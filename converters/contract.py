"""The model's contract: what its input tensor looks like and what its output means.

Read from the graph, every field overridable by the user (the CLI flags map one to one onto
`ContractOverrides`). Internally Cleanse always holds images as float NCHW in the raw pixel domain;
`to_model_layout` turns that into the tensor the model wants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from cleanse_base.errors import ModelError
from cleanse_base.limits import check_limit
from converters.overrides import ContractOverrides, Layout, OutputKind

CHANNEL_COUNTS = (1, 3)
# Ops that pass scores through unchanged when tracing back from the output to the op that made them.
_PASS_THROUGH_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


@dataclass(frozen=True)
class ModelContract:
    input_name: str
    output_name: str
    layout: Layout
    channels: int
    height: int
    width: int
    num_classes: int
    output_kind: OutputKind
    batch_size: int | None  # None: any batch size; an int: the graph runs only at exactly this size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)

    def model_input_shape(self, batch: int) -> tuple[int, ...]:
        c, h, w = self.image_shape
        return {
            "NCHW": (batch, c, h, w),
            "NHWC": (batch, h, w, c),
            "NHW": (batch, h, w),
            "flat": (batch, c * h * w),
        }[self.layout]


def tensor_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims as ints, symbolic or unknown ones as None."""
    dims = value.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in dims]


def first_consumer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if tensor in node.input), None)


def guess_layout(model: onnx.ModelProto, input_name: str, dims: list[int | None]) -> Layout:
    """NCHW or NHWC for a rank-4 input: by which axis looks like channels, then by a leading Transpose."""
    if len(dims) == 3:
        return "NHW"
    if len(dims) == 2:
        return "flat"
    if len(dims) != 4:
        raise ModelError(f"no image-like input: {input_name!r} has rank {len(dims)} (expected 4, 3 or 2)")
    second_is_channels = dims[1] in CHANNEL_COUNTS
    last_is_channels = dims[3] in CHANNEL_COUNTS
    if second_is_channels != last_is_channels:
        return "NCHW" if second_is_channels else "NHWC"
    consumer = first_consumer(model, input_name)
    if consumer is not None and consumer.op_type == "Transpose":
        perm = next((list(a.ints) for a in consumer.attribute if a.name == "perm"), [])
        if perm == [0, 3, 1, 2]:
            return "NHWC"
    return "NCHW"


def image_dims(layout: Layout, dims: list[int | None]) -> tuple[int | None, int | None, int | None]:
    """(C, H, W) as read from the input dims; flat inputs guess a square grey or RGB image."""
    if layout == "NCHW":
        return dims[1], dims[2], dims[3]
    if layout == "NHWC":
        return dims[3], dims[1], dims[2]
    if layout == "NHW":
        return 1, dims[1], dims[2]
    features = dims[1]
    if features is None:
        return None, None, None
    for channels in CHANNEL_COUNTS:
        side = int(round((features / channels) ** 0.5))
        if side * side * channels == features:
            return channels, side, side
    return None, None, None


def traced_output_op(model: onnx.ModelProto, output_name: str) -> str | None:
    """The op type that produced the scores, looking through reshapes and identities."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(output_name)
    while node is not None and node.op_type in _PASS_THROUGH_OPS:
        node = producers.get(node.input[0])
    return node.op_type if node is not None else None


def guess_output_kind(model: onnx.ModelProto, output_name: str, sample_scores: np.ndarray) -> OutputKind:
    op = traced_output_op(model, output_name)
    if op == "Softmax":
        return "probabilities"
    if op == "LogSoftmax":
        return "log_probabilities"
    scores = sample_scores.reshape(len(sample_scores), -1)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def detect_contract(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    run_sample: Callable[[tuple[int, ...]], np.ndarray],
    overrides: ContractOverrides = ContractOverrides(),
) -> ModelContract:
    """The contract from the graph, then the overrides. `run_sample(input_shape)` runs the model on a
    sample batch of that shape and returns its scores, which settle the class count and the output kind."""
    value = next(v for v in model.graph.input if v.name == input_name)
    if not value.type.HasField("tensor_type"):
        raise ModelError(f"no image-like input: {input_name!r} is not a tensor")
    if value.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise ModelError(f"no image-like input: {input_name!r} is not a float32/float64 tensor")
    dims = tensor_dims(value)
    layout = overrides.layout or guess_layout(model, input_name, dims)
    if overrides.layout and len(dims) != {"NCHW": 4, "NHWC": 4, "NHW": 3, "flat": 2}[overrides.layout]:
        raise ModelError(f"layout {overrides.layout} does not fit input {input_name!r} of rank {len(dims)}")
    channels, height, width = image_dims(layout, dims)
    channels = overrides.channels or channels
    height = overrides.height or height
    width = overrides.width or width
    if channels is None or height is None or width is None:
        raise ModelError(
            f"input {input_name!r} has dims {_show_dims(dims)}: pass --channels/--height/--width for the unknown ones"
        )
    check_limit(f"input {input_name!r}: elements per image", channels * height * width, "image_elements", ModelError)
    if layout == "flat" and dims[1] is not None and channels * height * width != dims[1]:
        raise ModelError(f"flat input of {dims[1]} features is not {channels}x{height}x{width}")
    batch_size = overrides.fixed_batch or dims[0]
    contract = ModelContract(
        input_name=input_name,
        output_name=output_name,
        layout=layout,
        channels=channels,
        height=height,
        width=width,
        num_classes=0,
        output_kind="logits",
        batch_size=batch_size,
    )
    scores = run_sample(contract.model_input_shape(batch_size or 2))
    num_classes = overrides.num_classes or int(np.prod(scores.shape[1:]))
    if num_classes < 2:
        raise ModelError(f"output {output_name!r} is not a classifier's score vector ({num_classes} score)")
    output_kind = overrides.output_kind or guess_output_kind(model, output_name, scores)
    return dataclasses.replace(contract, num_classes=num_classes, output_kind=output_kind)


def to_model_layout(images: torch.Tensor, contract: ModelContract) -> torch.Tensor:
    """Float NCHW images to the model's input layout."""
    if contract.layout == "NCHW":
        return images
    if contract.layout == "NHWC":
        return images.permute(0, 2, 3, 1)
    if contract.layout == "NHW":
        return images[:, 0]
    return images.reshape(images.shape[0], -1)


def _show_dims(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
