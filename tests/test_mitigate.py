"""Mitigation end to end on the real backdoored digits models (target 7, white one-pixel trigger), by the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from cleanse_base.files import file_sha256
from converters.contract import ContractOverrides
from converters.onnx_to_torch import load_onnx_classifier
from scanner import make_config, scan, write_report
from scanner.cli import EXIT_CLEAN, EXIT_INFECTED, main
from scanner.data import load_clean_data
from scanner.mitigate import MitigationConfig, mitigate
from scanner.mitigate.prune import interleaved_order
from scanner.mitigate.reattack import reattack_success, within_budget
from scanner.mitigate.triggers import reversed_trigger
from scanner.model import ScoringModel
from scanner.preprocess import make_scaling

TARGET = 7
SCAN_TARGET_ONLY = make_config({"seed": 1, "labels": [TARGET], "threads": 1})
# upper bound on the real trigger's attack success after each method (it is ~1.0 before)
ATTACK_SUCCESS_AFTER = {"unlearn": 0.15, "prune": 0.15, "filter": 0.15}
# The digits net's last hidden layer has only 64 neurons, too few to prune or filter; the 512 flattened conv
# features (the inputs of the first Gemm) behave like the paper's second-to-last layer.
FEATURES_LAYER = "/core/core.6/Gemm"


def scan_report(model: Path, data: Path, folder: Path) -> Path:
    write_report(scan(model, data, SCAN_TARGET_ONLY), folder)
    return folder


def real_trigger(digits: dict[str, Path]) -> tuple[Path, Path]:
    return digits["digits_trigger_mask.npy"], digits["digits_trigger_pattern.npy"]


def interface(model: onnx.ModelProto) -> dict[str, list]:
    """Names, element types and shapes of the graph's inputs and outputs, and the default-domain opset."""

    def describe(values) -> list:
        return [(v.name, v.type.tensor_type.elem_type, str(v.type.tensor_type.shape)) for v in values]

    opset = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output), "opset": opset}


def onnx_attack_success(path: Path, digits: dict[str, Path], nhwc: bool = False, batch: int | None = None) -> float:
    """The real trigger's attack success on all digits test images, measured in onnxruntime on the file."""
    with np.load(digits["digits_test.npz"]) as archive:
        images, labels = archive["x"].astype(np.float32), archive["y"]
    mask = np.load(digits["digits_trigger_mask.npy"])[None, :, :, None]
    pattern = np.load(digits["digits_trigger_pattern.npy"])[None]
    stamped = ((1 - mask) * images + mask * pattern)[labels != TARGET] / 255.0
    inputs = stamped if nhwc else stamped.transpose(0, 3, 1, 2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    step = batch or len(inputs)
    usable = len(inputs) - len(inputs) % step
    scores = [session.run(None, {name: inputs[i : i + step].copy()})[0] for i in range(0, usable, step)]
    return float(np.mean(np.concatenate(scores).argmax(axis=1) == TARGET))


@pytest.fixture(scope="module")
def infected_report(digits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    return scan_report(digits["digits_infected.onnx"], digits["digits_test.npz"], folder)


@pytest.mark.parametrize("method", ["unlearn", "prune", "filter"])
def test_method_lowers_attack_success_and_keeps_the_interface(digits, infected_report, tmp_path, method):
    model = digits["digits_infected.onnx"]
    digest = file_sha256(model)
    out = tmp_path / "patched.onnx"
    layer = "" if method == "unlearn" else FEATURES_LAYER
    config = MitigationConfig(method=method, labels=(TARGET,), threads=1, layer=layer)
    result = mitigate(model, infected_report, digits["digits_test.npz"], config, out, real_trigger(digits))

    assert result.real_trigger_target == TARGET
    assert result.before.attack_success["real"] > 0.9
    assert result.after.attack_success["real"] <= ATTACK_SUCCESS_AFTER[method]
    assert result.after.attack_success["label 7 (reversed)"] < result.before.attack_success["label 7 (reversed)"]
    assert result.before.clean_accuracy - result.after.clean_accuracy <= 0.1  # 378 repair images: unlearning costs most
    assert result.max_abs_diff < 1e-4
    assert file_sha256(model) == digest, "the input file changed"

    original, patched = interface(onnx.load(str(model))), interface(onnx.load(str(out)))
    if method == "filter":
        assert patched["outputs"][:-2] == original["outputs"]
        assert [name for name, *_ in patched["outputs"][-2:]] == ["backdoor_score", "backdoor_flag"]
        patched["outputs"] = patched["outputs"][:-2]
    assert patched == original
    if method != "filter":  # the file itself, in onnxruntime, is repaired as the table says
        assert onnx_attack_success(out, digits) <= ATTACK_SUCCESS_AFTER[method]


def test_filter_flags_triggered_inputs_in_onnxruntime(digits, infected_report, tmp_path):
    out = tmp_path / "filtered.onnx"
    config = MitigationConfig(method="filter", labels=(TARGET,), threads=1, layer=FEATURES_LAYER)
    result = mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config, out)
    with np.load(digits["digits_test.npz"]) as archive:
        clean = archive["x"].astype(np.float32)
    triggered = np.where(np.load(digits["digits_trigger_mask.npy"])[None, :, :, None] > 0, 255.0, clean)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    flag_rate = {}
    for name, images in (("clean", clean), ("triggered", triggered)):
        scores, flags = session.run(["backdoor_score", "backdoor_flag"], {"input": images.transpose(0, 3, 1, 2) / 255})
        assert scores.shape == flags.shape == (len(images),) and flags.dtype == bool
        flag_rate[name] = flags.mean()
    assert flag_rate["clean"] <= 0.1
    assert flag_rate["triggered"] >= 0.9
    assert result.details["threshold"] == pytest.approx(float(onnx.numpy_helper.to_array(_initializer(out))))


def _initializer(path: Path) -> onnx.TensorProto:
    model = onnx.load(str(path))
    return next(init for init in model.graph.initializer if init.name == "cleanse_filter_threshold")


def test_unlearning_is_seeded(digits, infected_report, tmp_path):
    config = MitigationConfig(labels=(TARGET,), threads=1, seed=3)
    runs = [
        mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config, tmp_path / name)
        for name in ("a.onnx", "b.onnx")
    ]
    assert runs[0].output_sha256 == runs[1].output_sha256
    assert runs[0].after == runs[1].after


@pytest.mark.parametrize(
    ("model", "nhwc", "batch"),
    [
        ("digits_infected_dynamo.onnx", False, None),  # opset 20, converted to 17 for onnx2torch
        ("digits_infected_fixed_batch.onnx", False, 16),  # batch size baked into the graph
        ("digits_infected_nhwc_softmax.onnx", True, None),  # NHWC in, probabilities out, inception scaling
    ],
)
def test_unlearning_writes_back_other_exports(digits, tmp_path, model, nhwc, batch):
    path = digits[model]
    report = scan_report(path, digits["digits_test.npz"], tmp_path / "report")
    out = tmp_path / "patched.onnx"
    config = MitigationConfig(labels=(TARGET,), threads=1)
    result = mitigate(path, report, digits["digits_test.npz"], config, out, real_trigger(digits))
    assert result.after.attack_success["real"] <= ATTACK_SUCCESS_AFTER["unlearn"]
    assert interface(onnx.load(str(out))) == interface(onnx.load(str(path)))
    if model != "digits_infected_nhwc_softmax.onnx":  # that one takes inception-scaled input
        assert onnx_attack_success(out, digits, nhwc, batch) <= ATTACK_SUCCESS_AFTER["unlearn"]


def test_rescanning_the_patched_models_works(digits, infected_report, tmp_path):
    for method in ("unlearn", "filter"):
        out = tmp_path / f"{method}.onnx"
        config = MitigationConfig(method=method, labels=(TARGET,), threads=1, layer=FEATURES_LAYER)
        mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config, out)
        args = ["scan", str(out), "--data", str(digits["digits_test.npz"]), "--labels", "7", "--json", "--quiet"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.stderr
        report = json.loads(result.stdout)
        assert report["contract"]["output_name"] == "output"
        assert report["scaling"]["accuracy"] > 0.9


def test_prune_respects_the_accuracy_limit(digits, infected_report):
    config = MitigationConfig(method="prune", labels=(TARGET,), threads=1, prune_max_accuracy_drop=0.01)
    result = mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config)
    details = result.details
    assert details["accuracy_drop"] <= 0.01
    assert 0 <= details["pruned"] < details["neurons"]
    assert details["fraction_pruned"] == details["pruned"] / details["neurons"]
    assert result.output_path is None


def test_default_layer_is_the_candidate_where_triggered_inputs_stand_out(digits, infected_report):
    config = MitigationConfig(method="filter", labels=(TARGET,), threads=1)
    details = mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config).details
    separation = details["layer_separation"]
    # the second-to-last layer (feeding the last Gemm) and the one before it
    assert list(separation) == ["/core/core.8/Gemm", FEATURES_LAYER]
    assert details["layer_chosen_by"] == "separation"
    best = max(separation, key=separation.get)
    assert details["layer"] == f"core/{best.split('/')[2].replace('.', '/')}/Gemm"
    assert all(0 <= value <= 1 for value in separation.values())

    named = MitigationConfig(method="filter", labels=(TARGET,), threads=1, layer="/core/core.8/Gemm")
    details = mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], named).details
    assert details["layer_chosen_by"] == "user" and details["layer"] == "core/core/8/Gemm"


def test_reattack_budget_caps_the_mask_norm():
    mask = torch.full((4, 4), 0.5)
    assert float(within_budget(mask, 4.0).sum()) == pytest.approx(4.0)
    assert torch.equal(within_budget(mask, 10.0), mask)


def test_reattack_revives_the_backdoor_only_where_there_is_one(digits, infected_report):
    """Re-attacking label 7's reversed trigger: on the infected model it works; on the clean model, with the
    same small mask budget, it does not."""
    trigger = reversed_trigger(infected_report, TARGET)
    data = load_clean_data(digits["digits_test.npz"], 1, 8, 8, 10)
    images, labels = data.images, data.labels
    success = {}
    for name in ("digits_infected.onnx", "digits_clean.onnx"):
        converted = load_onnx_classifier(digits[name])
        model = ScoringModel(converted.module, converted.contract, make_scaling("unit", 1))
        half = len(images) // 2
        success[name] = reattack_success(
            model, trigger, images[:half], labels[:half], images[half:], labels[half:], 1.5, torch.device("cpu"), 0
        )
    assert success["digits_infected.onnx"] > 0.9
    assert success["digits_clean.onnx"] < 0.5


def test_contract_overrides_survive_the_report(digits, tmp_path):
    """A report made with user overrides (here the fixed batch size) drives the mitigation the same way."""
    path = digits["digits_infected_fixed_batch.onnx"]
    config = make_config({"seed": 1, "labels": [TARGET], "contract": {"batch_size": 16}})
    assert config.contract == ContractOverrides(batch_size=16)
    write_report(scan(path, digits["digits_test.npz"], config), tmp_path)
    result = mitigate(path, tmp_path, digits["digits_test.npz"], MitigationConfig(method="prune", labels=(TARGET,)))
    assert result.before.clean_accuracy > 0.9


def test_pruning_order_lets_each_trigger_take_turns():
    first_trigger, second_trigger = np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0, 3.0])
    assert interleaved_order([first_trigger, second_trigger]).tolist() == [0, 3, 1, 2]
    assert interleaved_order([second_trigger]).tolist() == [3, 2, 1]  # neuron 0 is not raised


def test_pruning_order_leaves_out_neurons_no_trigger_raises():
    assert interleaved_order([np.array([2.0, 0.0, -1.0, 1.0])]).tolist() == [0, 3]
    assert interleaved_order([np.zeros(3)]).tolist() == []
