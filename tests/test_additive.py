"""The additive look: universal additive perturbations per label (scanner/additive.py) and their statistics
(scanner/decision/additive.py)."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from cleanse_base.errors import ConfigError
from scanner.additive import (
    BOUND_SAMPLE,
    LEARNING_RATE,
    MIN_MEDIAN_SUCCESS,
    AdditiveProbe,
    bound_sample,
    median_is_below,
    optimized_on,
    perturbed,
    probe_labels,
)
from scanner.config import AdditiveConfig, ScanConfig
from scanner.decision.additive import (
    AdditiveJudgement,
    AdditiveMeasurement,
    flagged_looks,
    judge_additive,
    kept_looks,
    log_odds,
    looks_by_bound,
)
from scanner.decision.evidence import EvidenceMeter, LabelEvidence
from scanner.decision.rules import EvidenceDecision, PaperDecision

CPU = torch.device("cpu")

# ---------------------------------------------------------------- statistics


def test_log_odds_is_finite_at_both_ends_and_increases_with_success():
    values = [log_odds(success, 200) for success in (0.0, 0.01, 0.2, 0.5, 0.99, 1.0)]
    assert all(math.isfinite(value) for value in values)
    assert values == sorted(values) and values[3] == pytest.approx(0.0)
    assert log_odds(0.0, 200) == pytest.approx(-log_odds(1.0, 200))


NATURAL = [0.21, 0.18, 0.25, 0.30, 0.15, 0.22, 0.27, 0.19, 0.24, 0.20]


def successes(
    values: list[float], evaluated: int = 230, mimicries: list[float] | None = None, epsilon: float = 6.0
) -> dict[float, dict[int, AdditiveMeasurement]]:
    """One bound's looks: label i's perturbation sent `values[i]` of `evaluated` images."""
    return {
        epsilon: {
            label: AdditiveMeasurement(value, evaluated, mimicries[label] if mimicries else None)
            for label, value in enumerate(values)
        }
    }


def test_a_label_whose_perturbation_sends_nearly_every_image_is_flagged_and_natural_spread_is_not():
    planted = list(NATURAL)
    planted[4] = 0.97
    judged = judge_additive(successes(planted), alpha=0.001, candidate_z=1.0)
    assert judged[0].label == 4 and judged[0].flagged and judged[0].z > 4
    assert [item.label for item in judged if item.flagged] == [4]
    assert not any(item.flagged for item in judge_additive(successes(NATURAL), 0.001, 1.0))
    assert judged[0].z == judged[0].z_success and judged[0].z_mimicry == 0.0  # no mimicry measured
    assert judged[0].to_dict() == {
        "label": 4,
        "epsilon": 6.0,
        "success": 0.97,
        "evaluated": 230,
        "mimicry": None,
        "z_success": round(judged[0].z_success, 4),
        "z_mimicry": 0.0,
        "z": round(judged[0].z, 4),
        "p_value": judged[0].p_value,
        "flagged": True,
    }


MIMICRIES = [0.88, 0.90, 0.87, 0.89, 0.91, 0.86, 0.90, 0.88, 0.89, 0.87]


def test_a_perturbation_that_makes_images_look_like_the_label_is_natural_and_a_shortcut_is_not():
    """Faint ink everywhere turns any MNIST digit into an 8: high success, and the perturbed images' features close
    to the 8s' own; a blended trigger's target is reached by a shortcut, far from its clean images."""
    planted = list(NATURAL)
    planted[4] = 0.97
    natural = judge_additive(successes(planted, mimicries=[*MIMICRIES[:4], 0.96, *MIMICRIES[5:]]), 0.001, 1.0)
    assert natural[0].label == 4 and natural[0].z_mimicry < 0 and not natural[0].flagged
    assert natural[0].z < natural[0].z_success
    shortcut = judge_additive(successes(planted, mimicries=[*MIMICRIES[:4], 0.72, *MIMICRIES[5:]]), 0.001, 1.0)
    assert shortcut[0].label == 4 and shortcut[0].flagged and shortcut[0].z_mimicry > 3
    assert shortcut[0].z == pytest.approx((shortcut[0].z_success + shortcut[0].z_mimicry) / math.sqrt(2))
    few = [None] * 10
    few[0] = 0.5  # mimicry measured for too few labels: success alone
    sparse = {6.0: {label: AdditiveMeasurement(v, 230, few[label]) for label, v in enumerate(planted)}}
    assert judge_additive(sparse, 0.001, 1.0)[0].z_mimicry == 0.0


def test_a_few_images_moved_where_no_label_moves_any_are_not_a_finding():
    """A robust model moves next to nothing at the largest bound: the MAD is 0 there, and the floor keeps one label's
    three images out of 230 from looking like a backdoor."""
    quiet = [0.0] * 10
    quiet[2] = 3 / 230
    judged = judge_additive(successes(quiet), 0.001, 1.0)
    assert judged[0].label == 2 and not judged[0].flagged and judged[0].p_value > 0.001


def test_the_additive_look_needs_three_labels_with_images():
    assert judge_additive(successes([0.9, 0.1]), 0.001, 1.0) == []
    assert (
        judge_additive(
            {6.0: {**successes([0.9, 0.1, 0.2], evaluated=0)[6.0], 3: AdditiveMeasurement(0.3, 100)}}, 0.001, 1
        )
        == []
    )


def test_every_bound_is_judged_on_its_own_and_the_p_values_pay_for_the_bounds():
    """A blend stronger than the settled bound carries stands out only at the next rung up (gtsrb-blended-bn on the
    zoo: 0.92 of the images at 6 against a median of 0.29, all of them at 12): judged there against the other labels
    at 12, flagged, its p-value doubled for the two bounds judged."""
    settled = [0.21, 0.18, 0.25, 0.30, 0.55, 0.22, 0.27, 0.19, 0.24, 0.20]
    stronger = [0.61, 0.58, 0.66, 0.70, 1.00, 0.62, 0.69, 0.57, 0.64, 0.60]
    looks = {**successes(settled, epsilon=6.0), **successes(stronger, epsilon=12.0)}
    judged = judge_additive(looks, 0.001, 1.0)
    assert len(judged) == 20 and {item.epsilon for item in judged} == {6.0, 12.0}
    assert (judged[0].label, judged[0].epsilon) == (4, 12.0) and judged[0].flagged
    alone = judge_additive(successes(stronger, epsilon=12.0), 0.001, 1.0)[0]
    assert judged[0].p_value == pytest.approx(2 * alone.p_value) and judged[0].z == alone.z
    at_settled = next(item for item in judged if item.epsilon == 6.0 and item.label == 4)
    assert not at_settled.flagged  # 0.55 at 6 is no finding: only the stronger bound shows it
    assert not any(item.flagged for item in judge_additive(successes(settled), 0.001, 1.0))
    # a bound with too few labels to judge costs the others nothing
    thin = judge_additive({**successes(stronger, epsilon=12.0), **successes([0.9, 0.1], epsilon=24.0)}, 0.001, 1.0)
    assert thin[0].p_value == alone.p_value


def look(label: int, epsilon: float, p_value: float, flagged: bool) -> AdditiveJudgement:
    return AdditiveJudgement(label, 0.9, 200, None, 3.0, 0.0, 3.0, p_value, flagged, epsilon)


def test_a_report_keeps_each_flagged_labels_flagged_look_and_the_most_suspicious_one():
    """Most suspicious first: label 2 at 6 tops the list unflagged (its success's z-score too small) while label 2 at
    12 is flagged; the kept perturbation of label 2 is the flagged one, the one mitigation removes."""
    judged = [look(2, 6.0, 1e-6, False), look(2, 12.0, 1e-5, True), look(5, 6.0, 2e-4, True), look(5, 12.0, 5e-4, True)]
    assert {label: item.epsilon for label, item in flagged_looks(judged).items()} == {2: 12.0, 5: 6.0}
    assert list(flagged_looks(judged)) == [2, 5]  # most suspicious first, each label once
    assert {label: item.epsilon for label, item in kept_looks(judged).items()} == {2: 12.0, 5: 6.0}
    quiet = [look(3, 12.0, 0.2, False), look(1, 6.0, 0.4, False)]
    assert flagged_looks(quiet) == {} and list(kept_looks(quiet)) == [3] and kept_looks([]) == {}


def test_looks_group_by_bound():
    one, two = AdditiveMeasurement(0.5, 10), AdditiveMeasurement(0.2, 10)
    assert looks_by_bound([(6.0, 1, one), (12.0, 1, two), (6.0, 2, two)]) == {6.0: {1: one, 2: two}, 12.0: {1: two}}


def label_evidence(norms: list[float]) -> dict[int, LabelEvidence]:
    return {label: LabelEvidence(label, norm, 1.0, 0.5, 0.3, 0.2) for label, norm in enumerate(norms)}


NATURAL_NORMS = [40.0, 44.0, 38.0, 51.0, 47.0, 35.0, 42.0, 49.0, 39.0, 45.0]


def test_a_flagged_additive_look_flags_its_label_and_gives_the_model_its_score():
    planted = list(NATURAL)
    planted[4] = 0.97
    result = EvidenceDecision().judge(label_evidence(NATURAL_NORMS), None, successes(planted))
    assert result.flagged == [4] and result.score == result.additive[0].p_value < 0.001
    assert result.suspect == 4 and result.suspect_pair is None
    assert result.to_dict()["additive"][0]["label"] == 4
    without = EvidenceDecision().judge(label_evidence(NATURAL_NORMS))
    assert without.flagged == [] and without.additive == []
    assert PaperDecision().judge(label_evidence(NATURAL_NORMS), None, successes(planted)).additive == []
    both = {**successes(planted, epsilon=6.0), **successes(planted, epsilon=12.0)}  # flagged at both bounds
    twice = EvidenceDecision().judge(label_evidence(NATURAL_NORMS), None, both)
    assert twice.flagged == [4] and [item.label for item in twice.additive if item.flagged] == [4, 4]


# ---------------------------------------------------------------- the perturbations


def test_perturbations_are_optimized_on_the_images_the_meter_does_not_judge_them_on():
    held = np.array([1, 4, 7])
    assert list(optimized_on(10, held)) == [0, 2, 3, 5, 6, 8, 9]
    assert list(optimized_on(3, np.array([0, 1, 2]))) == [0, 1, 2]  # no image left apart: all of them


def test_a_perturbation_stays_within_its_bound_and_the_pixel_range():
    images = torch.tensor([0.0, 3.0, 128.0, 254.0, 255.0]).view(1, 1, 1, 1, 5).expand(2, 3, 1, 1, 5)
    weights = torch.tensor([10.0, -10.0]).view(2, 1, 1, 1).expand(2, 1, 1, 5)
    out = perturbed(images, weights, epsilon=6.0)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert torch.allclose(out[0, 0, 0, 0], torch.tensor([6.0, 9.0, 134.0, 255.0, 255.0]))
    assert torch.allclose(out[1, 0, 0, 0], torch.tensor([0.0, 0.0, 122.0, 248.0, 249.0]))


def test_the_bound_climbs_only_while_more_than_half_the_labels_lie_below_the_median_success():
    low = [AdditiveProbe(label, 0.0, 10, None, 1, 6.0) for label in range(5)]
    high = [AdditiveProbe(label, 0.5, 10, None, 1, 6.0) for label in range(5, 10)]
    assert not median_is_below(low, 10)  # 5 of 10 below: the other 5 could still lift the median
    assert median_is_below([*low, AdditiveProbe(5, MIN_MEDIAN_SUCCESS / 2, 10, None, 1, 6.0)], 10)
    assert not median_is_below(low + high, 10) and median_is_below(low[:3], 5)


class OffsetSensitive(nn.Module):
    """Three classes scored from the image's mean brightness: label 2 wins when the mean rises past 140, label 1
    when it falls below 60, label 0 in between; log-probabilities out, as the scanner's models give."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        scores = torch.stack([torch.zeros_like(mean), (60 - mean) / 4, (mean - 140) / 4], dim=1)
        return torch.log_softmax(scores, dim=1)


@pytest.mark.slow
def test_probes_send_images_where_the_bound_allows_and_climb_until_the_median_label_moves():
    images = np.random.default_rng(0).uniform(90, 110, (300, 1, 4, 4)).astype(np.float32)  # every image label 0
    config = AdditiveConfig(steps=40, epsilon=6.0, mini_batch=16)
    model = OffsetSensitive()
    meter = EvidenceMeter(model, images, CPU, seed=0)
    search = probe_labels(model, images, [0, 1, 2], config, meter, seed=0)
    by_label = {probe.label: probe for probe in search.probes}
    # at 6 and 12 neither mean threshold is in reach (the median label moves nothing); 48 reaches both, and as the
    # ladder's top it is the one bound judged
    assert search.epsilon == 48.0 and search.epsilons == (48.0,)
    assert by_label[1].success == 1.0 and by_label[2].success == 1.0
    assert by_label[0].evaluated == 0  # every held-out image is already label 0
    assert by_label[1].evaluated == 256 and all(probe.epsilon == 48.0 for probe in search.probes)
    assert by_label[1].mimicry is None  # no last linear layer to read features from
    assert search.images >= 2 * 40 * 16
    again = probe_labels(model, images, [0, 1, 2], config, meter, seed=0)
    assert [(p.label, p.success) for p in again.probes] == [(p.label, p.success) for p in search.probes]
    assert probe_labels(model, images, [0, 1, 2], AdditiveConfig(steps=0), meter).probes == []


def test_a_bound_below_the_ladders_top_is_judged_with_the_next_rung_up():
    images = np.random.default_rng(0).uniform(90, 110, (300, 1, 4, 4)).astype(np.float32)
    config = AdditiveConfig(steps=40, epsilon=48.0, mini_batch=16)  # the ladder 48, 96, 192, 255
    model = OffsetSensitive()
    meter = EvidenceMeter(model, images, CPU, seed=0)
    search = probe_labels(model, images, [0, 1, 2], config, meter, seed=0)
    assert search.epsilons == (48.0, 96.0) and search.epsilon == 48.0
    assert sorted((probe.epsilon, probe.label) for probe in search.probes) == [
        (epsilon, label) for epsilon in (48.0, 96.0) for label in range(3)
    ]
    assert search.images == 3 * (40 + config.rung_steps) * 16  # every label at both bounds, nothing tried below
    looks = search.looks()
    assert set(looks) == {48.0, 96.0} and looks[96.0][2].success == 1.0
    one = probe_labels(model, images, [0, 1, 2], AdditiveConfig(steps=40, epsilon=48.0, mini_batch=16, rungs=1), meter)
    assert one.epsilons == (48.0,) and one.images == 3 * 40 * 16
    fresh = probe_labels(model, images, [0, 1, 2], dataclasses.replace(config, rung_steps=0), meter)
    assert fresh.images == 2 * 3 * 40 * 16 and fresh.probes[:3] == search.probes[:3]  # the settled bound alike
    three = probe_labels(
        model, images, [0, 1, 2], AdditiveConfig(steps=40, epsilon=48.0, mini_batch=16, rungs=3), meter
    )
    assert three.epsilons == (48.0, 96.0, 192.0) and len(three.probes) == 9


class PixelPerLabel(nn.Module):
    """`classes` labels over 1 x 8 x 8 images: label k >= 1 wins where pixel k rises past 140 (40 above the
    images' 90-110), label 0 elsewhere; log-probabilities out."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(1)[:, 1 : self.classes]
        scores = torch.cat([torch.zeros_like(pixels[:, :1]), (pixels - 140) / 4], dim=1)
        return torch.log_softmax(scores, dim=1)


@pytest.mark.slow
def test_many_labels_try_a_bound_on_a_seeded_sample_first_and_leave_it_when_the_samples_median_falls_short():
    assert bound_sample(range(2 * BOUND_SAMPLE), 0) == []  # few labels: every label is tried
    sample = bound_sample(range(60), 3)
    assert sample == bound_sample(range(60), 3) != bound_sample(range(60), 4)
    assert len(sample) == BOUND_SAMPLE and sample == sorted(set(sample)) and set(sample) <= set(range(60))
    images = np.random.default_rng(0).uniform(90, 110, (300, 1, 8, 8)).astype(np.float32)
    model = PixelPerLabel(60)
    meter = EvidenceMeter(model, images, CPU, seed=0)
    config = AdditiveConfig(steps=30, epsilon=6.0, mini_batch=8)
    tried = []
    search = probe_labels(
        model, images, list(range(60)), config, meter, seed=0, progress=lambda probe, *_: tried.append(probe)
    )
    # 6, 12 and 24 move no pixel past 140: each is left after the sample's probes; 48, the ladder's top, is judged
    assert search.epsilons == (48.0,)
    sampled = [bound for bound in (6.0, 12.0, 24.0) for _ in range(BOUND_SAMPLE)]
    assert [probe.epsilon for probe in tried] == sampled + [48.0] * 60
    assert [probe.label for probe in tried[:BOUND_SAMPLE]] == bound_sample(range(60), 0)
    assert search.images == (3 * BOUND_SAMPLE + 60) * 30 * 8
    assert sorted(probe.label for probe in search.probes) == list(range(60))
    assert np.median([probe.success for probe in search.probes]) > 0.5


class PixelThresholds(nn.Module):
    """Label k >= 1 wins where pixel k of a 1 x 8 x 8 image rises past `thresholds[k]`, label 0 elsewhere."""

    def __init__(self, thresholds: list[float]):
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(thresholds[1:], dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(1)[:, 1 : len(self.thresholds) + 1]
        scores = torch.cat([torch.zeros_like(pixels[:, :1]), (pixels - self.thresholds) / 4], dim=1)
        return torch.log_softmax(scores, dim=1)


@pytest.mark.slow
def test_a_bound_climbed_to_from_one_every_label_was_probed_at_goes_on_from_there():
    labels = list(range(60))
    sample = bound_sample(labels, 0)
    # 30 labels answer at 24, faintly (past 125: only the 15% of the images whose pixels are 110, not 90), the
    # sampled ones among them; label 0 and 29 others never: at 24 the sample's median reaches the success, no early
    # count of the labels below settles it, and the whole median falls short, so every label is probed there in vain
    others = [label for label in labels[1:] if label not in sample]
    answering = set(([label for label in sample if label] + others)[:30])
    thresholds = [0.0] + [125.0 if label in answering else 255.0 for label in labels[1:]]
    images = np.where((np.arange(300) % 20 < 3)[:, None, None, None], 110, 90) * np.ones((300, 1, 8, 8), np.float32)
    model = PixelThresholds(thresholds)
    meter = EvidenceMeter(model, images, CPU, seed=0)
    config = AdditiveConfig(steps=30, epsilon=6.0, mini_batch=8, rung_steps=1)
    tried: list[AdditiveProbe] = []
    search = probe_labels(model, images, labels, config, meter, seed=0, progress=lambda probe, *_: tried.append(probe))
    at_24 = {probe.label: probe for probe in tried if probe.epsilon == 24.0}
    assert len(answering) == 30 and MIN_MEDIAN_SUCCESS <= at_24[min(answering)].success < 2 * MIN_MEDIAN_SUCCESS
    bounds = [probe.epsilon for probe in tried]
    assert bounds == [6.0] * BOUND_SAMPLE + [12.0] * BOUND_SAMPLE + [24.0] * 60 + [48.0] * 60
    assert search.epsilons == (48.0,)
    assert search.images == (2 * BOUND_SAMPLE + 60) * 30 * 8 + 60 * 1 * 8  # 48 went on for rung_steps steps
    one_step = 48.0 * math.tanh(LEARNING_RATE)
    for probe in search.probes:
        assert np.abs(probe.delta - at_24[probe.label].delta).max() <= one_step + 1e-3
    fresh = probe_labels(model, images, labels, dataclasses.replace(config, rung_steps=0), meter, seed=0)
    assert fresh.images == (2 * BOUND_SAMPLE + 2 * 60) * 30 * 8  # rungs from zero: the climb too


def test_a_rung_above_the_settled_bound_goes_on_from_each_labels_perturbation_there():
    images = np.random.default_rng(0).uniform(90, 110, (300, 1, 4, 4)).astype(np.float32)
    model = OffsetSensitive()
    meter = EvidenceMeter(model, images, CPU, seed=0)
    settings = {"steps": 40, "epsilon": 48.0, "mini_batch": 16}
    warm = probe_labels(model, images, [0, 1, 2], AdditiveConfig(**settings, rung_steps=1), meter)
    settled = {p.label: p for p in warm.probes if p.epsilon == 48.0}
    above = {p.label: p for p in warm.probes if p.epsilon == 96.0}
    one_step = 96.0 * math.tanh(LEARNING_RATE)  # the most one Adam step moves a pixel at 96 (from zero: this far)
    for label in (1, 2):
        assert np.abs(settled[label].delta).max() > 4 * one_step  # the settled look pushed far, and one step at 96
        assert np.abs(above[label].delta - settled[label].delta).max() <= one_step + 1e-3  # went on from there
        assert above[label].success == 1.0 and above[label].images == 16


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": -1},
        {"epsilon": 0.0},
        {"epsilon": 256.0},
        {"epsilon": math.nan},
        {"mini_batch": 0},
        {"rungs": 0},
        {"rung_steps": -1},
    ],
)
def test_additive_settings_out_of_range_are_refused(settings):
    with pytest.raises(ConfigError, match="additive"):
        AdditiveConfig(**settings)


def test_the_additive_flags_and_a_config_table_map_onto_the_config(tmp_path):
    from click.testing import CliRunner

    from scanner.cli import additive_settings, main
    from scanner.config import make_config

    assert additive_settings({"additive_steps": 0, "additive_epsilon": 8.0}) == {"steps": 0, "epsilon": 8.0}
    assert additive_settings({"additive_rungs": 1, "additive_rung_steps": 0}) == {"rungs": 1, "rung_steps": 0}
    assert additive_settings({}) == {}
    config = make_config({"additive": {"steps": 20, "epsilon": 12}})
    assert config.additive == AdditiveConfig(steps=20, epsilon=12.0) and ScanConfig().additive == AdditiveConfig()
    refused = CliRunner().invoke(main, ["scan", "model.onnx", "--data", "d.npz", "--additive-epsilon", "0"])
    assert refused.exit_code == 2 and "additive-epsilon" in refused.output


def test_the_additive_stage_says_what_each_label_ran():
    from scanner.report import AdditiveStage

    assert AdditiveStage(10, 6.0, 1, 1.0, [6.0, 12.0], 30, 20).budget_text() == "30 steps a label, then 20 more at 12"
    assert (
        AdditiveStage(10, 6.0, 1, 1.0, [6.0, 12.0], 60, 0).budget_text() == "60 steps a label, as many from zero at 12"
    )
    assert AdditiveStage(10, 48.0, 1, 1.0, [48.0], 30, 0).budget_text() == "30 steps a label"  # the ladder's top
    assert AdditiveStage(10, 6.0, 1, 1.0, [6.0, 12.0]).budget_text() == ""  # schema 1.16 and older do not say


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_the_additive_look_finds_a_blended_digits_backdoor_that_the_label_scan_misses(digits, digits_blended, tmp_path):
    """Noise blended at alpha 0.2 sends any digit to 4: its reversed mask is no smaller than natural triggers, the
    additive look flags it; on the clean digits model it flags nothing."""
    from fixtures.digits import BLENDED
    from scanner import make_config, scan
    from scanner.html_report import write_html_report
    from scanner.report import ScanReport, format_summary, write_report

    settings = {"pairs": {"max_pairs": 0}, "reverse": {"max_steps": 60}}
    report = scan(digits_blended, digits["digits_test.npz"], make_config(settings))
    additive = report.judged.additive
    assert additive[0].label == BLENDED.target and additive[0].flagged and additive[0].success > 0.9
    assert BLENDED.target in report.flagged and report.verdict == "infected"
    assert report.additive_stage.labels == 10 and report.additive_stage.images > 0
    assert f"flagged label {BLENDED.target} at {additive[0].epsilon:g}: success" in format_summary(report)
    written = write_report(report, tmp_path / "out")
    html = write_html_report(report, tmp_path / "out").read_text()
    assert 'id="additive"' in html and f'alt="label_{BLENDED.target:03d}_additive"' in html  # the kept perturbation
    again = ScanReport.from_json(json.loads(written.read_text()))
    assert [a.to_dict() for a in again.judged.additive] == [a.to_dict() for a in additive]
    assert again.additive_stage == report.additive_stage
    older = json.loads(written.read_text())  # as schema 1.13 wrote it: no bound per look, the settled one judged
    del older["additive_stage"]["epsilons"]
    for item in older["decision"]["additive"]:
        del item["epsilon"]
    settled = report.additive_stage.epsilon
    del older["config"]["additive"]["rungs"], older["config"]["additive"]["rung_steps"]
    read = ScanReport.from_json(older)
    assert {item.epsilon for item in read.judged.additive} == {settled} and read.additive_stage.bounds() == [settled]
    assert read.config.additive.rungs == 1 and again.config.additive.rungs == 2  # as each scan ran
    assert read.config.additive.rung_steps == 0 and again.config.additive.rung_steps == 20
    schema_1_14 = json.loads(written.read_text())  # every rung from zero
    del schema_1_14["config"]["additive"]["rung_steps"]
    assert ScanReport.from_json(schema_1_14).config.additive == dataclasses.replace(AdditiveConfig(), rung_steps=0)
    clean = scan(digits["digits_clean.onnx"], digits["digits_test.npz"], make_config(settings))
    assert not any(item.flagged for item in clean.judged.additive) and len(clean.judged.additive) == 10
    off = scan(digits_blended, digits["digits_test.npz"], make_config({**settings, "additive": {"steps": 0}}))
    assert off.judged.additive == [] and off.additive_stage.labels == 0 and "additive " not in format_summary(off)


@pytest.mark.slow
def test_a_screened_scan_runs_half_the_additive_look_and_says_so(digits, digits_blended, tmp_path):
    from fixtures.digits import BLENDED
    from scanner import make_config, scan
    from scanner.html_report import write_html_report
    from scanner.report import ScanReport, format_summary, write_report

    settings = {"pairs": {"max_pairs": 0}, "reverse": {"max_steps": 60}, "schedule": {"mode": "screened"}}
    report = scan(digits_blended, digits["digits_test.npz"], make_config(settings))
    whole = scan(
        digits_blended,
        digits["digits_test.npz"],
        make_config({**settings, "schedule": {"mode": "screened", "look_share": 1}}),
    )
    stage, whole_stage = report.additive_stage, whole.additive_stage
    assert (stage.steps, whole_stage.steps) == (30, 60) and stage.bounds() == whole_stage.bounds() == [48.0]
    assert stage.rung_steps == whole_stage.rung_steps == 0  # 48 is the ladder's top: no rung above it
    assert stage.images * 2 == whole_stage.images  # every label at every bound tried: half the steps, as many images
    assert BLENDED.target in report.flagged and report.judged.additive[0].label == BLENDED.target
    assert "(30 steps a label" in format_summary(report)
    write_report(report, tmp_path / "out")
    assert "(30 steps a label; " in write_html_report(report, tmp_path / "out").read_text()
    written = report.to_json_dict()
    assert ScanReport.from_json(written).config.schedule.look_share == 0.5
    assert ScanReport.from_json(written).additive_stage == stage
    del written["config"]["schedule"]["look_share"]  # a screened scan before schema 1.17 ran the whole look
    assert ScanReport.from_json(written).config.schedule.look_share == 1


@pytest.mark.slow
def test_a_flagged_additive_look_keeps_its_perturbation_and_mitigation_removes_it(digits, digits_blended, tmp_path):
    """The report folder keeps the flagged look's perturbation; `cleanse mitigate` then removes it beside the
    label's reversed mask: the real blend (noise at alpha 0.2) stops working after unlearning."""
    from fixtures.digits import BLENDED
    from scanner import make_config, scan
    from scanner.mitigate import MitigationConfig, mitigate
    from scanner.report import write_report

    settings = {"pairs": {"max_pairs": 0}, "reverse": {"max_steps": 60}}
    report = scan(digits_blended, digits["digits_test.npz"], make_config(settings))
    folder = tmp_path / "scan"
    write_report(report, folder)
    kept = sorted(path.name for path in (folder / "triggers").glob("*additive*"))
    assert kept == ["label_004_additive.npy", "label_004_additive.png"]  # the flagged look, also the most suspicious
    delta = np.load(folder / "triggers" / "label_004_additive.npy")
    flagged = next(item for item in report.judged.additive if item.flagged)
    assert delta.shape == (8, 8, 1) and np.abs(delta).max() <= flagged.epsilon
    real = BLENDED.trigger((8, 8, 1))
    np.save(tmp_path / "mask.npy", real.mask)
    np.save(tmp_path / "pattern.npy", real.pattern)
    result, _ = mitigate(
        digits_blended,
        folder,
        digits["digits_test.npz"],
        MitigationConfig(method="unlearn"),
        tmp_path / "patched.onnx",
        trigger=(tmp_path / "mask.npy", tmp_path / "pattern.npy"),
        trigger_target=BLENDED.target,
    )
    additive = "label 4 (additive)"
    assert set(result.before.attack_success) == {"label 4 (reversed)", additive, "real"}
    assert result.before.attack_success[additive] > 0.9 and result.after.attack_success[additive] < 0.1
    assert result.before.attack_success["real"] > 0.9 and result.after.attack_success["real"] < 0.1
    older = tmp_path / "older"  # a report of schema 1.13 kept no perturbation: the label's mask alone is removed
    shutil.copytree(folder, older)
    for path in (older / "triggers").glob("*additive*"):
        path.unlink()
    payload = json.loads((older / "report.json").read_text())
    del payload["additive_stage"]["epsilons"]
    (older / "report.json").write_text(json.dumps(payload))
    config = MitigationConfig(method="unlearn")
    before_schema, _ = mitigate(digits_blended, older, digits["digits_test.npz"], config, tmp_path / "older.onnx")
    assert set(before_schema.before.attack_success) == {"label 4 (reversed)"}


def test_a_perturbation_that_moves_no_image_is_not_a_finding_however_strange_its_features():
    """Towards a thin MNIST 1 a bounded perturbation moves almost nothing, and the unmoved images' features are far
    from the 1s' own: a mimicry z-score of 6 to 8 on the zoo, which says nothing of a trigger."""
    values = [0.10, 0.12, 0.08, 0.11, 0.00, 0.09, 0.13, 0.10, 0.12, 0.11]
    judged = judge_additive(successes(values, mimicries=[*MIMICRIES[:4], 0.40, *MIMICRIES[5:]]), 0.001, 1.0)
    quiet = next(item for item in judged if item.label == 4)
    assert quiet.z_mimicry > 6 and quiet.z_success < 0 and not quiet.flagged
    result = EvidenceDecision().judge(
        label_evidence(NATURAL_NORMS), None, successes(values, mimicries=[*MIMICRIES[:4], 0.40, *MIMICRIES[5:]])
    )
    assert result.flagged == [] and result.score > quiet.p_value  # nor is it the model's score


@pytest.mark.slow
def test_a_bound_that_falls_short_is_left_sooner_when_the_likeliest_to_fall_short_go_first():
    images = np.random.default_rng(0).uniform(99, 101, (300, 1, 8, 8)).astype(np.float32)
    model = PixelThresholds([0.0] + [104.0] * 4 + [140.0] * 5)  # labels 1-4 reached at 6, labels 5-9 only at 48
    meter = EvidenceMeter(model, images, CPU, seed=0)
    config = AdditiveConfig(steps=30, epsilon=6.0, mini_batch=8, rungs=1)
    hard_first = [9, 8, 7, 6, 5, 0, 1, 2, 3, 4]
    runs = {}
    for name, order in (("label order", ()), ("hard first", hard_first)):
        tried: list = []
        search = probe_labels(
            model, images, list(range(10)), config, meter, seed=0, labels_per_batch=1,
            progress=lambda probe, *_, seen=tried: seen.append(probe), try_order=order,
        )  # fmt: skip
        runs[name] = search, tried
    (plain, plain_tried), (ordered, ordered_tried) = runs.values()
    # 6, 12 and 24 fall short (6 of 10 labels below the median success); the order only says when that is known
    assert plain.epsilons == ordered.epsilons == (48.0,)
    assert [(p.label, p.success) for p in plain.probes] == [(p.label, p.success) for p in ordered.probes]
    assert [p.label for p in plain_tried if p.epsilon == 6.0] == list(range(10))
    assert [p.label for p in ordered_tried if p.epsilon == 6.0] == hard_first[:6]
    assert ordered.images < plain.images
