"""Outlier detection over per-label trigger norms by Median Absolute Deviation, as in the reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONSISTENCY_CONSTANT = 1.4826  # makes MAD estimate the standard deviation of normal data
DEFAULT_THRESHOLD = 2.0
# The fewest labels among which MAD can flag one: with two norms each deviates from the median by exactly the
# MAD / CONSISTENCY_CONSTANT, so no anomaly index exceeds 1 / 1.4826 = 0.674; with one, the index is 0.
MIN_LABELS = 3


@dataclass(frozen=True)
class MadResult:
    median: float
    mad: float  # consistency-scaled
    anomaly_indices: dict[int, float]  # |norm - median| / mad per label
    anomaly_index: float  # of the smallest norm: the paper's "anomaly index"
    flagged: list[int]  # labels below the median with index > threshold, smallest norm first
    threshold: float

    @property
    def infected(self) -> bool:
        return bool(self.flagged)

    @property
    def all_equal(self) -> bool:
        """Every norm is the median: MAD is 0 and no label stands out from any other."""
        return self.mad == 0 and all(index == 0 for index in self.anomaly_indices.values())


def anomaly_index(norm: float, median: float, mad: float) -> float:
    deviation = abs(norm - median)
    if mad > 0:
        return deviation / mad
    return math.inf if deviation > 0 else 0.0  # all other norms equal: any deviation is extreme


def mad_outliers(norms: dict[int, float], threshold: float = DEFAULT_THRESHOLD) -> MadResult:
    """Flag labels whose trigger norm is abnormally small."""
    if not norms:
        raise ValueError("no norms to analyse")
    values = np.array(list(norms.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = CONSISTENCY_CONSTANT * float(np.median(np.abs(values - median)))
    indices = {label: anomaly_index(norm, median, mad) for label, norm in norms.items()}
    flagged = sorted(
        (label for label, norm in norms.items() if norm <= median and indices[label] > threshold),
        key=lambda label: norms[label],
    )
    smallest = min(norms, key=norms.get)
    return MadResult(median, mad, indices, indices[smallest], flagged, threshold)
