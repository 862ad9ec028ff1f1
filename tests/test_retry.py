"""The retry (scanner/retry.py): the labels with the smallest triggers and the likeliest targets reversed again from
fresh starts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cleanse_base.errors import ConfigError
from scanner.config import RetryConfig, ReverseConfig, ScanConfig
from scanner.report import RetryStage
from scanner.retry import (
    LIKELIEST,
    SMALLEST,
    Retry,
    kept_round,
    likeliest_targets,
    retry_candidates,
    retry_count,
    retry_labels,
    retry_rounds,
    split_sure,
)
from scanner.reverse import LabelTrigger, TriggerReverser


def test_the_retry_takes_the_square_root_of_the_labels_unless_told():
    assert [retry_count(n, 0) for n in (1, 3, 10, 43, 200)] == [1, 2, 4, 7, 15]
    assert retry_count(10, 3) == 3
    assert retry_count(5, 9) == 5  # never more labels than the scan has


def test_the_candidates_are_the_smallest_final_triggers_then_the_likeliest_targets():
    norms = {0: 5.0, 1: 2.0, 2: 9.0, 3: 2.0, 4: 1.0}
    assert list(retry_candidates(norms, final={0, 1, 2, 3}, labels=3)) == [1, 3, 0]  # 4 stopped early: a projection
    assert retry_candidates(norms, final=set(norms), labels=2) == {4: SMALLEST, 1: SMALLEST}
    assert retry_candidates(norms, final=set(), labels=2, likeliest_order=[2, 0], likeliest=1) == {}
    # the first likeliest among the final labels, as many as asked, each retried once
    likely = [4, 1, 2, 0, 3]
    assert retry_candidates(norms, set(norms), 1, likely, 1) == {4: SMALLEST}  # 4: the smallest and the likeliest
    assert retry_candidates(norms, set(norms), 1, likely, 2) == {4: SMALLEST, 1: LIKELIEST}
    assert retry_candidates(norms, {0, 1, 2, 3}, 1, likely, 2) == {1: SMALLEST, 2: LIKELIEST}  # 4: a projection
    assert retry_candidates(norms, set(norms), 1, likely, 0) == {4: SMALLEST}
    assert retry_candidates(norms, set(norms), 1, [7, 2], 1) == {4: SMALLEST, 2: LIKELIEST}  # 7: not a label scanned


def test_a_surely_flagged_candidate_is_left_as_it_is_and_the_rest_keep_their_order_and_why():
    candidates = {4: SMALLEST, 1: SMALLEST, 2: LIKELIEST}
    assert split_sure(candidates, frozenset({1})) == ({4: SMALLEST, 2: LIKELIEST}, [1])
    assert split_sure(candidates, frozenset()) == (candidates, [])
    assert split_sure(candidates, {2, 4, 9}) == ({1: SMALLEST}, [4, 2])  # 9: sure but not a candidate


def trigger(norm: float, found: bool = True) -> LabelTrigger:
    return LabelTrigger(0, np.zeros((2, 2)), np.zeros((1, 2, 2)), norm, 1.0 if found else 0.5, found, 1, 0.1, 0.0)


def test_a_round_replaces_the_first_trigger_only_when_smaller_and_found():
    assert kept_round(trigger(10.0), [trigger(12.0), trigger(7.0), trigger(8.0)]) == 2
    assert kept_round(trigger(10.0), [trigger(10.0), trigger(11.0)]) is None  # a tie keeps the first
    assert kept_round(trigger(10.0), []) is None
    # a mask that never reached the success threshold replaces nothing, however small
    assert kept_round(trigger(10.0), [trigger(2.0, found=False), trigger(9.0)]) == 2
    assert kept_round(trigger(10.0), [trigger(2.0, found=False)]) is None
    assert kept_round(trigger(5.0, found=False), [trigger(30.0), trigger(40.0)]) == 1  # a found one replaces it


@pytest.mark.parametrize(
    "settings",
    [{"rounds": -1}, {"labels": -2}, {"likeliest": -1}, {"initial_mask_max": 0.0}, {"initial_mask_max": 1.5}],
)
def test_retry_settings_out_of_range_are_refused(settings):
    with pytest.raises(ConfigError, match="retry"):
        RetryConfig(**settings)


def test_the_retry_flags_and_a_config_table_map_onto_the_config():
    from click.testing import CliRunner

    from scanner.cli import main, retry_settings
    from scanner.config import make_config

    assert retry_settings({"retry_rounds": 2, "retry_labels": 5}) == {"rounds": 2, "labels": 5}
    assert retry_settings({"retry_initial_mask_max": 1.0}) == {"initial_mask_max": 1.0}
    assert retry_settings({"retry_likeliest": 0}) == {"likeliest": 0}
    assert retry_settings({}) == {}
    assert make_config({"retry": {"rounds": 1}}).retry == RetryConfig(rounds=1)
    refused = CliRunner().invoke(main, ["scan", "model.onnx", "--data", "d.npz", "--retry-rounds", "-1"])
    assert refused.exit_code == 2 and "retry-rounds" in refused.output


def test_the_retry_stage_says_what_it_did_and_refuses_rounds_that_never_ran():
    one = RetryStage(2, [Retry(4, 9.0, [8.5, 9.5], 1, 10, 0.1)], 10, 0.1)
    assert one.text() == (
        "the smallest trigger (label 4) reversed 2 more times: label 4 L1 9.0 -> 8.5 (10 images, 0.1 s)"
    )
    two = RetryStage(1, [Retry(4, 9.0, [9.5], None, 10, 0.1), Retry(1, 9.2, [9.6], None, 10, 0.1)], 20, 0.2)
    assert two.text().startswith("the 2 smallest triggers (labels 4, 1) reversed 1 more time: no smaller trigger")
    both = RetryStage(1, [Retry(4, 9.0, [9.5], None, 10, 0.1), Retry(7, 30.0, [12.0], 1, 10, 0.1, LIKELIEST)], 20, 0.2)
    assert both.text() == (
        "the smallest trigger (label 4) and the likeliest target (label 7) reversed 1 more time: label 7 L1 30.0 -> "
        "12.0 (20 images, 0.2 s)"
    )
    likely = [Retry(label, 9.0, [9.5], None, 10, 0.1, LIKELIEST) for label in (2, 5)]
    assert RetryStage(1, likely, 20, 0.2).subject() == "the 2 likeliest targets (labels 2, 5)"
    assert RetryStage().text() == ""  # no retry ran
    with pytest.raises(ConfigError, match="chosen_as"):  # a tampered report: a reason the scan never gives
        RetryStage(1, [Retry(4, 9.0, [9.5], None, 10, 0.1, "biggest")], 10, 0.1)
    with pytest.raises(ConfigError, match="retry_stage"):  # a tampered report: a kept round that never ran
        RetryStage(2, [Retry(4, 9.0, [8.5, 9.5], 3, 10, 0.1)], 10, 0.1)
    with pytest.raises(ConfigError, match="retry_stage"):  # fewer norms than rounds
        RetryStage(2, [Retry(4, 9.0, [8.5], None, 10, 0.1)], 10, 0.1)


def tiny_reverser(seed: int = 0) -> tuple[TriggerReverser, np.ndarray]:
    """A random-weight 4-class model over 8x8 images: enough for a reversal to run a few steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.LogSoftmax(dim=1))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    config = ReverseConfig(mini_batch=8, images_per_step=16, max_steps=6, starts=2, start_trial_steps=2)
    images = np.random.default_rng(0).uniform(0, 255, (32, 1, 8, 8)).astype(np.float32)
    return TriggerReverser(model, config, torch.device("cpu"), seed), images


def test_each_round_draws_its_own_starts_and_round_zero_is_the_first_runs():
    reverser, images = tiny_reverser()
    session = reverser.session(images, 4)
    first, again = session.start(2), session.restart(2, 0)
    assert [s.rng.random() for s in first.starts] == [s.rng.random() for s in again.starts]
    one, two = session.restart(2, 1), session.restart(2, 2)
    draws = {tuple(s.rng.random(3)) for run in (session.start(2), one, two) for s in run.starts}
    assert len(draws) == 6  # two starts a round, none shared
    assert {s.mask_max for s in session.restart(2, 1, 0.1).starts} == {0.1}
    assert {s.mask_max for s in one.starts} == {None}


def test_a_rounds_masks_start_in_the_range_it_is_given():
    """The same round from a small initial mask and from the reference's: the same draws, other triggers."""
    reverser, images = tiny_reverser()
    small = retry_rounds(reverser.session(images, 1), [1], 1, mask_max=0.01)[1][0]
    whole = retry_rounds(reverser.session(images, 1), [1], 1)[1][0]
    again = retry_rounds(reverser.session(images, 1), [1], 1, mask_max=0.01)[1][0]
    assert small.norm != whole.norm and small.norm == again.norm


def test_a_label_keeps_its_smallest_trigger_and_counts_every_rounds_work():
    reverser, images = tiny_reverser()
    first = {label: trigger for label, trigger in zip(range(2), reverser.reverse(images, [0, 1]), strict=True)}
    kept, retries = retry_labels(reverser.session(images, 2), first, rounds=2)
    assert [retry.label for retry in retries] == [0, 1]
    for retry in retries:
        assert len(retry.norms) == 2 and retry.images > 0 and retry.first_norm == first[retry.label].norm
        kept_trigger = kept[retry.label]
        assert kept_trigger.norm == min([retry.first_norm, *retry.norms])
        assert kept_trigger.steps > first[retry.label].steps
        assert kept_trigger.images == first[retry.label].images + retry.images


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_scan_retries_its_smallest_triggers_and_reports_them(digits, tmp_path):
    from fixtures.digits import TARGET
    from scanner import make_config, scan
    from scanner.html_report import write_html_report
    from scanner.model import log_probabilities
    from scanner.report import ScanReport, format_summary, write_report
    from scanner.run_scan import scan_inputs

    settings = {"pairs": {"max_pairs": 0}, "additive": {"steps": 0}, "reverse": {"max_steps": 60}}
    model, data = digits["digits_infected.onnx"], digits["digits_test.npz"]
    first = scan(model, data, make_config({**settings, "retry": {"rounds": 0}}))
    report = scan(model, data, make_config({**settings, "retry": {"rounds": 1, "labels": 3, "likeliest": 4}}))
    # a label flagged surely already (p-value at most alpha**2 / 0.5) is chosen but left as it was
    sure = {label for label, judged in first.judged.judgements.items() if judged.flagged and judged.p_value <= 2e-6}
    smallest = sorted(first.labels, key=lambda result: result.l1_norm)[:3]
    retried = [result for result in smallest if result.label not in sure]
    stage = report.retry_stage
    assert stage.rounds == 1 and [retry.label for retry in stage.retries[: len(retried)]] == [r.label for r in retried]
    assert [retry.first_norm for retry in stage.retries[: len(retried)]] == [result.l1_norm for result in retried]
    assert [retry.chosen_as for retry in stage.retries[: len(retried)]] == [SMALLEST] * len(retried)
    # the 4 likeliest targets (drawing most log-probability from other classes' images) not already chosen
    inputs = scan_inputs(model, data, make_config(settings))
    likely = likeliest_targets(log_probabilities(inputs.model, inputs.data.images, inputs.device))[:4]
    expected = [label for label in likely if label not in {result.label for result in smallest}]
    assert [(retry.label, retry.chosen_as) for retry in stage.retries[len(retried) :]] == [
        (label, LIKELIEST) for label in expected if label not in sure
    ]
    chosen = [result.label for result in smallest] + expected
    assert sure == {TARGET} and stage.sure_flags == [label for label in chosen if label in sure]
    norms = {result.label: result.l1_norm for result in report.labels}
    for retry in stage.retries:
        assert norms[retry.label] == pytest.approx(min(retry.first_norm, *retry.norms), rel=1e-6)
        assert report.labels[retry.label].evidence["compactness"] is not None
    unretried = {result.label: result.l1_norm for result in first.labels}
    assert all(norms[label] == unretried[label] for label in norms if label not in {r.label for r in stage.retries})
    assert report.flagged == [TARGET] and stage.images > 0
    summary = format_summary(report)
    assert f"retry      the {len(retried)} smallest triggers (labels {', '.join(str(r.label) for r in retried)})" in (
        summary
    )
    assert f"; label {TARGET} flagged surely already, not retried\n" in summary
    written = write_report(report, tmp_path / "out")
    html = write_html_report(report, tmp_path / "out").read_text()
    assert 'id="retry"' in html and "<td>likeliest</td>" in html
    assert f"Label {TARGET} flagged surely already, not retried: the retry looks for" in html
    payload = json.loads(written.read_text())
    assert ScanReport.from_json(payload).retry_stage == stage
    assert (
        payload["config"]["retry"]["likeliest"] == 4 and payload["retry_stage"]["retries"][-1]["chosen_as"] == LIKELIEST
    )
    schema_1_22 = json.loads(written.read_text())  # before schema 1.23 every chosen label was retried
    del schema_1_22["retry_stage"]["sure_flags"]
    assert ScanReport.from_json(schema_1_22).retry_stage.sure_flags == []
    schema_1_18 = json.loads(written.read_text())  # no likeliest target: every retry one of the smallest
    del schema_1_18["config"]["retry"]["likeliest"]
    for retry in schema_1_18["retry_stage"]["retries"]:
        del retry["chosen_as"]
    read = ScanReport.from_json(schema_1_18)
    assert read.config.retry.likeliest == 0 and {retry.chosen_as for retry in read.retry_stage.retries} == {SMALLEST}
    del payload["config"]["retry"], payload["retry_stage"]  # a report before schema 1.18: no retry ran
    older = ScanReport.from_json(payload)
    assert older.config.retry.rounds == 0 and older.retry_stage.rounds == 0
    paper = scan(model, data, make_config({**settings, "decision": "paper", "retry": {"rounds": 1}}))
    assert paper.retry_stage.rounds == 0  # the paper rule judges the first triggers, exactly
    assert ScanConfig().retry == RetryConfig(rounds=2, labels=1, likeliest=1, initial_mask_max=0.1)


def test_the_likeliest_target_draws_the_most_probability_from_other_classes_images():
    """Each image's own class is left out: a class the model predicts confidently is not a target for that."""
    probabilities = np.array(
        [
            [0.90, 0.02, 0.08],  # class 0, label 2 next
            [0.05, 0.85, 0.10],  # class 1, label 2 next
            [0.01, 0.01, 0.98],  # class 2: its own probability does not count
            [0.70, 0.25, 0.05],  # class 0, label 1 next
        ]
    )
    log_probs = np.log(probabilities)
    assert likeliest_targets(log_probs) == [2, 1, 0]
    # label 2's mean over images 0, 1 and 3: log 0.08, 0.10, 0.05; label 1's over 0, 2, 3: 0.02, 0.01, 0.25
    assert np.mean(np.log([0.08, 0.10, 0.05])) > np.mean(np.log([0.02, 0.01, 0.25]))
    # every image predicted 0 (argmax's first of a tie): label 0 has no other class's image and comes last; the
    # other two tie, the smaller first
    assert likeliest_targets(np.log(np.full((2, 3), 1 / 3))) == [1, 2, 0]


def test_the_detection_table_leaves_a_sure_flag_as_the_scan_does():
    """benchmarks.detection_table joins retry records to saved scans: a label flagged surely keeps its scan's
    trigger, as `cleanse scan` leaves it; another candidate keeps its smallest round."""
    from benchmarks.detection_table import retried_evidence
    from scanner.decision.evidence import LabelEvidence
    from scanner.decision.rules import EvidenceDecision

    norms = np.exp(np.random.default_rng(0).normal(np.log(40), 0.25, size=20)).tolist()
    norms[19] = 2.0  # a planted trigger's norm: flagged far past the sure margin
    evidence = {label: LabelEvidence(label, norm, 1.0, 0.3, 0.5, 0.3) for label, norm in enumerate(norms)}
    rule = EvidenceDecision()
    assert rule.sure_flags(evidence) == {19}
    rounds = {
        str(label): [{**dataclasses.asdict(LabelEvidence(label, 1.0, 1.0, 0.3, 0.5, 0.3)), "found": True}]
        for label in (19, 5)
    }
    record = {"candidates": [19, 5], "chosen_as": {"19": SMALLEST, "5": LIKELIEST}, "likeliest": 1, "rounds": rounds}
    kept = retried_evidence(evidence, record, RetryConfig(rounds=1, labels=1, likeliest=1), rule)
    assert kept[19].norm == 2.0 and kept[5].norm == 1.0
    assert all(kept[label] == evidence[label] for label in range(20) if label != 5)
