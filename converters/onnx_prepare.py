"""Load an ONNX file and rewrite a copy into the subset onnx2torch converts.

Every step here works on a copy; the file on disk is never touched. Each rewrite that happens is recorded
as a short note so the report can say what was done to the model before it was scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cleanse_base.errors import ModelError
from cleanse_base.text import one_line
from converters.ops.gelu import expand_gelu

ONNX2TORCH_MAX_OPSET = 17
ML_DOMAIN = "ai.onnx.ml"
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


@dataclass
class PreparedOnnx:
    """The model as loaded (`original`), the single-output scoring graph cut from it (`scoring`, runs in
    onnxruntime at its own opset), and the copy rewritten for onnx2torch (`convertible`)."""

    original: onnx.ModelProto
    scoring: onnx.ModelProto
    convertible: onnx.ModelProto
    input_name: str
    output_name: str
    notes: list[str] = field(default_factory=list)


def opset_of(model: onnx.ModelProto, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return entry.version
    return 0


def load_checked(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with its external data) and run onnx.checker, as one-line ModelErrors on failure."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own types
        raise ModelError(f"{path}: not a readable ONNX model ({one_line(exc, with_type=False)})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (the file parses to an empty graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: fails onnx.checker ({one_line(exc, with_type=False)})") from None
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (older exporters list weights as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def is_float_tensor(value: onnx.ValueInfoProto) -> bool:
    tensor_type = value.type.tensor_type
    return value.type.HasField("tensor_type") and tensor_type.elem_type in FLOAT_TYPES


def choose_score_output(model: onnx.ModelProto, output_name: str | None = None) -> str:
    """The tensor holding class scores: a named one, the input of a ZipMap, or the first float output."""
    if output_name:
        produced = {out for node in model.graph.node for out in node.output}
        if output_name not in produced:
            raise ModelError(f"no tensor named {output_name!r} in the graph")
        return output_name
    for node in model.graph.node:
        if node.op_type == "ZipMap":
            return node.input[0]
    for value in model.graph.output:
        if is_float_tensor(value):
            return value.name
    names = ", ".join(value.name for value in model.graph.output)
    raise ModelError(f"no float score output among the graph outputs ({names}); pass --output NAME")


def cut_at(model: onnx.ModelProto, input_name: str, output_name: str) -> onnx.ModelProto:
    """The subgraph from `input_name` to `output_name`, dropping everything else (ZipMap, label outputs...)."""
    if len(model.graph.output) == 1 and model.graph.output[0].name == output_name:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    try:
        return onnx.utils.Extractor(inferred).extract_model([input_name], [output_name])
    except Exception as exc:
        raise ModelError(f"cannot cut the graph at {output_name!r} ({one_line(exc, with_type=False)})") from None


def down_convert(model: onnx.ModelProto, target: int = ONNX2TORCH_MAX_OPSET) -> onnx.ModelProto:
    """Bring the default-domain opset down to `target`, folding constants first when the plain converter
    fails (dynamo exports keep shape computations that the converter cannot rewrite)."""
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as first_error:
        try:
            import onnxscript.optimizer

            folded = onnxscript.optimizer.optimize(model)
            return onnx.version_converter.convert_version(folded, target)
        except Exception:
            raise ModelError(
                f"cannot convert opset {opset_of(model)} to {target} for onnx2torch "
                f"({one_line(first_error, with_type=False)})"
            ) from None


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by tensor name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def clear_reshape_allowzero(model: onnx.ModelProto) -> int:
    """Set Reshape allowzero=1 to 0 where the target shape is a constant with no zero (then both mean the
    same). Returns how many nodes changed."""
    constants = constant_values(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attribute in node.attribute:
            if attribute.name == "allowzero" and attribute.i == 1:
                shape = constants.get(node.input[1])
                if shape is not None and not np.any(shape == 0):
                    attribute.i = 0
                    changed += 1
    return changed


def unsupported_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes for which onnx2torch has no converter at the model's opset."""
    from converters.onnx2torch_compat import import_onnx2torch

    import_onnx2torch()
    from onnx2torch.node_converters.registry import get_converter

    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain if node.domain else onnx.defs.ONNX_DOMAIN)
        except NotImplementedError:
            missing.append(node)
    return missing


def describe_nodes(nodes: list[onnx.NodeProto], limit: int = 6) -> str:
    """'Op (node name), ...' grouped by op type, for one-line error messages."""
    by_op: dict[str, list[str]] = {}
    for node in nodes:
        by_op.setdefault(f"{node.domain + '.' if node.domain else ''}{node.op_type}", []).append(
            node.name or node.output[0]
        )
    parts = []
    for op, names in by_op.items():
        shown = ", ".join(names[:2]) + (f", +{len(names) - 2} more" if len(names) > 2 else "")
        parts.append(f"{op} (node {shown})")
    return "; ".join(parts[:limit]) + (f"; +{len(parts) - limit} more op types" if len(parts) > limit else "")


def prepare_onnx(path: str | Path, input_name: str | None = None, output_name: str | None = None) -> PreparedOnnx:
    """Load, check, cut to one score output and rewrite for onnx2torch."""
    original = load_checked(path)
    inputs = graph_inputs(original)
    if not inputs:
        raise ModelError(f"{path}: the graph has no inputs")
    if input_name is None:
        if len(inputs) > 1:
            names = ", ".join(value.name for value in inputs)
            raise ModelError(f"{path}: the graph has {len(inputs)} inputs ({names}); pass --input NAME")
        input_name = inputs[0].name
    elif input_name not in {value.name for value in inputs}:
        raise ModelError(f"{path}: no graph input named {input_name!r}")

    notes: list[str] = []
    score_name = choose_score_output(original, output_name)
    scoring = cut_at(original, input_name, score_name)
    if scoring is not original:
        dropped = sorted({node.op_type for node in original.graph.node if node.domain == ML_DOMAIN})
        notes.append(f"cut at score tensor {score_name!r}" + (f" (dropped {', '.join(dropped)})" if dropped else ""))

    convertible = onnx.ModelProto()
    convertible.CopyFrom(scoring)
    opset = opset_of(convertible)
    if opset > ONNX2TORCH_MAX_OPSET:
        if expanded := expand_gelu(convertible):
            notes.append(f"Gelu written out as Erf/Tanh arithmetic on {expanded} node(s) (no opset-17 Gelu)")
        convertible = down_convert(convertible)
        notes.append(f"opset {opset} converted to {ONNX2TORCH_MAX_OPSET}")
    if cleared := clear_reshape_allowzero(convertible):
        notes.append(f"Reshape allowzero cleared on {cleared} node(s)")

    missing = unsupported_nodes(convertible)
    if missing:
        raise ModelError(f"{path}: unsupported op(s) for conversion: {describe_nodes(missing)}")
    return PreparedOnnx(original, scoring, convertible, input_name, score_name, notes)
