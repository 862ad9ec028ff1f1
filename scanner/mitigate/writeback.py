"""Patched torch tensors back into the original ONNX file: new initializer values, the graph untouched.

Every weight of the converted module is linked to the original initializer it came from as a gather,
    tensor = initializer.flat[positions] * scale    (positions has the tensor's shape)
which covers what onnx2torch does to weights: a Gemm with transB=0 becomes a Linear holding the transposed
matrix (scaled by alpha), and an opset down-conversion or constant folding may rename, reshape or transpose
an initializer. A tensor whose origin is not certain stays unlinked, and writing it fails with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from cleanse_base.errors import ModelError
from cleanse_base.files import atomic_output, file_sha256
from cleanse_base.text import one_line
from converters.contract import ModelContract
from converters.onnx2torch_compat import import_onnx2torch
from converters.onnx_prepare import PreparedOnnx, cut_at
from converters.onnx_to_torch import ort_session, verify_against_ort

INITIALIZER_CONTAINER = "initializers"  # where onnx2torch keeps initializers that feed generic ops, as buffers
# ops whose initializer inputs are weights (trained by unlearning) rather than shapes, axes or scalars
WEIGHT_OPS = {
    "Add",
    "BatchNormalization",
    "Conv",
    "ConvTranspose",
    "Gemm",
    "InstanceNormalization",
    "LayerNormalization",
    "MatMul",
    "Mul",
    "PRelu",
    "Sub",
}
# which input of the ONNX node each parameter of onnx2torch's native torch modules holds
ROLE_INPUTS = {
    "Conv": {"weight": 1, "bias": 2},
    "ConvTranspose": {"weight": 1, "bias": 2},
    "Gemm": {"weight": 1, "bias": 2},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
}


@dataclass(frozen=True)
class TensorLink:
    tensor: str  # attribute path in the converted module
    initializer: str  # name in the original graph
    positions: np.ndarray  # int64, the tensor's shape: flat index into the initializer of each element
    scale: float = 1.0


@dataclass(frozen=True)
class Source:
    """Where a tensor came from in the converted (onnx2torch's input) graph."""

    initializer: str
    positions: np.ndarray
    scale: float = 1.0


@dataclass
class WeightMap:
    links: dict[str, TensorLink] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)  # tensor path -> why it has no link
    trainable: list[str] = field(default_factory=list)  # float weights: parameters and weight buffers

    def require(self, tensors: Iterable[str]) -> list[TensorLink]:
        """The links of `tensors`, or a ModelError naming the first one without a link."""
        for name in tensors:
            if name not in self.links:
                raise ModelError(
                    f"cannot map tensor {name!r} of the converted module back to an initializer of the original "
                    f"graph ({self.unmapped.get(name, 'not a weight of the converted module')}); refusing to guess"
                )
        return [self.links[name] for name in tensors]


def tensor_at(module: nn.Module, path: str) -> torch.Tensor:
    owner, _, leaf = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def identity_positions(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)


def candidate_layouts(source_shape: tuple[int, ...], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Ways a tensor of `shape` may hold a source tensor's values: reshaped, or a matrix transposed."""
    if int(np.prod(source_shape)) != int(np.prod(shape)):
        return []
    layouts = [identity_positions(shape)]
    if len(source_shape) == 2:
        layouts.append(np.ascontiguousarray(identity_positions(source_shape).T).reshape(shape))
    return layouts


def find_layout(source: np.ndarray, value: np.ndarray) -> np.ndarray | None:
    for positions in candidate_layouts(source.shape, value.shape):
        if np.array_equal(source.ravel()[positions], value):
            return positions
    return None


def _float_array(values: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    value = values.get(name)
    return value if value is not None and value.dtype.kind == "f" else None


def onnx2torch_nodes(model: onnx.ModelProto) -> dict:
    """The converted graph's nodes by the module name onnx2torch gave each."""
    import_onnx2torch()
    from onnx2torch.onnx_graph import OnnxGraph

    return dict(OnnxGraph(model.graph).nodes)


def _parameter_source(leaf: str, tensor: np.ndarray, node, values: dict[str, np.ndarray]) -> Source | str:
    roles = ROLE_INPUTS.get(node.operation_type)
    if roles is not None and leaf in roles:
        index = roles[leaf]
        if index >= len(node.input_values) or _float_array(values, node.input_values[index]) is None:
            return f"input {index} of {node.operation_type} node {node.name!r} is not an initializer"
        name = node.input_values[index]
        source = values[name]
        positions, scale = identity_positions(source.shape), 1.0
        if node.operation_type == "Gemm":
            attributes = node.attributes
            if leaf == "weight":
                positions = positions if attributes.get("transB", 0) else np.ascontiguousarray(positions.T)
                scale = float(attributes.get("alpha", 1.0))
            else:
                scale = float(attributes.get("beta", 1.0))
        if positions.shape != tensor.shape or not np.allclose(source.ravel()[positions] * scale, tensor, rtol=1e-6):
            return f"its values differ from input {index} ({name!r}) of node {node.name!r}"
        return Source(name, positions, scale)
    return _value_source(tensor, node, values)


def _value_source(tensor: np.ndarray, node, values: dict[str, np.ndarray]) -> Source | str:
    """The one initializer input of `node` that holds exactly `tensor`'s values."""
    found = {}
    for name in node.input_values:
        source = _float_array(values, name)
        positions = None if source is None else find_layout(source, tensor)
        if positions is not None:
            found[name] = positions
    if len(found) != 1:
        why = "no" if not found else f"{len(found)} ({', '.join(found)})"
        return f"{why} initializer input of node {node.name!r} holds its values"
    ((name, positions),) = found.items()
    return Source(name, positions)


def locate_in_original(source: Source, converted: np.ndarray, original: dict[str, np.ndarray]) -> TensorLink | str:
    """Follow a converted-graph initializer to the original graph's: same name and values, else the one
    original initializer holding the same values (reshaped or transposed)."""
    same = original.get(source.initializer)
    if same is not None and same.shape == converted.shape and np.array_equal(same, converted):
        return TensorLink("", source.initializer, source.positions, source.scale)
    matches = {}
    for name, candidate in original.items():
        if candidate.dtype.kind == "f" and (positions := find_layout(candidate, converted)) is not None:
            matches[name] = positions
    if len(matches) != 1:
        where = "no initializer" if not matches else f"{len(matches)} initializers ({', '.join(list(matches)[:3])})"
        return f"initializer {source.initializer!r} of the converted graph matches {where} of the original graph"
    ((name, positions),) = matches.items()
    return TensorLink("", name, positions.ravel()[source.positions], source.scale)


def build_weight_map(module: fx.GraphModule, prepared: PreparedOnnx) -> WeightMap:
    """Link every parameter and every float initializer buffer of the converted module to the original graph.
    Call it before changing any weight: links are found by comparing values."""
    nodes = onnx2torch_nodes(prepared.convertible)
    converted = {init.name: numpy_helper.to_array(init) for init in prepared.convertible.graph.initializer}
    original = {init.name: numpy_helper.to_array(init) for init in prepared.original.graph.initializer}
    sources: dict[str, Source | str] = {}
    weight_map = WeightMap()
    for fx_node in module.graph.nodes:
        if fx_node.op == "call_module" and fx_node.target in nodes:
            node = nodes[fx_node.target]
            for local, parameter in module.get_submodule(fx_node.target).named_parameters():
                path = f"{fx_node.target}.{local}"
                value = parameter.detach().cpu().numpy()
                sources[path] = _parameter_source(local.rpartition(".")[2], value, node, converted)
                weight_map.trainable.append(path)
        elif fx_node.op == "get_attr" and str(fx_node.target).startswith(f"{INITIALIZER_CONTAINER}."):
            path = str(fx_node.target)
            value = tensor_at(module, path).detach().cpu().numpy()
            if value.dtype.kind != "f":
                continue
            users = [nodes[user.target] for user in fx_node.users if user.op == "call_module" and user.target in nodes]
            if not users:
                sources[path] = "it feeds no converted node"
                continue
            sources[path] = _value_source(value, users[0], converted)
            if value.size > 1 and all(user.operation_type in WEIGHT_OPS for user in users):
                weight_map.trainable.append(path)
    for path, source in sources.items():
        if isinstance(source, str):
            weight_map.unmapped[path] = source
            continue
        link = locate_in_original(source, converted[source.initializer], original)
        if isinstance(link, str):
            weight_map.unmapped[path] = link
        else:
            weight_map.links[path] = TensorLink(path, link.initializer, link.positions, link.scale)
    return weight_map


def tie_shared_buffers(module: nn.Module, links: list[TensorLink]) -> None:
    """onnx2torch copies an initializer into one buffer per use; make such copies one tensor again, so that
    training keeps them equal."""
    first: dict[tuple[str, bytes], str] = {}
    for link in links:
        if not link.tensor.startswith(f"{INITIALIZER_CONTAINER}."):
            continue
        key = (link.initializer, link.positions.tobytes())
        if key in first:
            owner, _, leaf = link.tensor.rpartition(".")
            setattr(module.get_submodule(owner), leaf, tensor_at(module, first[key]))
        else:
            first[key] = link.tensor


def patched_copy(original: onnx.ModelProto, module: nn.Module, links: list[TensorLink]) -> onnx.ModelProto:
    """A copy of `original` whose linked initializers hold the module's current values."""
    patched = onnx.ModelProto()
    patched.CopyFrom(original)
    protos = {init.name: init for init in patched.graph.initializer}
    grouped: dict[str, list[TensorLink]] = defaultdict(list)
    for link in links:
        grouped[link.initializer].append(link)
    for name, group in grouped.items():
        old = numpy_helper.to_array(protos[name])
        values = old.astype(np.float64).ravel()
        written = np.zeros(values.size, dtype=bool)
        for link in group:
            new = tensor_at(module, link.tensor).detach().cpu().double().numpy().ravel() / link.scale
            where = link.positions.ravel()
            if np.any(written[where] & ~np.isclose(values[where], new, rtol=1e-6, atol=0)):
                others = ", ".join(other.tensor for other in group if other is not link)
                raise ModelError(
                    f"tensors {link.tensor!r} and {others} share initializer {name!r} but now differ; cannot write both"
                )
            values[where] = new
            written[where] = True
        protos[name].CopyFrom(numpy_helper.from_array(values.reshape(old.shape).astype(old.dtype), name))
    return patched


def check_patched(patched: onnx.ModelProto, module: nn.Module, contract: ModelContract) -> float:
    """onnx.checker, then the patched file against the patched module in onnxruntime; max |difference|."""
    try:
        onnx.checker.check_model(patched)
    except Exception as exc:
        raise ModelError(f"the patched model fails onnx.checker ({one_line(exc, with_type=False)})") from None
    scoring = cut_at(patched, contract.input_name, contract.output_name)
    try:
        return verify_against_ort(module, ort_session(scoring), contract)
    except ModelError as exc:
        raise ModelError(f"the patched file does not reproduce the patched module: {exc}; nothing written") from None


def write_patched(
    patched: onnx.ModelProto,
    module: nn.Module,
    contract: ModelContract,
    out_path: Path,
    extra_check: Callable[[onnx.ModelProto], None] | None = None,
) -> tuple[float, str]:
    """Write the patched model to a temporary file beside `out_path`, check what was written (and `extra_check`,
    for added outputs), then rename it over `out_path`: no half-written or unchecked model is ever left there.
    Returns max |onnxruntime - torch| and the file's sha256."""
    try:
        payload = patched.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise ModelError(f"the patched model cannot be written as one file ({exc})") from None
    with atomic_output(out_path, ".onnx") as temporary:
        temporary.write_bytes(payload)
        written = onnx.load_model_from_string(temporary.read_bytes())  # what is on disk, nothing beside it
        diff = check_patched(written, module, contract)
        if extra_check is not None:
            extra_check(written)
        digest = file_sha256(temporary)
    return diff, digest
