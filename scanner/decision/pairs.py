"""The evidence rule's source-specific look: is one (source, target) pair's trigger smaller than its source and
its target explain?

Some sources are easy to move anywhere (a thin digit 1) and some targets easy to reach from anywhere, so a pair's
log norm is judged after Tukey's median polish takes out each source's and each target's typical log norm; the
residual becomes a robust z-score over the model's pairs. The polish leaves residuals with heavier tails than a
normal's: pooled over 540 pairs of 6 clean 10-class zoo models (seed 0), their upper quantiles (0.9/0.95/0.99/0.995:
1.56, 2.13, 3.26, 3.92) follow Student's t with 5 degrees of freedom (1.48, 2.02, 3.36, 4.03), so the p-value is
its tail, corrected for the number of pairs (Sidak). The README (How a scan works, step 6) gives its calibration
on every clean zoo scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scanner.decision.statistics import median_polish, robust_scale, sidak, student_t_upper_tail

PAIR_TAIL_DOF = 5
PAIR_Z_FLOOR = 0.05  # smallest scale (of log norms) a z-score divides by
MIN_SIDE = 3  # fewest sources and targets a polish needs


@dataclass(frozen=True)
class PairJudgement:
    source: int
    target: int
    norm: float
    z: float  # positive = smaller than its source and target explain
    p_value: float  # family-wise, corrected for the number of pairs
    flagged: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "l1_norm": round(self.norm, 4),
            "z": round(self.z, 4),
            "p_value": self.p_value,
            "flagged": self.flagged,
        }


def pair_z_scores(norms: Mapping[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """Each pair's robust z-score of its median-polished log norm (positive: smaller than expected); empty when
    the pairs span fewer than MIN_SIDE sources or targets."""
    sources = sorted({source for source, _ in norms})
    targets = sorted({target for _, target in norms})
    if len(sources) < MIN_SIDE or len(targets) < MIN_SIDE:
        return {}
    row = {source: i for i, source in enumerate(sources)}
    column = {target: j for j, target in enumerate(targets)}
    table = np.full((len(sources), len(targets)), np.nan)
    for (source, target), norm in norms.items():
        table[row[source], column[target]] = np.log(max(norm, 1e-6))
    residuals = median_polish(table)
    values = np.array([residuals[row[s], column[t]] for s, t in norms])
    median, scale = robust_scale(values, PAIR_Z_FLOOR)
    return {pair: float((median - value) / scale) for pair, value in zip(norms, values, strict=True)}


def judge_pairs(norms: Mapping[tuple[int, int], float], alpha: float, candidate_z: float) -> list[PairJudgement]:
    """Every pair's judgement, most suspicious first: flagged when its p-value is below `alpha` and its z-score
    above `candidate_z`."""
    z_scores = pair_z_scores(norms)
    judgements = []
    for (source, target), z in z_scores.items():
        p_value = sidak(student_t_upper_tail(z, PAIR_TAIL_DOF), len(z_scores))
        flagged = p_value < alpha and z > candidate_z
        judgements.append(PairJudgement(source, target, norms[source, target], z, p_value, flagged))
    return sorted(judgements, key=lambda judgement: (judgement.p_value, -judgement.z))
