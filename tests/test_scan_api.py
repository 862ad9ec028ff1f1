"""The scan pipeline end to end on real backdoored digits models (target label 7)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cleanse_base.errors import ConfigError, DataError
from scanner import make_config, scan
from scanner.config import ScheduleConfig
from scanner.data import load_clean_data
from scanner.report import ScanReport, format_summary
from scanner.run_scan import likeliest_labels, minimum_accuracy, scan_inputs

TARGET = 7
FAST = {"reverse": {"max_steps": 200}}
# scans about other things leave out the source-specific look (tests/test_pairs.py) and the additive look
# (tests/test_additive.py)
NO_PAIRS = {"pairs": {"max_pairs": 0}, "additive": {"steps": 0}}


@pytest.mark.slow
def test_infected_model_is_flagged_with_its_target(digits):
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config({"seed": 1}))
    assert report.verdict == "infected"
    assert report.flagged == [TARGET]
    assert report.mad.anomaly_index > 2
    by_label = {result.label: result for result in report.labels}
    assert by_label[TARGET].l1_norm < report.mad.median
    assert all(result.found for result in report.labels)
    assert report.scaling.name == "unit" and report.scaling.chosen_by == "accuracy"
    assert report.scaling.accuracy > 0.9
    # the same finding with the flag threshold just above its p-value: marked close in the summary
    decision = report.judged
    near = dataclasses.replace(decision, threshold=decision.score * 2, inconclusive_below=decision.score * 20)
    close = dataclasses.replace(report, decision=near)
    assert close.verdict == "infected" and "a close call" in format_summary(close)
    assert "a close call" not in format_summary(report)


@pytest.mark.slow
def test_bfloat16_autocast_finds_the_same_backdoor(digits):
    # the label stage alone: on a CPU without native bfloat16 every pass of it is emulated
    config = make_config({"seed": 1, "reverse": {"precision": "bfloat16"}, **NO_PAIRS})
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config)
    assert report.flagged == [TARGET]
    assert report.config.reverse.precision == "bfloat16"


@pytest.mark.slow
def test_clean_model_is_not_flagged(digits):
    report = scan(digits["digits_clean.onnx"], digits["digits_test.npz"], make_config({"seed": 1}))
    assert report.verdict == "clean"
    assert report.flagged == []
    assert report.mad.anomaly_index <= 2


@pytest.mark.slow
@pytest.mark.parametrize("model, flagged", [("digits_infected.onnx", [TARGET]), ("digits_clean.onnx", [])])
def test_screened_schedule_gives_the_full_verdict_with_fewer_images(digits, model, flagged):
    # `auto` runs the 10 labels `full` (fewer than its 20) and screens them from 10 labels up
    schedules = {"full": {"mode": "auto"}, "screened": {"mode": "auto", "screen_from": 10}}
    screens: dict[str, list[tuple[int, int, int]]] = {mode: [] for mode in schedules}
    reports = {
        mode: scan(
            digits[model],
            digits["digits_test.npz"],
            make_config({"seed": 1, "schedule": chosen, **NO_PAIRS}),
            screen_progress=lambda result, done, total, mode=mode: screens[mode].append((result.label, done, total)),
        )
        for mode, chosen in schedules.items()
    }
    full, screened = reports["full"], reports["screened"]
    assert screens["full"] == []  # nothing screened
    assert sorted(label for label, _, _ in screens["screened"]) == list(range(10))
    assert [(done, total) for _, done, total in screens["screened"]] == [(done, 10) for done in range(1, 11)]
    assert full.schedule["mode"] == "full" and full.schedule["stopped_labels"] == 0
    assert "full schedule (auto: 10 labels, screened from 20)" in format_summary(full)
    assert "screened schedule (auto: 10 labels, screened from 10)" in format_summary(screened)
    written = screened.to_json_dict()
    assert ScanReport.from_json(written).config.schedule == ScheduleConfig("auto", screen_from=10)
    assert written["schedule"]["check_labels"] == sorted(written["schedule"]["check_labels"])
    del written["config"]["schedule"]["check_labels"]  # a report from before schema 1.21 drew no check label
    assert ScanReport.from_json(written).config.schedule.check_labels == 0
    del written["config"]["schedule"]  # a report from before schema 1.3 ran every label to its end
    assert ScanReport.from_json(written).config.schedule.mode == "full"
    assert full.flagged == screened.flagged == flagged
    assert screened.schedule["images"] < full.schedule["images"]
    stopped = [result for result in screened.labels if not result.final]
    assert stopped and screened.schedule["stopped_labels"] == len(stopped)
    # a stopped label's norm is projected below its bound; a flagged label always ran to its end
    assert all(result.estimated_norm <= result.l1_norm for result in stopped)
    assert all(result.final for result in screened.labels if result.flagged)
    assert screened.to_json_dict()["schedule"]["mode"] == "screened"
    assert all(result.steps == 10 for result in stopped)  # the default screens the first of its two starts
    assert all(result.steps >= 2 * 10 for result in screened.labels if result.final)  # a label run on opens both
    assert "2 starts per label (the best after 10 steps goes on) (1 for the labels stopped early)" in format_summary(
        screened
    )
    # the likeliest target ran to its end and was retried, whatever its screen said
    likeliest = likeliest_labels(scan_inputs(digits[model], digits["digits_test.npz"], screened.config))[0]
    assert next(result for result in screened.labels if result.label == likeliest).final
    assert likeliest in {retry.label for retry in screened.retry_stage.retries}


@pytest.mark.slow
def test_a_screen_with_every_start_runs_them_all_through_the_screen(digits):
    settings = {"seed": 1, "schedule": {"mode": "screened", "screen_starts": 0}, **NO_PAIRS}
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config(settings))
    assert report.flagged == [TARGET]
    stopped = [result for result in report.labels if not result.final]
    assert stopped and all(result.steps == 2 * 10 for result in stopped)
    assert "stopped early)" not in format_summary(report)
    written = report.to_json_dict()
    assert ScanReport.from_json(written).config.schedule.screen_starts == 0
    written["config"]["schedule"]["screen_starts"] = 1
    assert ScanReport.from_json(written).config.schedule.screen_starts == 1
    del written["config"]["schedule"]["screen_starts"]  # a report from before schema 1.8 screened with every start
    assert ScanReport.from_json(written).config.schedule.screen_starts == 0


@pytest.mark.slow
def test_a_screen_on_smaller_mini_batches_flags_the_target_and_says_so(digits):
    settings = {"seed": 1, "schedule": {"mode": "screened", "screen_mini_batch": 8}, **NO_PAIRS}
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config(settings))
    assert report.flagged == [TARGET]
    assert [result for result in report.labels if not result.final]
    assert "screened on mini-batches of 8" in format_summary(report)
    written = report.to_json_dict()
    assert written["config"]["schedule"]["screen_mini_batch"] == 8
    assert ScanReport.from_json(written).config.schedule.screen_mini_batch == 8
    del written["config"]["schedule"]["screen_mini_batch"]  # a report from before schema 1.26 screened as it reversed
    assert ScanReport.from_json(written).config.schedule.screen_mini_batch == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        "digits_infected_nhwc_softmax.onnx",  # NHWC input, probabilities out, inception scaling
        "digits_infected_dynamo.onnx",  # torch's default exporter: opset 20
        "digits_infected_fixed_batch.onnx",  # baked batch size 16
        "digits_infected_raw.onnx",  # expects raw 0-255 pixels
    ],
)
def test_model_variants_are_read_and_flagged(digits, model):
    report = scan(digits[model], digits["digits_test.npz"], make_config({"seed": 1, **FAST, **NO_PAIRS}))
    assert report.flagged == [TARGET], report.to_json_dict()["labels"]


@pytest.mark.slow
def test_contract_is_read_from_the_graph(digits):
    config = make_config({"labels": [0, 1], "reverse": {"max_steps": 2}})
    nhwc = scan(digits["digits_infected_nhwc_softmax.onnx"], digits["digits_test.npz"], config)
    assert (nhwc.contract.layout, nhwc.contract.output_kind) == ("NHWC", "probabilities")
    assert nhwc.scaling.name == "inception"
    fixed = scan(digits["digits_infected_fixed_batch.onnx"], digits["digits_test.npz"], config)
    assert fixed.contract.batch_size == 16
    assert fixed.conversion["source_opset"] >= 18 and fixed.conversion["converted_opset"] == 17
    raw = scan(digits["digits_infected_raw.onnx"], digits["digits_test.npz"], config)
    assert raw.scaling.name == "raw"
    assert (raw.contract.layout, raw.contract.output_kind, raw.contract.batch_size) == ("NCHW", "logits", None)


@pytest.mark.slow
def test_same_seed_gives_the_same_norms(digits):
    config = make_config({"seed": 3, "labels": [2, 7], "reverse": {"max_steps": 30}})
    first = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config)
    second = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config)
    assert [r.l1_norm for r in first.labels] == [r.l1_norm for r in second.labels]
    assert [r.steps for r in first.labels] == [r.steps for r in second.labels]


@pytest.mark.slow
def test_batching_labels_does_not_change_their_triggers(digits):
    one = make_config({"seed": 5, "labels": [1, 7, 9], "reverse": {"max_steps": 15, "labels_per_batch": 1}})
    three = make_config({"seed": 5, "labels": [1, 7, 9], "reverse": {"max_steps": 15, "labels_per_batch": 3}})
    alone = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], one)
    batched = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], three)
    np.testing.assert_allclose([r.l1_norm for r in alone.labels], [r.l1_norm for r in batched.labels], rtol=1e-3)
    assert [r.steps for r in alone.labels] == [r.steps for r in batched.labels]


def test_the_accuracy_floor_is_near_chance_for_few_and_many_classes():
    assert minimum_accuracy(make_config({}), 10) == pytest.approx(0.28)
    assert minimum_accuracy(make_config({}), 200) == pytest.approx(0.05)  # ten times chance
    assert minimum_accuracy(make_config({"min_accuracy": 0.5}), 200) == 0.5


def test_scan_refuses_when_accuracy_is_near_chance(digits, tmp_path):
    test = np.load(digits["digits_test.npz"])
    shuffled = tmp_path / "wrong_labels.npz"
    np.savez(shuffled, x=test["x"], y=np.random.default_rng(0).permutation(test["y"]))
    with pytest.raises(DataError, match="near chance"):
        scan(digits["digits_infected.onnx"], shuffled, make_config({}))


@pytest.mark.slow
def test_unlabelled_data_uses_the_given_or_default_scaling(digits, tmp_path):
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, np.load(digits["digits_test.npz"])["x"])
    config = make_config({"labels": [0], "reverse": {"max_steps": 2}})
    assert scan(digits["digits_infected.onnx"], unlabelled, config).scaling.chosen_by == "default"
    given = make_config({"labels": [0], "scale": "raw", "reverse": {"max_steps": 2}})
    assert scan(digits["digits_infected_raw.onnx"], unlabelled, given).scaling.name == "raw"


@pytest.mark.slow
def test_scan_accepts_loaded_data(digits):
    data = load_clean_data(digits["digits_test.npz"], 1, 8, 8, 10, max_images=100, seed=0)
    report = scan(digits["digits_infected.onnx"], data, make_config({"labels": [7], "reverse": {"max_steps": 5}}))
    assert report.data["images"] == 100
    assert [r.label for r in report.labels] == [7]
    # one label: MAD cannot flag it, so the API's report says so rather than CLEAN
    assert report.verdict == "inconclusive" and "MAD needs at least 3" in report.verdict_reason


def test_a_scan_that_must_give_a_verdict_refuses_too_few_labels_before_reversing(digits):
    config = make_config({"labels": [0, 7], "reverse": {"max_steps": 5}})
    progress = []
    with pytest.raises(ConfigError, match="MAD needs at least 3"):
        scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config, progress.append, require_verdict=True)
    assert progress == []
