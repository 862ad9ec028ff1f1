"""benchmarks.detection_table judges each saved scan as `cleanse scan` judged it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from benchmarks.detection_table import auc_loss_lines, report_lines, roc_auc, saved_additive, saved_pairs
from scanner.decision.additive import AdditiveJudgement, AdditiveMeasurement
from scanner.decision.pairs import Carried, PairJudgement
from scanner.decision.rules import DecisionResult
from scanner.report import AdditiveStage, PairStage

CARRY = (Carried(label=3, to=0, share=0.9),)


def judged_report() -> SimpleNamespace:
    """What the two readers take from a ScanReport whose scan ran the pair stage and the additive look."""
    decision = DecisionResult(
        "evidence",
        [2],
        1e-6,
        "p_value",
        0.001,
        pairs=[PairJudgement(1, 2, 4.5, 6.0, 1e-6, True, CARRY), PairJudgement(2, 1, 30.0, 0.1, 1.0, False)],
        additive=[AdditiveJudgement(2, 0.8, 256, 0.3, 4.0, 1.0, 3.5, 1e-4, True, 6.0)],
    )
    return SimpleNamespace(
        decision=decision,
        pair_stage=PairStage(pairs=2, needed=2),
        additive_stage=AdditiveStage(labels=3, epsilon=6.0, epsilons=[6.0]),
    )


def test_a_scans_own_pairs_and_look_are_judged_without_record_folders():
    """Until stop 45 a table run without --pairs and --additive judged the labels alone, so its `evidence` column
    missed what the scan's pairs and additive look had flagged (2 of 4 all-to-all models, all 3 blended ones)."""
    report = judged_report()
    pairs, carried = saved_pairs(report, None, "model", 0)
    assert pairs == {(1, 2): 4.5, (2, 1): 30.0}
    assert carried == {(1, 2): CARRY}
    assert saved_additive(report, None, "model", 0) == {6.0: {2: AdditiveMeasurement(0.8, 256, 0.3)}}


def test_records_stand_in_only_where_asked_or_where_the_scan_has_none(tmp_path: Path):
    record = tmp_path / "model" / "seed0.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"pairs": [{"source": 0, "target": 1, "l1_norm": 9.0}]}))
    report = judged_report()
    assert saved_pairs(report, tmp_path, "model", 0)[0] == {(1, 2): 4.5, (2, 1): 30.0}  # the scan's own first
    assert saved_pairs(report, tmp_path, "model", 0, records_first=True) == ({(0, 1): 9.0}, {})
    bare = SimpleNamespace(decision=None, pair_stage=PairStage(), additive_stage=AdditiveStage())
    assert saved_pairs(bare, tmp_path, "model", 0) == ({(0, 1): 9.0}, {})
    assert saved_pairs(bare, None, "model", 0) is None
    assert saved_additive(bare, None, "model", 0) is None


def test_the_table_says_which_scans_it_judges_otherwise_than_their_reports():
    report = judged_report()
    scan = SimpleNamespace(model="m", seed=0, report=report)
    same = DecisionResult("evidence", [2], 1e-6, "p_value", 0.001, inconclusive_below=0.01)
    close = DecisionResult("evidence", [], 0.005, "p_value", 0.001, inconclusive_below=0.01)
    assert report_lines([scan], {("evidence", "m", 0): same}) == [
        "evidence: 1 of 1 scans judged as their own reports judged them"
    ]
    assert report_lines([scan], {("evidence", "m", 0): close}) == [
        "evidence: 0 of 1 scans judged as their own reports judged them",
        "  m seed 0: here close call, its report [2]",
    ]


def test_the_roc_auc_lost_is_counted_by_model_and_adds_up_to_the_roc_auc():
    scores = {("clean-a", 0): 1.0, ("clean-a", 1): 3.0, ("weak", 0): 0.5, ("weak", 1): 3.0, ("strong", 0): 9.0}
    families = {"clean-a": "clean", "weak": "badnets", "strong": "blended"}
    scans = [SimpleNamespace(model=model, seed=seed, family=families[model]) for model, seed in scores]
    judged = {("evidence", model, seed): SimpleNamespace(suspicion=score) for (model, seed), score in scores.items()}
    lines = auc_loss_lines(scans, judged)
    # "weak" seed 0 sits below both clean scans, seed 1 ties one: 2.5 of the 6 infected-clean pairs
    assert lines[0] == "ROC-AUC lost, evidence, by model (of 6 infected-clean scan pairs, all seeds):"
    assert lines[1] == "  weak: 2.5 pairs ordered wrong, 0.4167 (model scores by seed: 0.50, 3.00)"
    assert len(lines) == 2  # "strong" orders every pair right
    assert roc_auc([0.5, 3.0, 9.0], [1.0, 3.0]) == 1 - 2.5 / 6
    without_weak = [scan for scan in scans if scan.model != "weak"]
    assert auc_loss_lines(without_weak, judged)[1] == "  none: every infected scan scores above every clean one"
