import math

import numpy as np
import pytest

from scanner.decision.rules import paper_result
from scanner.mad import CONSISTENCY_CONSTANT, MIN_LABELS, mad_outliers
from scanner.report import LabelResult, decide_verdict


def test_matches_the_reference_formula():
    norms = {0: 60.0, 1: 64.0, 2: 70.0, 3: 16.0, 4: 66.0, 5: 58.0, 6: 72.0}
    result = mad_outliers(norms)
    values = np.array(list(norms.values()))
    median = np.median(values)
    mad = CONSISTENCY_CONSTANT * np.median(np.abs(values - median))
    assert result.median == pytest.approx(median)
    assert result.mad == pytest.approx(mad)
    assert result.anomaly_index == pytest.approx(abs(16.0 - median) / mad)
    assert result.flagged == [3]
    assert result.infected


def test_flagged_are_below_median_and_sorted_by_norm():
    norms = {label: 50.0 + label for label in range(10)}
    norms.update({3: 5.0, 8: 9.0, 9: 500.0})  # 9 is a large outlier: never flagged
    result = mad_outliers(norms)
    assert result.flagged == [3, 8]
    assert result.anomaly_indices[9] > 2


def test_threshold_is_configurable():
    norms = {0: 10.0, 1: 12.0, 2: 14.0, 3: 16.0, 4: 7.0}
    index = mad_outliers(norms).anomaly_index
    assert mad_outliers(norms, threshold=index - 0.01).flagged == [4]
    assert mad_outliers(norms, threshold=index + 0.01).flagged == []


def test_zero_mad_makes_any_deviation_infinite():
    result = mad_outliers({0: 5.0, 1: 5.0, 2: 5.0, 3: 1.0})
    assert math.isinf(result.anomaly_index)
    assert result.flagged == [3]
    assert mad_outliers({0: 5.0, 1: 5.0}).flagged == []


def test_fewer_than_min_labels_can_never_be_flagged():
    """Why MIN_LABELS is 3: with two norms, however far apart, the anomaly index stays at 1 / 1.4826."""
    for far in (1.0, 1e-6, 1e6):
        result = mad_outliers({0: 100.0, 1: far}, threshold=0.68)
        assert result.flagged == [] and result.anomaly_index == pytest.approx(1 / CONSISTENCY_CONSTANT)
    assert mad_outliers({0: 5.0}).anomaly_index == 0
    assert MIN_LABELS == 3 and mad_outliers({0: 100.0, 1: 100.0, 2: 1.0}).flagged == [2]


def _labels(norms: dict[int, float], found: set[int]) -> list[LabelResult]:
    return [
        LabelResult(label, norm, 1.0 if label in found else 0.2, label in found, 10, 1.0, 0.0, False)
        for label, norm in norms.items()
    ]


@pytest.mark.parametrize(
    "norms, found, verdict, reason",
    [
        ({0: 60.0, 1: 64.0, 2: 70.0, 3: 16.0, 4: 66.0}, {0, 1, 2, 3, 4}, "infected", "label(s) 3"),
        ({0: 60.0, 1: 64.0, 2: 70.0, 3: 58.0, 4: 66.0}, {0, 1, 2, 3, 4}, "clean", "no label flagged"),
        ({0: 60.0, 1: 64.0}, {0, 1}, "inconclusive", "2 label(s) scanned"),
        ({7: 6.0}, {7}, "inconclusive", "1 label(s) scanned"),
        ({0: 60.0, 1: 64.0, 2: 70.0, 3: 16.0}, set(), "inconclusive", "no label's trigger reached"),
        ({0: 60.0, 1: 64.0, 2: 70.0, 3: 58.0}, {0, 1}, "inconclusive", "only 2 label(s) reached"),
        ({0: 30.0, 1: 30.0, 2: 30.0, 3: 30.0}, {0, 1, 2, 3}, "inconclusive", "same L1 norm"),
    ],
)
def test_the_verdict_is_inconclusive_where_the_statistics_cannot_decide(norms, found, verdict, reason):
    mad = mad_outliers(norms)
    decided, why = decide_verdict(_labels(norms, found), mad, paper_result(mad), 0.99)
    assert decided == verdict and reason in why
