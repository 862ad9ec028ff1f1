"""ONNX file to a frozen, differentiable torch module, checked against onnxruntime."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import fx

from cleanse_base.errors import ModelError
from cleanse_base.text import one_line
from converters.contract import ContractOverrides, ModelContract, detect_contract
from converters.onnx2torch_compat import import_onnx2torch
from converters.onnx_prepare import PreparedOnnx, opset_of, prepare_onnx

# Converted outputs must match onnxruntime to this fraction of the output's magnitude (float32 noise
# across a deep graph stays far below it; a mis-converted op lands far above it).
RELATIVE_TOLERANCE = 1e-3
VERIFY_SEED = 1234


@dataclass
class ConvertedModel:
    module: torch.nn.Module  # eval mode, weights frozen; input and output in the model's own layout
    contract: ModelContract
    prepared: PreparedOnnx
    source_path: Path
    max_abs_diff: float  # torch vs onnxruntime on the verification batch
    notes: list[str] = field(default_factory=list)

    @property
    def source_opset(self) -> int:
        return opset_of(self.prepared.original)

    @property
    def converted_opset(self) -> int:
        return opset_of(self.prepared.convertible)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model ({one_line(exc, with_type=False)})") from None


def run_ort(session: ort.InferenceSession, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
    input_type = session.get_inputs()[0].type
    dtype = np.float64 if "double" in input_type else np.float32
    try:
        (scores,) = session.run([output_name], {input_name: batch.astype(dtype)})
    except Exception as exc:
        raise ModelError(f"onnxruntime fails on a batch of shape {list(batch.shape)} ({one_line(exc)})") from None
    return np.asarray(scores, dtype=np.float64)


def convert_module(prepared: PreparedOnnx) -> torch.nn.Module:
    onnx2torch = import_onnx2torch()
    try:
        module = onnx2torch.convert(prepared.convertible)
    except Exception as exc:
        raise ModelError(f"onnx2torch cannot convert the model ({one_line(exc)})") from None
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def on_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """The module where it is on the CPU, else a CPU copy of it (a mitigated module on a GPU): the check against
    onnxruntime's CPU arithmetic then sees float32 round-off only, not a GPU's TF32 convolutions."""
    if not isinstance(module, torch.nn.Module):  # a plain function of tensors (tests wrap modules so)
        return module
    if all(tensor.device.type == "cpu" for tensor in [*module.parameters(), *module.buffers()]):
        return module
    return copy.deepcopy(module).cpu()


def verify_against_ort(module: torch.nn.Module, session: ort.InferenceSession, contract: ModelContract) -> float:
    """Max |torch - onnxruntime| on a seeded random batch; ModelError when beyond float tolerance."""
    generator = np.random.default_rng(VERIFY_SEED)
    batch = generator.random(contract.model_input_shape(contract.batch_size or 4), dtype=np.float32)
    expected = run_ort(session, contract.input_name, contract.output_name, batch)
    with torch.no_grad():
        try:
            got = on_cpu(module)(torch.from_numpy(batch)).double().numpy()
        except Exception as exc:
            shape = list(batch.shape)
            raise ModelError(f"the converted module fails on a batch of shape {shape} ({one_line(exc)})") from None
    return checked_difference(got, expected, "the converted module", "onnxruntime")


def checked_difference(got: np.ndarray, expected: np.ndarray, converted: str, reference: str) -> float:
    """Max |got - expected|; ModelError when shapes differ or the difference is beyond float tolerance."""
    if got.shape != expected.shape:
        raise ModelError(f"{converted} outputs shape {list(got.shape)}, {reference} {list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not np.isfinite(diff) or diff > RELATIVE_TOLERANCE * scale:
        raise ModelError(
            f"{converted} disagrees with {reference} (max difference {diff:.3g} on outputs of "
            f"magnitude {scale:.3g}); refusing to scan a model we cannot reproduce"
        )
    return diff


def load_onnx_classifier(
    path: str | Path,
    overrides: ContractOverrides = ContractOverrides(),
    input_name: str | None = None,
    output_name: str | None = None,
) -> ConvertedModel:
    """Load an ONNX image classifier as a frozen torch module with its contract, or raise ModelError."""
    prepared = prepare_onnx(path, input_name, output_name)
    session = ort_session(prepared.scoring)
    generator = np.random.default_rng(VERIFY_SEED)

    def run_sample(shape: tuple[int, ...]) -> np.ndarray:
        return run_ort(session, prepared.input_name, prepared.output_name, generator.random(shape, dtype=np.float32))

    contract = detect_contract(prepared.scoring, prepared.input_name, prepared.output_name, run_sample, overrides)
    module = convert_module(prepared)
    diff = verify_against_ort(module, session, contract)
    return ConvertedModel(module, contract, prepared, Path(path), diff, list(prepared.notes))


def softmax_bypassed(module: torch.nn.Module) -> fx.GraphModule | None:
    """A graph sharing `module`'s weights that returns the input of its final class Softmax, or None when the
    output is not such a Softmax.

    Scanning a probability output through log(p) loses the gradient wherever a confident model's softmax
    underflows to 0 in float32; the logits before it give the same classifier with exact log-probabilities.
    """
    if not isinstance(module, fx.GraphModule):
        return None
    output = next(node for node in module.graph.nodes if node.op == "output")
    source = output.args[0]
    while isinstance(source, (tuple, list)) and len(source) == 1:
        source = source[0]
    while isinstance(source, fx.Node) and _is_identity(module, source):
        source = source.args[0]
    if not (isinstance(source, fx.Node) and _is_class_softmax(module, source)):
        return None
    graph = copy.deepcopy(module.graph)
    by_name = {node.name: node for node in graph.nodes}
    new_output = next(node for node in graph.nodes if node.op == "output")
    new_output.args = (by_name[source.args[0].name],)
    bypassed = fx.GraphModule(module, graph)
    bypassed.graph.eliminate_dead_code()
    bypassed.recompile()
    return bypassed


def _called_module(module: fx.GraphModule, node: fx.Node) -> torch.nn.Module | None:
    return module.get_submodule(node.target) if node.op == "call_module" else None


def _is_identity(module: fx.GraphModule, node: fx.Node) -> bool:
    called = _called_module(module, node)
    return called is not None and type(called).__name__ in ("Identity", "OnnxIdentity") and len(node.args) == 1


def _is_class_softmax(module: fx.GraphModule, node: fx.Node) -> bool:
    called = _called_module(module, node)
    if isinstance(called, torch.nn.Softmax):
        return called.dim in (1, -1)
    # onnx2torch's Softmax-1/11: softmax over the dimensions from `axis` on, the classes for an (N, C) output
    return type(called).__name__ == "OnnxSoftmaxV1V11" and called.axis in (1, -1) and not called.is_log
