"""The evidence rule's source-specific look: is one (source, target) pair's trigger smaller than its source and
its target explain, or does it carry the other classes each to a label of their own?

Some sources are easy to move anywhere (a thin digit 1) and some targets easy to reach from anywhere, so a pair's
log norm is judged after Tukey's median polish takes out each source's and each target's typical log norm; the
residual becomes a robust z-score over the model's pairs. The polish leaves residuals with heavier tails than a
normal's: pooled over 540 pairs of 6 clean 10-class zoo models (seed 0), their upper quantiles (0.9/0.95/0.99/0.995:
1.56, 2.13, 3.26, 3.92) follow Student's t with 5 degrees of freedom (1.48, 2.02, 3.36, 4.03), so the p-value is
its tail, corrected for the number of pairs (Sidak). The README (How a scan works, step 6) gives its calibration
on every clean zoo scan.

An all-to-all backdoor (each class y to y + 1) plants one patch that sends every class somewhere, each to its own
label, so a pair whose reversal found it carries the other classes' images along (`Carried`, measured in
scanner/pairs.py): most images of class u go to one label v_u, a different v_u for each u. A natural trigger of the
target sends other classes to the target or leaves them. So each pair also counts the distinct labels that receive
most (more than half) of some other class's images; against the rate at which the model's pairs do that at all
(every pair pooled, Laplace's rule of succession), its binomial tail is the carry's p-value. The pair's p-value is the
smaller of its two looks, each paid for (Bonferroni), corrected for the number of pairs. A pair whose carry look alone
is a finding flags the labels it carries classes to besides its target: they are the same backdoor's other targets,
and which pairs of the cycle a reversal finds changes from seed to seed, the labels they carry to much less.

Several pairs of a cycle may each carry the other classes, none enough alone (the pooled rate they are judged against
rises with them). The cycle look judges them together: for k = 2 to `CYCLE_PAIRS`, the chance that k or more of the
model's pairs carry as well as the k-th best does, were each pair's carry tail uniform (a discrete tail is at most so
likely), is the binomial tail of the k-th order statistic; the smallest, paid for (Bonferroni over k), flags the k
pairs it takes as their carries would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scanner.decision.statistics import (
    binomial_upper_tail,
    median_polish,
    robust_scale,
    sidak,
    student_t_upper_tail,
)

PAIR_TAIL_DOF = 5
CYCLE_PAIRS = 5  # the most pairs the cycle look takes together
PAIR_Z_FLOOR = 0.05  # smallest scale (of log norms) a z-score divides by
MIN_SIDE = 3  # fewest sources and targets a polish needs
MOST = 0.5  # a class is carried to a label when more than this share of its stamped images goes there


@dataclass(frozen=True)
class Carried:
    """Where a pair's trigger sends one other class's images, besides its own label and the pair's target."""

    label: int  # the class whose images were stamped
    to: int  # the label, neither the class nor the pair's target, most of them went to (-1: none went elsewhere)
    share: float  # the share of the class's stamped images sent there


@dataclass(frozen=True)
class PairJudgement:
    source: int
    target: int
    norm: float
    z: float  # positive = smaller than its source and target explain
    # family-wise, corrected for the number of pairs: the smaller of the norm's and the carry's (and of the cycle
    # look's, for a pair it takes)
    p_value: float
    flagged: bool
    carried: tuple[Carried, ...] = ()  # where its trigger sends each other class (empty: not measured)
    carry_p_value: float | None = None  # the carry's look alone, family-wise (None: not measured)
    carry_flagged: bool = False  # flagged, and its carry look alone, paid for, or the cycle look lies below alpha

    @property
    def carried_to(self) -> tuple[int, ...]:
        return carried_to(self.carried)

    @property
    def flags(self) -> tuple[int, ...]:
        """The labels this pair flags: none, its target, or where its carry is a finding, alone or in the cycle look
        (an all-to-all patch sends each class to a label of its own), its target and the labels it carries to."""
        if not self.flagged:
            return ()
        return (self.target, *self.carried_to) if self.carry_flagged else (self.target,)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "l1_norm": round(self.norm, 4),
            "z": round(self.z, 4),
            "p_value": self.p_value,
            "flagged": self.flagged,
            "carried_to": list(self.carried_to),  # derived from "carried", for a reader's convenience
            "carry_p_value": self.carry_p_value,
            "carry_flagged": self.carry_flagged,
            "carried": [{"label": c.label, "to": c.to, "share": round(c.share, 4)} for c in self.carried],
        }


def carried_to(carried: Sequence[Carried]) -> tuple[int, ...]:
    """The distinct labels that receive most (more than `MOST`) of some class's stamped images, in order."""
    return tuple(sorted({item.to for item in carried if item.share > MOST and item.to >= 0}))


def carry_tails(carried: Mapping[tuple[int, int], Sequence[Carried]]) -> dict[tuple[int, int], float]:
    """Each pair's chance, one pair alone, of carrying as many classes to labels of their own as it does, were every
    class carried at the model's own rate: the binomial tail of its distinct labels (`carried_to`) over its classes
    measured, the rate pooled over every pair with Laplace's rule of succession (a rate of 0 would make one carried
    class a finding)."""
    counts = {pair: (len(carried_to(items)), len(items)) for pair, items in carried.items()}
    rate = (sum(k for k, _ in counts.values()) + 1) / (sum(n for _, n in counts.values()) + 2)
    return {pair: binomial_upper_tail(k, n, rate) for pair, (k, n) in counts.items()}


def cycle_look(tails: Mapping[tuple[int, int], float], pairs: int) -> tuple[float, list[tuple[int, int]]]:
    """The cycle look over pairs' carry `tails` (one pair alone) among the model's `pairs` pairs: for k = 2 to
    CYCLE_PAIRS, the chance that k or more pairs carry as well as the k-th best does, were every tail uniform; the
    smallest, paid for (Bonferroni over k), and the k pairs it takes (1 and none where there are too few)."""
    ordered = sorted(tails, key=lambda pair: tails[pair])
    best, taken = 1.0, []
    for k in range(2, min(CYCLE_PAIRS, len(ordered)) + 1):
        chance = binomial_upper_tail(k, pairs, tails[ordered[k - 1]])
        if chance < best:
            best, taken = chance, ordered[:k]
    return min(1.0, (CYCLE_PAIRS - 1) * best), taken


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


def judge_pairs(
    norms: Mapping[tuple[int, int], float],
    alpha: float,
    candidate_z: float,
    carried: Mapping[tuple[int, int], Sequence[Carried]] | None = None,
) -> list[PairJudgement]:
    """Every pair's judgement, most suspicious first: flagged when its p-value is below `alpha` and its z-score
    above `candidate_z` (a planted trigger is a small one, whatever it carries). With `carried` (where each pair's
    trigger sends the other classes), the p-value is the smaller of the norm's and the carry's, each paid for; a
    flagged pair whose carry look alone, paid for, lies below `alpha` is `carry_flagged`, and so are the pairs past
    the z-score gate that the cycle look takes where it lies below `alpha` (their p-values that look's, if smaller)."""
    z_scores = pair_z_scores(norms)
    tails = carry_tails({pair: carried[pair] for pair in z_scores if pair in carried}) if carried else {}
    judgements = []
    for (source, target), z in z_scores.items():
        tail = student_t_upper_tail(z, PAIR_TAIL_DOF)
        carry_tail = tails.get((source, target))
        looks = 1 if carry_tail is None else 2
        p_value = sidak(min(1.0, looks * min(tail, 1.0 if carry_tail is None else carry_tail)), len(z_scores))
        flagged = p_value < alpha and z > candidate_z
        carry_alone = None if carry_tail is None else sidak(min(1.0, looks * carry_tail), len(z_scores))
        carry_flagged = flagged and carry_alone is not None and carry_alone < alpha
        judgements.append(
            PairJudgement(
                source,
                target,
                norms[source, target],
                z,
                p_value,
                flagged,
                tuple(carried[source, target]) if carry_tail is not None else (),
                None if carry_tail is None else sidak(carry_tail, len(z_scores)),
                carry_flagged,
            )
        )
    cycle_p, cycle = cycle_look(
        {pair: tail for pair, tail in tails.items() if z_scores[pair] > candidate_z}, len(z_scores)
    )
    if cycle_p < alpha:
        judgements = [
            dataclasses.replace(j, p_value=min(j.p_value, cycle_p), flagged=True, carry_flagged=True)
            if (j.source, j.target) in cycle
            else j
            for j in judgements
        ]
    return sorted(judgements, key=lambda judgement: (judgement.p_value, -judgement.z))
