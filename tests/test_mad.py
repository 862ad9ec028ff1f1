import math

import numpy as np
import pytest

from scanner.mad import CONSISTENCY_CONSTANT, mad_outliers


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
