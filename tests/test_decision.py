"""The decision stage: its statistics, the evidence measured on a trigger, and the two rules."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from scanner.decision.evidence import (
    CLASS_MEAN_MIN,
    EvidenceMeter,
    LabelEvidence,
    compactness,
    core_mask,
    top_share,
    window_side,
)
from scanner.decision.rules import EvidenceDecision, PaperDecision, upper_tail_quantile
from scanner.decision.statistics import normal_upper_tail, robust_z, sidak, stouffer
from scanner.mad import mad_outliers

# ---------------------------------------------------------------- statistics


def test_robust_z_is_distance_from_the_median_in_scaled_mads_with_a_floor_and_a_direction():
    values = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 100.0}
    z = robust_z(values, floor=0.0, larger_is_suspicious=True)
    assert z[2] == 0 and z[4] == pytest.approx(97 / 1.4826) and z[0] == pytest.approx(-2 / 1.4826)
    assert robust_z(values, 0.0, larger_is_suspicious=False)[4] == pytest.approx(-z[4])
    flat = robust_z({0: 5.0, 1: 5.0, 2: 5.0, 3: 6.0}, floor=0.5, larger_is_suspicious=True)
    assert flat[3] == pytest.approx(2.0)  # MAD 0: the floor is the scale


def test_normal_tail_quantile_and_sidak_agree_with_known_values():
    assert normal_upper_tail(0) == pytest.approx(0.5)
    assert normal_upper_tail(1.959964) == pytest.approx(0.025, rel=1e-5)
    assert upper_tail_quantile(0.025) == pytest.approx(1.959964, abs=1e-5)
    assert sidak(0.01, 1) == 0.01
    assert sidak(0.01, 10) == pytest.approx(1 - 0.99**10)
    assert sidak(1e-20, 43) == pytest.approx(43e-20, rel=1e-6)  # no cancellation at tiny p-values
    assert sidak(1.0, 5) == 1.0


def test_stouffer_weights_and_scales():
    assert stouffer([2.0, 2.0], [1.0, 1.0]) == pytest.approx(4 / math.sqrt(2))
    assert stouffer([3.0, 0.0], [1.0, 0.0]) == pytest.approx(3.0)
    assert stouffer([1.0, -1.0, 2.0, 0.0], [1.0] * 4) == pytest.approx(1.0)


# ---------------------------------------------------------------- evidence on arrays


def test_core_mask_keeps_the_fewest_largest_values_holding_half_the_mass():
    mask = np.array([[0.9, 0.1], [0.05, 0.05]], dtype=np.float32)
    np.testing.assert_allclose(core_mask(mask), [[0.9, 0.0], [0.0, 0.0]])
    spread = np.full((4, 4), 0.25, dtype=np.float32)
    assert np.count_nonzero(core_mask(spread)) == 8
    assert not core_mask(np.zeros((3, 3), dtype=np.float32)).any()


def test_a_patch_is_compact_and_scattered_pixels_are_not():
    patch = np.zeros((16, 16), dtype=np.float32)
    patch[2:5, 10:13] = 1.0
    assert window_side(9.0, 16, 16) == 3 and compactness(patch) == pytest.approx(1.0)
    scattered = np.zeros((16, 16), dtype=np.float32)
    scattered[[0, 4, 8, 12, 15, 2, 6, 10, 14], [1, 13, 5, 9, 3, 11, 7, 15, 0]] = 1.0
    assert compactness(scattered) == pytest.approx(2 / 9)  # the best 3x3 window holds two of nine pixels
    assert compactness(np.zeros((4, 4), dtype=np.float32)) == 0


def test_top_share_of_a_rise_counts_only_increases():
    rise = np.zeros(100)
    rise[:5] = 10.0
    assert top_share(rise) == pytest.approx(1.0)
    assert top_share(np.ones(100)) == pytest.approx(0.05)
    assert top_share(-np.ones(10)) == 0


class PixelDetector(nn.Module):
    """Class 1 where the top-left pixel is bright; class 0 otherwise (through a last linear layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 0, 0, 0:1] / 255.0
        return self.head(torch.cat([corner * 10, torch.full_like(corner, 5.0)], dim=1))


class PrecisionProbe(PixelDetector):
    """PixelDetector that records the dtype its head computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()
        self.head.register_forward_hook(lambda module, inputs, output: self.dtypes.add(output.dtype))


@pytest.mark.parametrize("bfloat16", [False, True])
def test_the_meter_measures_a_working_trigger_and_a_useless_one(bfloat16):
    images = np.zeros((40, 1, 6, 6), dtype=np.float32)
    model = PrecisionProbe()
    meter = EvidenceMeter(model, images, torch.device("cpu"), bfloat16=bfloat16)
    assert model.dtypes == {torch.bfloat16 if bfloat16 else torch.float32}  # as the reversal ran the model
    mask = np.zeros((6, 6), dtype=np.float32)
    mask[0, 0] = 1.0
    white = np.full((1, 6, 6), 255.0, dtype=np.float32)
    planted = meter.measure(1, mask, white)
    assert planted.success == 1.0 and planted.core_success == 1.0 and planted.compactness == 1.0
    assert planted.norm == 1.0 and planted.drive == pytest.approx(1.0)  # one of two features rises
    useless = meter.measure(1, np.roll(mask, 3), white)
    assert useless.success == 0.0 and useless.core_success == 0.0
    assert meter.measure(0, mask, white).success == 0.0  # every image is already of label 0


@pytest.mark.parametrize("bfloat16", [False, True])
def test_a_trigger_far_past_the_boundary_keeps_working_faded_and_one_at_it_does_not(bfloat16):
    """`faded_success` stamps the mask at half strength: a pixel pushed far past the detector's threshold still
    crosses it, one pushed just past it falls back."""
    images = np.full((40, 1, 6, 6), 100.0, dtype=np.float32)  # the corner scores 3.9 against class 0's 5
    meter = EvidenceMeter(PixelDetector(), images, torch.device("cpu"), bfloat16=bfloat16)
    white = np.full((1, 6, 6), 255.0, dtype=np.float32)
    mask = np.zeros((6, 6), dtype=np.float32)
    mask[0, 0] = 1.0  # the corner at 255 (10.0), faded 177.5 (7.0)
    strong = meter.measure(1, mask, white)
    assert strong.success == 1.0 and strong.faded_success == 1.0
    mask[0, 0] = 0.3  # the corner at 146.5 (5.7), faded 123.3 (4.8)
    weak = meter.measure(1, mask, white)
    assert weak.success == 1.0 and weak.faded_success == 0.0


def test_mimicry_needs_a_class_mean_of_enough_images():
    """A label whose clean mean would hold fewer than CLASS_MEAN_MIN images has no mimicry (its mean is mostly
    those images' own features); with that many it has one."""
    mask = np.zeros((6, 6), dtype=np.float32)
    mask[0, 0] = 1.0
    white = np.full((1, 6, 6), 255.0, dtype=np.float32)
    for bright, measured in ((CLASS_MEAN_MIN - 1, False), (CLASS_MEAN_MIN, True)):
        images = np.zeros((40, 1, 6, 6), dtype=np.float32)
        images[:bright, 0, 0, 0] = 255.0  # these are label 1's clean images
        meter = EvidenceMeter(PixelDetector(), images, torch.device("cpu"))
        assert (meter.measure(1, mask, white).mimicry is not None) == measured
        assert meter.measure(0, np.zeros_like(mask), white).mimicry is not None  # label 0 has 40 - bright


# ---------------------------------------------------------------- rules


def evidence_set(norms, core=None, compact=None, drive=None) -> dict[int, LabelEvidence]:
    count = len(norms)
    core = core or [0.3] * count
    compact = compact or [0.5] * count
    drive = drive or [0.3] * count
    return {
        label: LabelEvidence(label, norms[label], 1.0, core[label], compact[label], drive[label])
        for label in range(count)
    }


RNG = np.random.default_rng(0)
NATURAL = list(np.exp(RNG.normal(np.log(40), 0.25, size=20)))
NATURAL_CORE = list(RNG.uniform(0.2, 0.5, size=20))
NATURAL_COMPACT = list(RNG.uniform(0.3, 0.6, size=20))


def test_the_paper_rule_is_mad_of_the_l1_norms_exactly():
    evidence = evidence_set([*NATURAL[:9], 3.0])
    result = PaperDecision().judge(evidence)
    mad = mad_outliers({label: item.norm for label, item in evidence.items()})
    assert result.flagged == mad.flagged == [9] and result.score == mad.anomaly_index
    assert result.score_kind == "anomaly_index" and not result.judgements


def test_the_evidence_rule_flags_a_small_compact_working_trigger_and_not_natural_variation():
    planted = evidence_set(
        [*NATURAL[:19], 12.0], core=[*NATURAL_CORE[:19], 0.95], compact=[*NATURAL_COMPACT[:19], 0.98]
    )
    result = EvidenceDecision().judge(planted)
    assert result.flagged == [19] and result.score < 1e-6 and result.score_kind == "p_value"
    assert "log_norm" in result.judgements[19].flagged_by
    clean = EvidenceDecision().judge(evidence_set(NATURAL, core=NATURAL_CORE, compact=NATURAL_COMPACT))
    assert clean.flagged == [] and clean.score > 0.01


def test_a_flag_is_sure_only_past_the_threshold_by_the_near_bands_width():
    """What the scheduler settles on while labels are projected (scanner/schedule.py): the near band (p-value 0.5,
    an anomaly index 0.5 short) mirrored past the threshold."""
    evidence_rule, paper_rule = EvidenceDecision(), PaperDecision()
    assert evidence_rule.sure(evidence_set(NATURAL, compact=NATURAL_COMPACT))  # nothing flagged: nothing to doubt
    for norm in np.geomspace(2.0, 40.0, 60):
        evidence = evidence_set([*NATURAL[:19], float(norm)], compact=[*NATURAL_COMPACT[:19], 0.9])
        result = evidence_rule.judge(evidence)
        flag_p = result.judgements[19].p_value
        assert evidence_rule.sure(evidence) == (not result.flagged or flag_p <= 0.001**2 / 0.5), norm
        assert evidence_rule.sure_flags(evidence) == ({19} if result.flagged and flag_p <= 0.001**2 / 0.5 else set())
        paper = paper_rule.judge(evidence)
        indices = mad_outliers({label: item.norm for label, item in evidence.items()}).anomaly_indices
        assert paper_rule.sure(evidence) == all(indices[label] > 2.5 for label in paper.flagged), norm
        assert paper_rule.sure_flags(evidence) == {label for label in paper.flagged if indices[label] > 2.5}, norm
    tiny = evidence_set([*NATURAL[:19], 2.0], compact=[*NATURAL_COMPACT[:19], 0.9])
    assert evidence_rule.judge(tiny).flagged == [19] and evidence_rule.sure(tiny) and paper_rule.sure(tiny)
    close = evidence_set([*NATURAL[:19], 29.0], compact=[*NATURAL_COMPACT[:19], 0.9])
    assert evidence_rule.judge(close).flagged == [19] and not evidence_rule.sure(close)
    assert evidence_rule.sure_flags(close) == set()
    # two flags, one sure: the model is not sure, the one label is (the retry leaves it be, scanner/run_scan.py)
    both = evidence_set([*NATURAL[:18], 2.0, 20.0], compact=[*NATURAL_COMPACT[:18], 0.9, 0.9])
    assert evidence_rule.judge(both).flagged == [18, 19]
    assert not evidence_rule.sure(both) and evidence_rule.sure_flags(both) == {18}


def test_a_large_trigger_is_never_flagged_however_strange_its_other_measures():
    evidence = evidence_set(
        [*NATURAL[:19], 400.0], core=[*NATURAL_CORE[:19], 1.0], compact=[*NATURAL_COMPACT[:19], 1.0]
    )
    evidence[19] = LabelEvidence(19, 400.0, 1.0, 1.0, 1.0, 1.0)
    assert EvidenceDecision().judge(evidence).flagged == []


def test_a_measure_missing_for_a_label_counts_as_no_evidence_and_missing_for_most_is_left_out():
    evidence = evidence_set([*NATURAL[:9], 3.0], compact=[*NATURAL_COMPACT[:9], 0.9])
    evidence[0] = LabelEvidence(0, evidence[0].norm, 1.0, 0.3, math.nan, None)
    result = EvidenceDecision().judge(evidence)
    assert result.measures == ["log_norm", "compactness"] and result.flagged == [9]
    assert result.judgements[0].z_scores["compactness"] == 0
    for label in range(6):
        evidence[label] = LabelEvidence(label, evidence[label].norm, 1.0, 0.3, math.nan, None)
    assert EvidenceDecision().judge(evidence).measures == ["log_norm"]


def test_an_ordinary_sized_trigger_is_not_flagged_for_its_other_measures_alone():
    compact = [*NATURAL_COMPACT[:19], 1.0]
    norms = [*NATURAL[:19], float(np.median(NATURAL[:19]))]
    result = EvidenceDecision().judge(evidence_set(norms, compact=compact))
    judgement = result.judgements[19]
    assert judgement.z_scores["compactness"] > 5 and judgement.p_value < 1e-3 and not judgement.flagged
    assert 19 not in result.flagged


def test_an_unflagged_model_in_the_decade_above_alpha_is_a_close_call():
    planted = evidence_set([*NATURAL[:19], 12.0], compact=[*NATURAL_COMPACT[:19], 0.98])
    score = EvidenceDecision().judge(planted).score
    assert score < 1e-6
    close = EvidenceDecision(alpha=score / 2).judge(planted)  # the score lies in [alpha, 10 alpha)
    assert close.flagged == [] and close.inconclusive and close.suspect == 19
    assert close.inconclusive_below == pytest.approx(5 * score) and close.to_dict()["inconclusive"] is True
    assert not EvidenceDecision(alpha=score / 2, inconclusive_factor=1).judge(planted).inconclusive
    assert not EvidenceDecision(alpha=score / 20).judge(planted).inconclusive  # a decade and more away: clean
    flagged = EvidenceDecision().judge(planted)
    assert flagged.flagged == [19] and not flagged.inconclusive  # a flag is a finding, never a close call
    assert not PaperDecision().judge(planted).inconclusive and PaperDecision().judge(planted).inconclusive_below is None


def test_a_close_call_makes_the_verdict_inconclusive_with_the_label_named():
    from scanner.mad import mad_outliers
    from scanner.report import INCONCLUSIVE, LabelResult, decide_verdict

    planted = evidence_set([*NATURAL[:19], 12.0], compact=[*NATURAL_COMPACT[:19], 0.98])
    score = EvidenceDecision().judge(planted).score
    labels = [LabelResult(label, item.norm, 1.0, True, 10, 0.1, 0.0, False) for label, item in planted.items()]
    mad = mad_outliers({label: item.norm for label, item in planted.items()})
    verdict, reason = decide_verdict(labels, mad, EvidenceDecision(alpha=score / 2).judge(planted), 0.99)
    assert verdict == INCONCLUSIVE and reason.startswith("a close call:") and "(label 19)" in reason


def test_a_flag_in_the_close_band_is_marked_close_and_the_verdict_says_so():
    """A flag whose p-value lies within the inconclusive band's factor below alpha is a finding another seed may
    not repeat: still infected, marked close (every clean flag on the zoo lies there)."""
    from scanner.mad import mad_outliers
    from scanner.report import INFECTED, LabelResult, decide_verdict

    planted = evidence_set([*NATURAL[:19], 12.0], compact=[*NATURAL_COMPACT[:19], 0.98])
    score = EvidenceDecision().judge(planted).score
    near = EvidenceDecision(alpha=score * 2).judge(planted)  # flagged, the score half of alpha
    assert near.flagged == [19] and near.close_flag and near.to_dict()["close_flag"] is True
    assert not EvidenceDecision(alpha=score * 20).judge(planted).close_flag  # a decade and more below: sure
    assert not EvidenceDecision(alpha=score * 2, inconclusive_factor=1).judge(planted).close_flag  # no band
    assert not EvidenceDecision(alpha=score / 2).judge(planted).close_flag  # not flagged: a close call instead
    assert not PaperDecision().judge(planted).close_flag
    labels = [LabelResult(label, item.norm, 1.0, True, 10, 0.1, 0.0, False) for label, item in planted.items()]
    mad = mad_outliers({label: item.norm for label, item in planted.items()})
    verdict, reason = decide_verdict(labels, mad, near, 0.99)
    assert verdict == INFECTED and "label(s) 19 flagged" in reason and "a close call" in reason


def test_a_label_flagged_in_the_close_band_beside_a_sure_one_is_marked_close():
    """A model flagged for sure by one label may flag another only just: that label is a close label (another seed
    may not flag it, as on the zoo's gtsrb-badnets-8px-random-tr-bn-softmax seed 2), the model's flag is not close,
    and the verdict names the close label."""
    from scanner.mad import mad_outliers
    from scanner.report import INFECTED, LabelResult, decide_verdict

    planted = evidence_set([*NATURAL[:18], 18.0, 12.0], compact=[*NATURAL_COMPACT[:18], 0.6, 0.98])
    weaker = EvidenceDecision().judge(planted).judgements[18].p_value
    result = EvidenceDecision(alpha=weaker * 2).judge(planted)  # label 18's p half of alpha, label 19's far below
    assert result.flagged == [19, 18] and not result.close_flag
    assert result.close_labels == [18] and result.to_dict()["close_labels"] == [18]
    assert result.flag_p_value(18) == weaker and result.flag_p_value(3) == 1.0  # 3: not flagged
    assert EvidenceDecision(alpha=weaker * 20).judge(planted).close_labels == []  # a decade and more below: sure
    assert EvidenceDecision(alpha=weaker * 2, inconclusive_factor=1).judge(planted).close_labels == []  # no band
    near = EvidenceDecision(alpha=result.score * 2).judge(planted)  # the whole flag close: every flagged label
    assert near.close_flag and near.close_labels == near.flagged == [19]
    assert PaperDecision().judge(planted).close_labels == []
    labels = [LabelResult(label, item.norm, 1.0, True, 10, 0.1, 0.0, False) for label, item in planted.items()]
    mad = mad_outliers({label: item.norm for label, item in planted.items()})
    verdict, reason = decide_verdict(labels, mad, result, 0.99)
    assert verdict == INFECTED and "label(s) 19, 18 flagged" in reason
    assert f"label(s) 18 flagged only just (p-value {weaker:.3g}" in reason and "may not flag it" in reason


@pytest.mark.slow
def test_the_evidence_rule_on_the_digits_models_end_to_end(digits, tmp_path):
    """A real scan of each digits model under the evidence rule, through the CLI, its report read back."""
    from click.testing import CliRunner

    from scanner.cli import main
    from scanner.mitigate.report_folder import read_scan_report

    outcomes = {}
    for name in ("digits_infected", "digits_clean"):
        out = tmp_path / name
        args = ["scan", str(digits[f"{name}.onnx"]), "--data", str(digits["digits_test.npz"]), "--out", str(out)]
        with pytest.raises(SystemExit) as exited:
            main([*args, "--decision", "evidence", "--threads", "1"])
        report = read_scan_report(out)
        outcomes[name] = (exited.value.code, report)
        assert report.judged.rule == "evidence" and len(report.judged.judgements) == 10
        assert json.loads((out / "report.json").read_text())["decision"]["labels"][0]["z_scores"]
        assert 'id="evidence"' in (out / "report.html").read_text()
    code, infected = outcomes["digits_infected"]
    assert code == 1 and infected.flagged == [7] and infected.judged.score < 1e-6
    measured = {"success", "core_success", "faded_success", "compactness", "drive", "mimicry"}
    assert set(infected.labels[0].evidence) == measured
    code, clean = outcomes["digits_clean"]
    assert code == 0 and clean.flagged == [] and clean.judged.score > 0.01
    assert clean.judged.inconclusive_below == pytest.approx(0.01) and not clean.judged.inconclusive
    # the same scan with the flag threshold just under its score: a close call, exit 2, one line naming it
    alpha = min(clean.judged.score, 0.999) / 2
    out = tmp_path / "close"
    args = ["scan", str(digits["digits_clean.onnx"]), "--data", str(digits["digits_test.npz"]), "--out", str(out)]
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--quiet",
            "--threads",
            "1",
            "--alpha",
            str(alpha),
            "--inconclusive-factor",
            "4",
            "--second-opinions",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"cleanse: error: inconclusive verdict: {read_scan_report(out).verdict_reason}"
    ]
    close = read_scan_report(out)
    assert close.verdict == "inconclusive" and close.verdict_reason.startswith("a close call:")
    assert close.judged.inconclusive and close.config.inconclusive_factor == 4


def test_with_too_few_labels_for_a_z_score_nothing_is_flagged():
    result = EvidenceDecision().judge(evidence_set([40.0, 1.0]))
    assert result.flagged == [] and result.measures == [] and result.score == 1.0
