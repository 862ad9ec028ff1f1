"""Writing patched tensors back into the original initializers: transposed, reshaped, renamed and buffer-held
weights, on a torch-made graph with tf2onnx's constructs and on a real Keras (tf2onnx) model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from cleanse_base.errors import ModelError
from converters.onnx2torch_compat import import_onnx2torch
from converters.onnx_prepare import PreparedOnnx
from converters.onnx_to_torch import load_onnx_classifier
from fixtures.tf2onnx_style import build_tf2onnx_style
from scanner import make_config, scan, write_report
from scanner.mitigate import MitigationConfig, mitigate
from scanner.mitigate.writeback import build_weight_map, patched_copy, tensor_at
from tests.test_intake import assert_flags_the_keras_target

TARGET = 7


@pytest.fixture(scope="module")
def tf2onnx_style(digits, tmp_path_factory) -> Path:
    return build_tf2onnx_style(digits["digits_infected.onnx"], tmp_path_factory.mktemp("tf2onnx") / "model.onnx")


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def test_transposed_gemm_and_matmul_buffers_are_linked(tf2onnx_style):
    converted = load_onnx_classifier(tf2onnx_style)
    weight_map = build_weight_map(converted.module, converted.prepared)
    assert not weight_map.unmapped
    gemm = weight_map.links["core/core/6/Gemm.weight"]  # Gemm transB=0: a Linear holding W.T
    assert gemm.initializer == "core.6.weight"
    np.testing.assert_array_equal(gemm.positions, np.arange(512 * 64).reshape(512, 64).T)
    buffers = {link.initializer: path for path, link in weight_map.links.items() if path.startswith("initializers.")}
    assert set(buffers) == {"core.8.weight", "core.8.bias"}  # MatMul + Add: buffers, not parameters
    assert set(buffers.values()) <= set(weight_map.trainable)


@pytest.mark.slow
def test_unlearning_a_tf2onnx_style_model_trains_its_buffers(digits, tf2onnx_style, tmp_path):
    report = tmp_path / "report"
    write_report(scan(tf2onnx_style, digits["digits_test.npz"], make_config({"seed": 1, "labels": [TARGET]})), report)
    out = tmp_path / "patched.onnx"
    trigger = (digits["digits_trigger_mask.npy"], digits["digits_trigger_pattern.npy"])
    config = MitigationConfig(labels=(TARGET,), threads=1)
    result, _ = mitigate(tf2onnx_style, report, digits["digits_test.npz"], config, out, trigger)
    assert result.after.attack_success["real"] <= 0.15
    patched, original = onnx.load(str(out)), onnx.load(str(tf2onnx_style))
    assert patched.graph.input == original.graph.input and patched.graph.output == original.graph.output
    assert [node.op_type for node in patched.graph.node] == [node.op_type for node in original.graph.node]
    before, after = initializers(tf2onnx_style), initializers(out)
    assert not np.array_equal(before["core.8.weight"], after["core.8.weight"])  # the MatMul weight trained
    assert not np.array_equal(before["core.6.weight"], after["core.6.weight"])


def renamed_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with initializers renamed, one reshaped and one transposed (what opset conversion
    or constant folding may do): the Add bias becomes (1, 10), the transB=0 Gemm weight goes back to transB=1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inits = {init.name: init for init in graph.initializer}
    bias, weight = inits["core.8.bias"], inits["core.6.weight"]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).reshape(1, 10), "folded_bias"))
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), "folded_weight"))
    for node in graph.node:
        node.input[:] = [{"core.8.bias": "folded_bias", "core.6.weight": "folded_weight"}.get(n, n) for n in node.input]
        if node.op_type == "Gemm":
            node.attribute.append(onnx.helper.make_attribute("transB", 1))
            del node.attribute[[a.name for a in node.attribute].index("transB")]
    return copy


def test_renamed_reshaped_and_transposed_initializers_are_written_back(tf2onnx_style):
    original = onnx.load(str(tf2onnx_style))
    convertible = renamed_copy(original)
    onnx.checker.check_model(convertible)
    module = import_onnx2torch().convert(convertible).eval()
    prepared = PreparedOnnx(original, original, convertible, "input", "output")
    weight_map = build_weight_map(module, prepared)
    assert {weight_map.links[p].initializer for p in weight_map.trainable} >= {"core.8.bias", "core.6.weight"}
    links = weight_map.require(weight_map.trainable)
    with torch.no_grad():
        for link in links:
            tensor = tensor_at(module, link.tensor)
            tensor.add_(torch.randn(tensor.shape, generator=torch.Generator().manual_seed(0)) * 0.01)
    patched = patched_copy(original, module, links)
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    (expected,) = ort.InferenceSession(patched.SerializeToString()).run(None, {"input": x})
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_tensor_found_in_two_initializers_is_refused(tf2onnx_style):
    original = onnx.load(str(tf2onnx_style))
    bias = next(init for init in original.graph.initializer if init.name == "core.8.bias")
    original.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(bias), "unused_twin"))
    convertible = renamed_copy(original)
    module = import_onnx2torch().convert(convertible).eval()
    weight_map = build_weight_map(module, PreparedOnnx(original, original, convertible, "input", "output"))
    with pytest.raises(ModelError, match="matches 2 initializers .*refusing to guess"):
        weight_map.require(weight_map.trainable)


@pytest.mark.slow
def test_keras_model_goes_through_scan_and_unlearn(tmp_path):
    """Issue 3 item 3: a Keras model exported by tf2onnx (NHWC, Dense weights as buffers)."""
    pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    pytest.importorskip("tf2onnx", reason="the keras extra is not installed")
    from fixtures.digits import TRIGGER_MARGIN, TRIGGER_SIZE
    from fixtures.keras_digits import build_keras_digits
    from fixtures.triggers import square_trigger

    files = build_keras_digits(tmp_path / "keras")
    model, data = files["keras_digits_infected.onnx"], files["keras_digits_test.npz"]
    report = scan(model, data, make_config({"seed": 1, "pairs": {"max_pairs": 0}, "additive": {"steps": 0}}))
    assert_flags_the_keras_target(report)
    write_report(report, tmp_path / "report")
    out = tmp_path / "patched.onnx"
    trigger = square_trigger(8, 8, 1, TRIGGER_SIZE, TRIGGER_MARGIN).save(tmp_path, "trigger")
    result, _ = mitigate(model, tmp_path / "report", data, MitigationConfig(threads=1), out, trigger, TARGET)
    assert result.before.attack_success["real"] > 0.9
    assert result.after.attack_success["real"] <= 0.15
    assert result.details["weight_tensors"] == 8  # 2 conv + 2 dense layers, weights and biases
    patched, original = onnx.load(str(out)), onnx.load(str(model))
    assert patched.graph.input == original.graph.input  # NHWC
    assert patched.graph.output == original.graph.output
    assert patched.opset_import == original.opset_import
