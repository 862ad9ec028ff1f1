"""ONNX intake: checks, rewrites for onnx2torch, contract detection, and the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cleanse_base.errors import ModelError
from cleanse_base.limits import ENV_VAR
from converters.contract import ContractOverrides
from converters.onnx_prepare import converted_weight_bytes
from converters.onnx_to_torch import load_onnx_classifier, ort_session, softmax_bypassed, verify_against_ort
from fixtures.export import export_legacy

RNG = np.random.default_rng(0)


def save_graph(path, nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def linear_nodes(features: int, classes: int, head: str = "Identity"):
    weight = numpy_helper.from_array(RNG.normal(size=(features, classes)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape")
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node(head, ["logits"], ["scores"]),
    ]
    return nodes, [weight, shape]


def test_unsupported_op_is_named_with_its_node(tmp_path):
    nodes, weights = linear_nodes(64, 10)
    nodes[-1] = helper.make_node("Shrink", ["logits"], ["scores"], name="odd_head")
    path = save_graph(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])],
        weights,
    )
    with pytest.raises(ModelError, match=r"unsupported op\(s\).*Shrink \(node odd_head\)"):
        load_onnx_classifier(path)


def test_zipmap_post_processing_is_cut_at_the_probabilities(tmp_path):
    nodes, weights = linear_nodes(64, 3, head="Softmax")
    nodes += [
        helper.make_node("ZipMap", ["scores"], ["probability_map"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
    ]
    path = save_graph(
        tmp_path / "sk.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_value_info(
                "probability_map",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
        weights,
        extra_opsets=[helper.make_opsetid("ai.onnx.ml", 1)],
    )
    converted = load_onnx_classifier(path)
    contract = converted.contract
    assert (contract.layout, contract.channels, contract.height, contract.width) == ("flat", 1, 8, 8)
    assert (contract.output_name, contract.output_kind, contract.num_classes) == ("scores", "probabilities", 3)
    assert any("ZipMap" in note for note in converted.notes)


def test_scikit_learn_classifier_from_skl2onnx_converts(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    features = (digits.data * 255 / 16).astype(np.float32) / 255
    classifier = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(features, digits.target)
    onnx_model = skl2onnx.to_onnx(classifier, features[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_model, path)
    converted = load_onnx_classifier(path)
    assert converted.contract.layout == "flat" and converted.contract.num_classes == 10
    assert converted.contract.output_kind == "probabilities"
    with torch.no_grad():
        predicted = converted.module(torch.from_numpy(features[:200])).argmax(1).numpy()
    assert np.mean(predicted == classifier.predict(features[:200])) > 0.99


def test_opset_20_reshape_allowzero_is_rewritten(tmp_path):
    nodes, weights = linear_nodes(64, 10)
    nodes[0] = helper.make_node("Reshape", ["image", "flat_shape"], ["flat"], allowzero=1)
    path = save_graph(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])],
        weights,
        opset=20,
    )
    converted = load_onnx_classifier(path)
    assert converted.source_opset == 20 and converted.converted_opset == 17
    assert any("allowzero" in note for note in converted.notes)
    assert converted.max_abs_diff < 1e-3


def test_a_weight_the_exporter_wrote_as_an_identity_converts(tmp_path):
    """torch's TorchScript exporter stores two equal folded BatchNorm biases once and the second as an Identity
    of the first; onnx2torch looks weights up among the initializers and could not convert that."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),  # untrained: folds into a zero bias, as does the next one
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 64, 10),
    )
    path = export_legacy(module, tmp_path / "m.onnx", (1, 1, 8, 8))
    graph = onnx.load(path).graph
    initializers = {tensor.name for tensor in graph.initializer}
    assert any(node.op_type == "Identity" and node.input[0] in initializers for node in graph.node)
    converted = load_onnx_classifier(path)
    assert any("Identity" in note for note in converted.notes)
    assert converted.max_abs_diff < 1e-4


def test_a_weight_shared_by_many_nodes_counts_once_per_node(tmp_path, monkeypatch):
    """onnx2torch copies a weight into every node that uses it: 12 uses of a 36 KiB weight are 432 KiB."""
    weight = numpy_helper.from_array(np.zeros((32, 32, 3, 3), np.float32), "w")
    first = numpy_helper.from_array(np.zeros((32, 1, 1, 1), np.float32), "w_in")
    nodes = [helper.make_node("Conv", ["image", "w_in"], ["h0"])]
    nodes += [helper.make_node("Conv", [f"h{i}", "w"], [f"h{i + 1}"], pads=[1, 1, 1, 1]) for i in range(12)]
    nodes.append(helper.make_node("ReduceMean", ["h12"], ["scores"], axes=[2, 3], keepdims=0))
    path = save_graph(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 32])],
        [first, weight],
    )
    assert converted_weight_bytes(onnx.load(path)) == 12 * 36864 + 128
    monkeypatch.setenv(ENV_VAR, "model_bytes=256K")  # the file is 37 KiB
    with pytest.raises(ModelError, match=r"weights as converted .*: 442496 is over the limit model_bytes"):
        load_onnx_classifier(path)


def test_several_inputs_need_a_name(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["scores"])]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 10]) for n in ("a", "b")]
    path = save_graph(
        tmp_path / "m.onnx", nodes, value, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])]
    )
    with pytest.raises(ModelError, match="pass --input"):
        load_onnx_classifier(path)


def test_overrides_win_over_the_graph(tmp_path):
    nodes, weights = linear_nodes(192, 10)
    path = save_graph(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 8, 8, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])],
        weights,
    )
    assert load_onnx_classifier(path).contract.layout == "NHWC"
    forced = load_onnx_classifier(path, ContractOverrides(output_kind="probabilities", fixed_batch=4))
    assert forced.contract.output_kind == "probabilities" and forced.contract.batch_size == 4


def test_disagreement_with_onnxruntime_is_refused(tmp_path):
    nodes, weights = linear_nodes(64, 10)
    path = save_graph(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])],
        weights,
    )
    converted = load_onnx_classifier(path)
    session = ort_session(converted.prepared.scoring)

    def wrong(x):
        return converted.module(x) * 1.01 + 0.5

    with pytest.raises(ModelError, match="disagrees with onnxruntime"):
        verify_against_ort(wrong, session, converted.contract)


@pytest.mark.parametrize("model", ["digits_infected_nhwc_softmax.onnx", "digits_infected.onnx"])
def test_final_softmax_is_bypassed_to_its_logits(digits, model):
    converted = load_onnx_classifier(digits[model])
    bypassed = softmax_bypassed(converted.module)
    if converted.contract.output_kind == "logits":
        assert bypassed is None
        return
    inputs = torch.rand(16, 8, 8, 1)
    with torch.no_grad():
        probabilities, logits = converted.module(inputs), bypassed(inputs)
    # the same classifier, with log-probabilities that stay finite where the probabilities underflow
    torch.testing.assert_close(torch.softmax(logits, dim=1), probabilities, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.isfinite(torch.log_softmax(bypassed(inputs * 1e4), dim=1)).all()
    assert bypassed.state_dict().keys() <= converted.module.state_dict().keys()
