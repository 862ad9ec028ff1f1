"""Mitigation end to end on the real backdoored digits models (target 7, white one-pixel trigger), by the API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from cleanse_base.errors import ConfigError, DataError
from cleanse_base.exit_codes import EXIT_INFECTED
from cleanse_base.files import file_sha256
from converters.contract import ContractOverrides
from converters.onnx_to_torch import load_onnx_classifier
from scanner import make_config, scan, schemas, write_report
from scanner.cli import main
from scanner.data import load_clean_data
from scanner.decision.pairs import Carried, PairJudgement
from scanner.mitigate import METHODS, MitigationConfig, MitigationMethod, mitigate
from scanner.mitigate.methods import method_named
from scanner.mitigate.prune import interleaved_order
from scanner.mitigate.reattack import reattack_success, within_budget
from scanner.mitigate.run_mitigation import flagging_pairs
from scanner.mitigate.triggers import (
    AdditiveTrigger,
    load_trigger_files,
    require_labels,
    reversed_additive_trigger,
    reversed_trigger,
)
from scanner.model import ScoringModel
from scanner.preprocess import make_scaling
from scanner.report import ScanReport

TARGET = 7
# the mitigation names its label, so the scan it starts from needs only the target's reversed trigger
SCAN_TARGET_ONLY = make_config({"seed": 1, "labels": [TARGET], "threads": 1})
# a re-scan must reverse enough labels for MAD to judge the target against the others (one label: MAD 0)
RESCAN_LABELS = "0,1,2,7"
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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["unlearn", "prune", "filter"])
def test_method_lowers_attack_success_and_keeps_the_interface(
    digits, infected_report, tmp_path, method, schema_problems
):
    model = digits["digits_infected.onnx"]
    digest = file_sha256(model)
    out = tmp_path / "patched.onnx"
    layer = "" if method == "unlearn" else FEATURES_LAYER
    config = MitigationConfig(method=method, labels=(TARGET,), threads=1, layer=layer)
    result, json_path = mitigate(model, infected_report, digits["digits_test.npz"], config, out, real_trigger(digits))

    assert json_path == tmp_path / "mitigation.json"
    assert json.loads(json_path.read_text())["after"]["attack_success"] == result.after.attack_success
    assert schema_problems(schemas.MITIGATION, json.loads(json_path.read_text())) == []
    assert result.output_sha256 == file_sha256(out)
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


@pytest.mark.slow
def test_filter_flags_triggered_inputs_in_onnxruntime(digits, infected_report, tmp_path):
    out = tmp_path / "filtered.onnx"
    config = MitigationConfig(method="filter", labels=(TARGET,), threads=1, layer=FEATURES_LAYER)
    result, _ = mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config, out)
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


@pytest.mark.slow
def test_unlearning_is_seeded(digits, infected_report, tmp_path):
    config = MitigationConfig(labels=(TARGET,), threads=1, seed=3)
    runs = [
        mitigate(digits["digits_infected.onnx"], infected_report, digits["digits_test.npz"], config, tmp_path / name)[0]
        for name in ("a.onnx", "b.onnx")
    ]
    assert runs[0].output_sha256 == runs[1].output_sha256
    assert runs[0].after == runs[1].after


@pytest.mark.slow
def test_unlearning_stops_at_the_first_epoch_where_the_trigger_fails_and_accuracy_is_back(
    digits, infected_report, tmp_path
):
    """An epoch over the 378 repair images is a dozen steps: after the first the trigger fails but clean accuracy
    is down; the stopping rule, not a fixed count, decides how many run."""
    model, data = digits["digits_infected.onnx"], digits["digits_test.npz"]
    defaults = MitigationConfig()

    def unlearned(name: str, **settings) -> dict:
        config = MitigationConfig(labels=(TARGET,), threads=1, **settings)
        return mitigate(model, infected_report, data, config, tmp_path / name)[0].details

    def reached(details: dict) -> bool:
        return (
            max(details["attack_success"].values()) < defaults.unlearn_target
            and details["accuracy_drop"] <= defaults.max_accuracy_drop
        )

    ruled = unlearned("ruled.onnx")
    assert 1 < ruled["epochs"] < defaults.epochs
    assert ruled["stopped"] == "target reached" and reached(ruled)
    sooner = unlearned("sooner.onnx", epochs=ruled["epochs"] - 1)  # the same seeded training, one epoch less
    assert sooner["stopped"] == "epoch limit" and not reached(sooner)
    every = unlearned("every.onnx", epochs=ruled["epochs"] + 1, unlearn_target=0.0)
    assert every["epochs"] == ruled["epochs"] + 1
    assert every["steps"] == ruled["steps"] // ruled["epochs"] * every["epochs"]


@pytest.mark.slow
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
    result, _ = mitigate(path, report, digits["digits_test.npz"], config, out, real_trigger(digits))
    assert result.after.attack_success["real"] <= ATTACK_SUCCESS_AFTER["unlearn"]
    assert interface(onnx.load(str(out))) == interface(onnx.load(str(path)))
    if model != "digits_infected_nhwc_softmax.onnx":  # that one takes inception-scaled input
        assert onnx_attack_success(out, digits, nhwc, batch) <= ATTACK_SUCCESS_AFTER["unlearn"]


def rescan(model: Path, data: Path) -> tuple[int, dict]:
    args = ["scan", str(model), "--data", str(data), "--labels", RESCAN_LABELS, "--seed", "1", "--json", "--quiet"]
    result = CliRunner().invoke(main, args)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
def test_rescanning_the_patched_models_judges_the_backdoor(digits, infected_report, tmp_path):
    """Filtering leaves the classifier as it was (it only adds outputs): a re-scan still flags 7 with a small
    trigger. Unlearning weakens the backdoor in the classifier: the re-scan's trigger for 7 must be much larger.
    (It may still stand out among four labels: the unlearned 7 needs a smaller trigger than the other labels.)"""
    data = digits["digits_test.npz"]
    codes, target = {}, {}
    for method in ("unlearn", "filter"):
        out = tmp_path / f"{method}.onnx"
        config = MitigationConfig(method=method, labels=(TARGET,), threads=1, layer=FEATURES_LAYER)
        mitigate(digits["digits_infected.onnx"], infected_report, data, config, out)
        codes[method], report = rescan(out, data)
        assert report["contract"]["output_name"] == "output"
        assert report["scaling"]["accuracy"] > 0.9
        assert len(report["labels"]) == len(RESCAN_LABELS.split(","))
        target[method] = next(label for label in report["labels"] if label["label"] == TARGET)
    assert codes["filter"] == EXIT_INFECTED and target["filter"]["flagged"]
    assert target["unlearn"]["l1_norm"] > 2 * target["filter"]["l1_norm"]
    assert target["unlearn"]["anomaly_index"] < target["filter"]["anomaly_index"]


@pytest.mark.slow
def test_prune_respects_the_accuracy_limit(digits, infected_report, tmp_path):
    out = tmp_path / "pruned.onnx"
    config = MitigationConfig(method="prune", labels=(TARGET,), threads=1, max_accuracy_drop=0.01)
    rounds: list[tuple[int, int, str, str]] = []
    model, data = digits["digits_infected.onnx"], digits["digits_test.npz"]
    result, _ = mitigate(model, infected_report, data, config, out, progress=lambda *call: rounds.append(call))
    details = result.details
    assert details["accuracy_drop"] <= 0.01
    assert 0 < details["pruned"] < details["neurons"]
    assert details["stopped"] == "target reached"
    # one progress round a pruning step, out of every raised neuron's steps until the last, which ends the line
    assert [done for done, *_ in rounds] == list(range(1, len(rounds) + 1)) and rounds[-1][1] == len(rounds)
    assert all(total > len(rounds) for _, total, *_ in rounds[:-1])
    assert {unit for _, _, unit, _ in rounds} == {"pruning steps"}
    assert rounds[-1][3].startswith(f"{details['pruned']} of {details['neurons']} neurons pruned | last step kept: ")


@pytest.mark.slow
def test_default_layer_is_the_candidate_where_triggered_inputs_stand_out(digits, infected_report, tmp_path):
    model, data, out = digits["digits_infected.onnx"], digits["digits_test.npz"], tmp_path / "filtered.onnx"
    config = MitigationConfig(method="filter", labels=(TARGET,), threads=1)
    details = mitigate(model, infected_report, data, config, out)[0].details
    separation = details["layer_separation"]
    # the second-to-last layer (feeding the last Gemm) and the one before it
    assert list(separation) == ["/core/core.8/Gemm", FEATURES_LAYER]
    assert details["layer_chosen_by"] == "separation"
    best = max(separation, key=separation.get)
    assert details["layer"] == f"core/{best.split('/')[2].replace('.', '/')}/Gemm"
    assert all(0 <= value <= 1 for value in separation.values())

    named = MitigationConfig(method="filter", labels=(TARGET,), threads=1, layer="/core/core.8/Gemm")
    details = mitigate(model, infected_report, data, named, out)[0].details
    assert details["layer_chosen_by"] == "user" and details["layer"] == "core/core/8/Gemm"


def test_reattack_budget_caps_the_mask_norm():
    mask = torch.full((4, 4), 0.5)
    assert float(within_budget(mask, 4.0).sum()) == pytest.approx(4.0)
    assert torch.equal(within_budget(mask, 10.0), mask)


@pytest.mark.slow
def test_reattack_revives_the_backdoor_only_where_there_is_one(digits, infected_report):
    """Re-attacking label 7's reversed trigger: on the infected model it works; on the clean model, with the
    same small mask budget, it does not."""
    trigger = reversed_trigger(infected_report, TARGET, (1, 8, 8))
    data = load_clean_data(digits["digits_test.npz"], 1, 8, 8, 10)
    half = len(data) // 2
    repair, judged = data.subset(np.arange(half)), data.subset(np.arange(half, len(data)))
    success = {}
    for name in ("digits_infected.onnx", "digits_clean.onnx"):
        converted = load_onnx_classifier(digits[name])
        model = ScoringModel(converted.module, converted.contract, make_scaling("unit", 1))
        success[name] = reattack_success(model, trigger, repair, judged, 1.5, torch.device("cpu"), 0)
    assert success["digits_infected.onnx"] > 0.9
    assert success["digits_clean.onnx"] < 0.5


@pytest.mark.slow
def test_contract_overrides_survive_the_report(digits, tmp_path):
    """A report made with user overrides (here the fixed batch size) drives the mitigation the same way."""
    path = digits["digits_infected_fixed_batch.onnx"]
    config = make_config({"seed": 1, "labels": [TARGET], "contract": {"fixed_batch": 16}})
    assert config.contract == ContractOverrides(fixed_batch=16)
    write_report(scan(path, digits["digits_test.npz"], config), tmp_path / "report")
    prune = MitigationConfig(method="prune", labels=(TARGET,))
    result, _ = mitigate(path, tmp_path / "report", digits["digits_test.npz"], prune, tmp_path / "pruned.onnx")
    assert result.before.clean_accuracy > 0.9


def test_pruning_order_lets_each_trigger_take_turns():
    first_trigger, second_trigger = np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0, 3.0])
    assert interleaved_order([first_trigger, second_trigger]).tolist() == [0, 3, 1, 2]
    assert interleaved_order([second_trigger]).tolist() == [3, 2, 1]  # neuron 0 is not raised


def test_pruning_order_leaves_out_neurons_no_trigger_raises():
    assert interleaved_order([np.array([2.0, 0.0, -1.0, 1.0])]).tolist() == [0, 3]
    assert interleaved_order([np.zeros(3)]).tolist() == []


def test_every_method_is_registered_under_its_module_name():
    assert METHODS == ("filter", "prune", "unlearn")
    for name in METHODS:
        method = method_named(name)
        assert isinstance(method, MitigationMethod) and method.name == name
    with pytest.raises(ConfigError, match="unknown method 'retrain'; choose one of filter, prune, unlearn"):
        method_named("retrain")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": float("nan")}, "learning_rate must be positive"),
        ({"prune_reattack_norm": float("inf")}, "prune_reattack_norm must be 0"),
        ({"labels": (7, 7)}, "labels must be distinct"),
        ({"unlearn_batch": 0}, "unlearn_batch must be positive"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"unlearn_target": 1.0}, r"unlearn_target must be in \[0, 1\)"),
        ({"max_accuracy_drop": -0.1}, r"max_accuracy_drop must be in \[0, 1\)"),
        ({"seed": -1}, "seed must be 0 or positive"),
    ],
)
def test_config_refuses_values_no_run_can_use(change, message):
    with pytest.raises(ConfigError, match=message):
        MitigationConfig(**change).validate()


# ---------------------------------------------------------------- no output may replace an input


@pytest.mark.slow
@pytest.mark.parametrize("clash", ["json-out is the model", "json-out is report.json", "json-out is out", "out links"])
def test_an_output_onto_an_input_is_refused_before_any_work(digits, infected_report, tmp_path, clash):
    model = tmp_path / "model.onnx"
    model.write_bytes(digits["digits_infected.onnx"].read_bytes())
    out, json_out = tmp_path / "patched.onnx", None
    if clash == "json-out is the model":
        json_out = model
    elif clash == "json-out is report.json":
        json_out = infected_report / "report.json"
    elif clash == "json-out is out":
        json_out = out
    else:
        out.hardlink_to(model)  # a hard link: another name for the model's bytes
    kept = {path: path.read_bytes() for path in (model, infected_report / "report.json")}
    config = MitigationConfig(labels=(TARGET,), threads=1)
    with pytest.raises(ConfigError, match="would overwrite or write into the input|are the same file"):
        mitigate(model, infected_report, digits["digits_test.npz"], config, out, json_out=json_out)
    assert {path: path.read_bytes() for path in kept} == kept
    assert not (tmp_path / "mitigation.json").exists()


# ---------------------------------------------------------------- tampered report folders


@pytest.fixture(scope="module")
def report_payload(infected_report) -> dict:
    return json.loads((infected_report / "report.json").read_text())


@pytest.mark.slow
def test_a_report_reads_back_as_it_was_written(report_payload):
    report = ScanReport.from_json(report_payload)
    assert report.to_json_dict() == report_payload
    assert report.config.labels == (TARGET,) and report.contract.num_classes == 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("flagged_labels",), [7] * 2000, "flagged_labels must be distinct labels in \\[0, 10\\)"),
        (("flagged_labels",), [12], "flagged_labels must be distinct"),
        (("flagged_labels",), "7", "flagged_labels: expected a list, not str"),
        (("flagged_labels",), [True], "flagged_labels\\[0\\]: expected int, not bool"),
        (("config", "mean"), "0.5", "config.mean: expected a list"),
        (("config", "scale"), 3, "config.scale: expected str, not int"),
        (("contract", "layout"), "NCWH", "contract.layout: 'NCWH' is not one of"),
        (("contract", "num_classes"), float("nan"), "contract.num_classes: expected int, not float"),
        (("median",), float("nan"), "median: nan is not a finite number"),
        (("model",), None, "model: expected a table, not null"),
        (("additive_stage", "images"), "many", "additive_stage.images: expected int, not str"),
        (("decision", "additive"), [{"label": 1, "success": 0.5}], "decision.additive\\[0\\]: missing field"),
        (("decision", "additive"), "[]", "decision.additive: expected a list, not str"),
    ],
)
def test_a_tampered_report_is_refused_with_one_line(report_payload, path, value, message):
    tampered = json.loads(json.dumps(report_payload))
    *parents, leaf = path
    holder = tampered
    for key in parents:
        holder = holder[key]
    holder[leaf] = value
    with pytest.raises(ConfigError, match=message) as caught:
        ScanReport.from_json(tampered)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_report_without_a_field_is_refused(report_payload):
    tampered = {key: value for key, value in report_payload.items() if key != "contract"}
    with pytest.raises(ConfigError, match="report.json: missing field 'contract'"):
        ScanReport.from_json(tampered)


class WritesMarker:
    """Unpickling it creates the marker file: a pickled .npy that runs code when loaded with allow_pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_pickled_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([WritesMarker(marker)], dtype=object), allow_pickle=True)


def write_npy_header_only(path: Path, shape: tuple[int, ...]) -> None:
    """A .npy file whose header declares `shape` float32 but that holds no data (a few hundred bytes)."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": shape})


@pytest.mark.parametrize(
    ("which", "plant", "message"),
    [
        ("mask", lambda p, m: np.save(p, np.full((8, 8), 1e6, np.float32)), "mask values must be finite and lie in"),
        ("mask", lambda p, m: np.save(p, np.full((8, 8), np.nan, np.float32)), "mask values must be finite"),
        ("mask", lambda p, m: np.save(p, np.ones((4, 4), np.float32)), "mask has shape \\[4, 4\\], the model needs"),
        ("pattern", lambda p, m: np.save(p, np.full((8, 8, 1), 256, np.float32)), "pattern values must be finite"),
        ("pattern", lambda p, m: np.save(p, np.full((8, 8, 1), -np.inf)), "pattern values must be finite"),
        ("pattern", lambda p, m: np.save(p, np.ones((8, 8), np.float32)), "pattern has shape \\[8, 8\\]"),
        ("mask", write_pickled_npy, "must be a numeric array, not object"),
        ("mask", lambda p, m: write_npy_header_only(p, (100_000, 100_000)), "over the limit image_elements"),
        ("mask", lambda p, m: write_npy_header_only(p, (8, 8)), "not a readable .npy array"),
        ("mask", lambda p, m: p.write_bytes(b"not an array"), "not a readable .npy array"),
        ("mask", lambda p, m: os.mkfifo(p), "must be a regular file"),
    ],
)
def test_tampered_trigger_arrays_are_refused(tmp_path, which, plant, message):
    files = {"mask": tmp_path / "mask.npy", "pattern": tmp_path / "pattern.npy"}
    np.save(files["mask"], np.zeros((8, 8), np.float32))
    np.save(files["pattern"], np.zeros((8, 8, 1), np.float32))
    files[which].unlink()
    marker = tmp_path / "marker"
    plant(files[which], marker)
    with pytest.raises(DataError, match=message) as caught:
        load_trigger_files(files["mask"], files["pattern"], (1, 8, 8))
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda p, m: np.save(p, np.full((8, 8, 1), 7.0, np.float32)), "within the bound \\+-6"),
        (lambda p, m: np.save(p, np.full((8, 8, 1), np.nan, np.float32)), "must be finite"),
        (lambda p, m: np.save(p, np.zeros((8, 8), np.float32)), "additive perturbation has shape \\[8, 8\\]"),
        (write_pickled_npy, "must be a numeric array, not object"),
        (lambda p, m: write_npy_header_only(p, (100_000, 100_000)), "over the limit image_elements"),
        (lambda p, m: os.mkfifo(p), "must be a regular file"),
    ],
)
def test_tampered_additive_perturbations_are_refused(tmp_path, plant, message):
    """A report folder is untrusted: a label's additive perturbation is checked (shape, no pickle, size, values
    within the bound the report states) before mitigation uses it."""
    path = tmp_path / "triggers" / "label_004_additive.npy"
    path.parent.mkdir()
    marker = tmp_path / "marker"
    plant(path, marker)
    with pytest.raises(DataError, match=message) as caught:
        reversed_additive_trigger(tmp_path, 4, 6.0, (1, 8, 8))
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_an_additive_trigger_adds_its_perturbation_within_the_pixel_range(tmp_path):
    delta = np.linspace(-6, 6, 64, dtype=np.float32).reshape(8, 8, 1)
    (tmp_path / "triggers").mkdir()
    np.save(tmp_path / "triggers" / "label_004_additive.npy", delta)
    trigger = reversed_additive_trigger(tmp_path, 4, 6.0, (1, 8, 8))
    assert trigger.name == "label 4 (additive)" and trigger.target == 4 and trigger.delta.shape == (1, 8, 8)
    images = np.stack([np.full((1, 8, 8), 2.0), np.full((1, 8, 8), 253.0)]).astype(np.float32)
    stamped = trigger.apply(images)
    assert stamped.dtype == np.float32 and stamped.min() == 0.0 and stamped.max() == 255.0
    np.testing.assert_allclose(stamped[0, 0, 4, 4], 2.0 + delta[4, 4, 0])
    assert AdditiveTrigger("t", np.zeros((1, 8, 8), np.float32), 6.0, 1).apply(images).tolist() == images.tolist()


def test_a_valid_trigger_loads_as_chw(tmp_path):
    mask, pattern = tmp_path / "mask.npy", tmp_path / "pattern.npy"
    np.save(mask, np.eye(8, dtype=np.float64))
    np.save(pattern, np.arange(64, dtype=np.uint8).reshape(8, 8, 1))
    loaded_mask, loaded_pattern = load_trigger_files(mask, pattern, (1, 8, 8))
    assert loaded_mask.dtype == loaded_pattern.dtype == np.float32
    assert loaded_pattern.shape == (1, 8, 8) and loaded_pattern[0, 7, 7] == 63
    np.testing.assert_array_equal(loaded_mask, np.eye(8))


def test_a_label_a_pair_flagged_is_mitigated_with_that_pairs_trigger_too(tmp_path):
    cycle = tuple(Carried(u, u + 1, 0.9) for u in range(5))  # classes 0 to 4 each to the next label
    pairs = [
        PairJudgement(6, 7, 12.0, 9.1, 1e-5, True, cycle, 1e-6, carry_flagged=True),  # an all-to-all patch
        PairJudgement(3, 1, 4.0, 6.0, 1e-4, True),  # a label-specific patch: flags its target alone
        PairJudgement(2, 5, 30.0, 0.5, 0.9, False, cycle, 1e-6),  # carries, but not flagged
    ]
    assert flagging_pairs(pairs, [4]) == [(7, 6)]  # carried there by the cycle's patch
    assert flagging_pairs(pairs, [1, 4]) == [(7, 6), (1, 3)]
    assert flagging_pairs(pairs, [8]) == [] and flagging_pairs(pairs, [3]) == [(7, 6)]
    (tmp_path / "triggers").mkdir()
    np.save(tmp_path / "triggers" / "pair_006_to_007_mask.npy", np.eye(8, dtype=np.float32))
    np.save(tmp_path / "triggers" / "pair_006_to_007_pattern.npy", np.full((8, 8, 1), 255, np.uint8))
    trigger = reversed_trigger(tmp_path, 7, (1, 8, 8), source=6)
    assert trigger.name == "pair 6 -> 7 (reversed)" and trigger.target == 7
    np.testing.assert_array_equal(trigger.mask, np.eye(8))
    with pytest.raises(DataError, match="label_007_mask.npy"):  # the label's own trigger is another file
        reversed_trigger(tmp_path, 7, (1, 8, 8))


def test_a_tampered_pair_trigger_is_refused_before_it_is_used(tmp_path):
    """A report folder is untrusted: a pair's trigger goes through the same checks as a label's (no pickle)."""
    (tmp_path / "triggers").mkdir()
    marker = tmp_path / "marker"
    write_pickled_npy(tmp_path / "triggers" / "pair_006_to_007_mask.npy", marker)
    np.save(tmp_path / "triggers" / "pair_006_to_007_pattern.npy", np.zeros((8, 8, 1), np.float32))
    with pytest.raises(DataError, match="must be a numeric array, not object") as caught:
        reversed_trigger(tmp_path, 7, (1, 8, 8), source=6)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_duplicated_labels_to_mitigate_are_refused():
    with pytest.raises(ConfigError, match="distinct"):
        require_labels((), [7] * 2000, 10)
    assert require_labels((3, 7), [7], 10) == [3, 7]
