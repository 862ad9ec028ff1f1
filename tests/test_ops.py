"""Cleanse's own op support (converters/ops): each rewrite or converter reproduces onnxruntime exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from converters.onnx2torch_compat import import_onnx2torch
from converters.onnx_prepare import down_convert
from converters.ops.gelu import expand_gelu


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def single_op_model(node: onnx.NodeProto, opset: int, input_shape: list, output_shape: list | None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "single_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_expansion_is_exact_and_goes_down_to_opset_17(approximate):
    gelu = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    model = single_op_model(gelu, 20, [2, 5], [2, 5])
    with pytest.raises(Exception, match="Gelu"):
        onnx.version_converter.convert_version(model, 17)  # why the expansion exists
    x = np.linspace(-4, 4, 10, dtype=np.float32).reshape(2, 5)
    expected = run_ort(model, x)

    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    assert expand_gelu(expanded) == 1
    lowered = down_convert(expanded)
    assert "Gelu" not in {node.op_type for node in lowered.graph.node}
    np.testing.assert_allclose(run_ort(lowered, x), expected, rtol=1e-6, atol=1e-6)
    converted = import_onnx2torch().convert(lowered)
    np.testing.assert_allclose(converted(torch.from_numpy(x)).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_global_average_pool_without_shape_info_keeps_the_batch():
    pool = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    model = single_op_model(pool, 13, None, None)  # no shape information at all, as tf2onnx sometimes writes
    x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    expected = run_ort(model, x)
    assert expected.shape == (3, 4, 1)
    got = import_onnx2torch().convert(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
