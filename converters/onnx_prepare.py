"""Load an ONNX file and rewrite a copy into the subset onnx2torch converts.

Every step here works on a copy; the file on disk is never touched. Each rewrite that happens is recorded
as a short note so the report can say what was done to the model before it was scanned.

A small ONNX file can make its readers allocate gigabytes: a huge declared input, an initializer or
external data file of gigabytes, a ConstantOfShape whose shape is computed at run time, or hundreds of
thousands of nodes. `load_checked` measures all of it against cleanse_base.limits before anything is
allocated: the file and graph size first, then the declared tensor sizes, then every tensor's size as
shape inference (with data propagation) sees it at the batch size Cleanse scans with.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from cleanse_base.errors import ModelError
from cleanse_base.limits import check_limit, current_limits
from cleanse_base.text import one_line, printable
from converters.ops.gelu import expand_gelu

ONNX2TORCH_MAX_OPSET = 17
ML_DOMAIN = "ai.onnx.ml"
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
# Tensors are sized at the scan's default mini-batch (ScanConfig.batch_size) where the batch is not fixed.
CHECK_BATCH = 32
# Ops whose output size is set by the values (not the shapes) of their inputs: shape inference must bound
# their output, or the model is refused.
ALLOCATING_OPS = {
    "ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "MaxUnpool", "Col2Im",
    "CenterCropPad", "Loop", "Scan", "SequenceConstruct", "SequenceInsert", "SplitToSequence",
    "ConcatFromSequence",
}  # fmt: skip


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
    """Read an ONNX file (with its external data) and run onnx.checker, as one-line ModelErrors on failure,
    refusing a model over the limits before its external data, the checker or shape inference allocate."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    check_limit(f"{path}: file size", path.stat().st_size, "model_bytes", ModelError)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own types
        raise ModelError(f"{path}: not a readable ONNX model ({one_line(exc, with_type=False)})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (the file parses to an empty graph)")
    check_limit(f"{path}: graph nodes (subgraphs included)", count_nodes(model.graph), "graph_nodes", ModelError)
    check_stored_tensors(path, model)
    try:  # onnx refuses absolute paths, '..', links and devices here
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read its external data ({one_line(exc, with_type=False)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: fails onnx.checker ({one_line(exc, with_type=False)})") from None
    check_input_sizes(path, model)
    check_inferred_tensors(path, model)
    return model


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph of its nodes (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from all_graphs(subgraph)


def count_nodes(graph: onnx.GraphProto) -> int:
    return sum(len(each.node) for each in all_graphs(graph))


def element_size(elem_type: int) -> int:
    """Bytes per element of an ONNX tensor type (strings and unknown types count as 1)."""
    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 1


def stored_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor-valued attributes (Constant values...) of every graph."""
    for graph in all_graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def declared_bytes(tensor: onnx.TensorProto) -> int:
    """The tensor's size as its dims and type declare it."""
    return math.prod(tensor.dims) * element_size(tensor.data_type)


def stored_bytes(tensor: onnx.TensorProto, base: Path) -> int:
    """What reading the tensor allocates: its declared size, or more where its external data says so."""
    declared = declared_bytes(tensor)
    if not external_data_helper.uses_external_data(tensor):
        return declared
    info = external_data_helper.ExternalDataInfo(tensor)
    if info.length is not None:
        return max(declared, int(info.length))
    try:  # without a length, onnx reads the whole file (the path itself is checked when it is opened)
        return max(declared, os.stat(base / info.location).st_size - int(info.offset or 0))
    except (OSError, ValueError):
        return declared


def check_stored_tensors(path: Path, model: onnx.ModelProto) -> None:
    """Each stored tensor against tensor_bytes and all of them against model_bytes, by their declared sizes."""
    total = 0
    for tensor in stored_tensors(model):
        size = stored_bytes(tensor, path.parent)
        check_limit(f"{path}: stored tensor {printable(tensor.name)!r}, bytes", size, "tensor_bytes", ModelError)
        total += size
    check_limit(f"{path}: stored tensors, bytes", total, "model_bytes", ModelError)


def known_dims(value: onnx.ValueInfoProto | None) -> list[int] | None:
    """A tensor's dims when all are known numbers, else None."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    return [dim.dim_value for dim in dims] if all(dim.HasField("dim_value") for dim in dims) else None


def check_input_sizes(path: Path, model: onnx.ModelProto) -> None:
    """One input sample (every known dim after the batch) against image_elements."""
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        per_sample = math.prod(dim.dim_value for dim in dims[1:] if dim.HasField("dim_value"))
        what = f"{path}: input {printable(value.name)!r}, elements per sample"
        check_limit(what, per_sample, "image_elements", ModelError)


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose inputs have `batch` where their first dim is symbolic or unknown."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in graph_inputs(fixed):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return fixed


def check_inferred_tensors(path: Path, model: onnx.ModelProto) -> None:
    """Every tensor that shape inference (with data propagation) can size at CHECK_BATCH against
    tensor_bytes; an allocating op whose output it cannot size is refused, as its size is set at run time."""
    try:
        inferred = onnx.shape_inference.infer_shapes(with_batch(model, CHECK_BATCH), data_prop=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: shape inference fails, so tensor sizes cannot be bounded ({one_line(exc)})"
        ) from None
    limit = current_limits().tensor_bytes
    for graph in all_graphs(inferred.graph):
        values = {value.name: value for value in [*graph.input, *graph.value_info, *graph.output]}
        produced = [("input", "graph input", value.name) for value in graph.input]
        produced += [(node.op_type, f"{node.op_type} output", out) for node in graph.node for out in node.output if out]
        for op, role, name in produced:
            dims = known_dims(values.get(name))
            if dims is None and op in ALLOCATING_OPS:
                raise ModelError(
                    f"{path}: the size of {op} output {printable(name)!r} is set at run time and cannot be bounded"
                )
            size = 0 if dims is None else math.prod(dims) * element_size(values[name].type.tensor_type.elem_type)
            if size > limit:  # check_limit words the refusal
                what = f"{path}: {role} {printable(name)!r} of shape {dims} at batch {CHECK_BATCH}, bytes"
                check_limit(what, size, "tensor_bytes", ModelError)


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


def inline_weight_identities(model: onnx.ModelProto) -> int:
    """Point the users of an Identity of an initializer at the initializer itself and drop the Identity.
    torch's TorchScript exporter stores a repeated weight (two equal zero biases) once and writes its second
    use as an Identity of the first, which onnx2torch cannot convert (it looks a Conv's weights up among the
    initializers). Returns how many nodes were dropped."""
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    graph_outputs = {value.name for value in graph.output}
    aliases: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = aliases.get(node.input[0], node.input[0]) if node.op_type == "Identity" and node.input else ""
        if not node.domain and source in initializers and node.output[0] not in graph_outputs:
            aliases[node.output[0]] = source
        else:
            kept.append(node)
    if not aliases:
        return 0
    for each in all_graphs(graph):
        for node in each.node:
            node.input[:] = [aliases.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    value_info = [value for value in graph.value_info if value.name not in aliases]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return len(aliases)


def converted_weight_bytes(model: onnx.ModelProto) -> int:
    """The initializers' bytes once per node input that names one: onnx2torch copies a weight into the module
    of every node that uses it, so a weight shared by many nodes costs its size many times over."""
    sizes = {tensor.name: declared_bytes(tensor) for tensor in model.graph.initializer}
    return sum(sizes.get(name, 0) for graph in all_graphs(model.graph) for node in graph.node for name in node.input)


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
    if inlined := inline_weight_identities(convertible):
        notes.append(f"{inlined} Identity node(s) of a weight replaced by the weight")
    weights = converted_weight_bytes(convertible)
    check_limit(f"{path}: weights as converted (once per node using each), bytes", weights, "model_bytes", ModelError)

    missing = unsupported_nodes(convertible)
    if missing:
        raise ModelError(f"{path}: unsupported op(s) for conversion: {describe_nodes(missing)}")
    return PreparedOnnx(original, scoring, convertible, input_name, score_name, notes)
