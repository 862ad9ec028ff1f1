"""Pure statistics of the decision: robust z-scores across a model's labels, normal tails, corrections.

Every label's evidence is judged against the model's other labels (a model that is easy to fool everywhere
has small triggers everywhere), so each measurement becomes a robust z-score: its distance from the median
of all labels in units of the consistency-scaled median absolute deviation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

CONSISTENCY_CONSTANT = 1.4826  # MAD * this estimates the standard deviation of normal data


def robust_scale(values: np.ndarray, floor: float) -> tuple[float, float]:
    """(median, consistency-scaled MAD, at least `floor`)."""
    median = float(np.median(values))
    mad = CONSISTENCY_CONSTANT * float(np.median(np.abs(values - median)))
    return median, max(mad, floor)


def robust_z(values: Mapping[int, float], floor: float, larger_is_suspicious: bool) -> dict[int, float]:
    """Each label's signed robust z-score: positive where the value lies on the suspicious side."""
    array = np.array(list(values.values()), dtype=np.float64)
    median, scale = robust_scale(array, floor)
    sign = 1.0 if larger_is_suspicious else -1.0
    return {label: sign * (value - median) / scale for label, value in values.items()}


def normal_upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def sidak(p_value: float, tests: int) -> float:
    """The chance that the smallest of `tests` independent p-values is at most `p_value` (family-wise)."""
    if tests <= 1:
        return p_value
    return -math.expm1(tests * math.log1p(-min(p_value, 1.0 - 1e-16))) if p_value < 1 else 1.0


def stouffer(z_scores: list[float], weights: list[float]) -> float:
    """Weighted Stouffer combination of z-scores into one z-score."""
    total = sum(w * z for w, z in zip(weights, z_scores, strict=True))
    return total / math.sqrt(sum(w * w for w in weights))


def median_polish(table: np.ndarray, sweeps: int = 10) -> np.ndarray:
    """Tukey's median polish of a 2-D table (NaN = no value): the residuals left once each row's and each
    column's median effect is taken out, alternately, `sweeps` times."""
    residuals = np.array(table, dtype=np.float64)
    with np.errstate(all="ignore"):
        for _ in range(sweeps):
            for axis in (1, 0):
                medians = np.nanmedian(residuals, axis=axis, keepdims=True)
                residuals = residuals - np.nan_to_num(medians)
    return residuals


def student_t_upper_tail(t: float, dof: int) -> float:
    """P(T > t) for Student's t with an integer number of degrees of freedom (Abramowitz and Stegun 26.7.3-4)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, not {dof}")
    theta = math.atan(abs(t) / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:  # odd: (2/pi)(theta + sin(theta)(cos + 2/3 cos^3 + ...))
        term, total = math.cos(theta), 0.0
        for k in range(1, dof - 1, 2):
            total += term
            term *= cos2 * (k + 1) / (k + 2)
        inside = 2 / math.pi * (theta + math.sin(theta) * total) if dof > 1 else 2 / math.pi * theta
    else:  # even: sin(theta)(1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 0.0
        for k in range(1, dof, 2):
            total += term
            term *= cos2 * k / (k + 1)
        inside = math.sin(theta) * total
    tail = max(0.0, (1.0 - inside) / 2)
    return tail if t >= 0 else 1.0 - tail


def binomial_upper_tail(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate)."""
    if successes <= 0:
        return 1.0
    terms = (math.comb(trials, k) * rate**k * (1 - rate) ** (trials - k) for k in range(successes, trials + 1))
    return min(1.0, sum(terms))
