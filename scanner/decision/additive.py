"""The evidence rule's additive look: does a small universal perturbation carry far more images to one label than
to the model's others, by a shortcut rather than by the label's own look? (The perturbations: scanner/additive.py.)

Two measures per label, each a robust z-score against the model's other labels: the attack success as a log-odds,
smoothed so that 0 and 1 stay finite (half an image either way), and the mimicry (cosine of the perturbed images'
features to the label's clean mean, as the label look measures it), smaller being suspicious: a natural direction
adds the label's own look (faint ink everywhere turns any MNIST digit into an 8, cosine 0.91 to 0.96 on the zoo's
MNIST models), a blended or SIG trigger reaches its target by a shortcut (0.66 to 0.77 on the MNIST and CIFAR-10
ones). They are combined
(Stouffer, equal weights); the p-value is the combined z-score's normal tail, corrected for the number of labels
(Sidak) and for the number of bounds the labels were judged at (Bonferroni: the settled bound and the next rung up,
scanner/additive.py). docs/measurements.md ("The additive look") gives its calibration on the clean zoo models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scanner.decision.statistics import normal_upper_tail, robust_z, sidak, stouffer

SUCCESS_Z_FLOOR = 1.0  # smallest scale (of log-odds) the success's z-score divides by
MIMICRY_Z_FLOOR = 0.02  # the label look's mimicry floor (scanner/decision/rules.py)
MIN_LABELS = 3  # fewest labels to judge a label against


@dataclass(frozen=True)
class AdditiveMeasurement:
    """What one label's perturbation did, as scanner/additive.py measured it."""

    success: float
    evaluated: int  # images the success was measured on
    mimicry: float | None = None  # None where the model has no last linear layer or the label too few images


# bound (0-255 scale) -> label -> what its perturbation did there
AdditiveLooks = Mapping[float, Mapping[int, AdditiveMeasurement]]


def looks_by_bound(
    entries: Iterable[tuple[float, int, AdditiveMeasurement]],
) -> dict[float, dict[int, AdditiveMeasurement]]:
    """(bound, label, measurement) entries as AdditiveLooks."""
    looks: dict[float, dict[int, AdditiveMeasurement]] = {}
    for epsilon, label, measurement in entries:
        looks.setdefault(epsilon, {})[label] = measurement
    return looks


@dataclass(frozen=True)
class AdditiveJudgement:
    label: int
    success: float
    evaluated: int
    mimicry: float | None
    z_success: float  # positive = more images sent than the other labels' perturbations send
    z_mimicry: float  # positive = less like the label's own images than the others' are (0: not measured)
    z: float  # the two combined
    p_value: float  # family-wise, corrected for the number of labels and of bounds
    flagged: bool
    epsilon: float = 0.0  # the bound the perturbation was optimized under (0: not recorded, reports before 1.14)

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "epsilon": self.epsilon,
            "success": round(self.success, 4),
            "evaluated": self.evaluated,
            "mimicry": None if self.mimicry is None else round(self.mimicry, 4),
            "z_success": round(self.z_success, 4),
            "z_mimicry": round(self.z_mimicry, 4),
            "z": round(self.z, 4),
            "p_value": self.p_value,
            "flagged": self.flagged,
        }


def log_odds(success: float, evaluated: int) -> float:
    """The smoothed log-odds of `success` measured on `evaluated` images."""
    sent = success * evaluated
    return math.log((sent + 0.5) / (evaluated - sent + 0.5))


def judge_additive(looks: AdditiveLooks, alpha: float, candidate_z: float) -> list[AdditiveJudgement]:
    """Every label's judgement at every bound, most suspicious first: each bound's labels are judged against each
    other (judge_bound), the p-values corrected for the number of bounds judged; flagged when the p-value is below
    `alpha` and the success's z-score above `candidate_z` (the mimicry weighs a perturbation that works; of one that
    moves no image it says nothing: on the zoo's MNIST models, perturbations towards a thin 1 that moved 0 to 5% of
    the images scored mimicry z-scores of 6 to 8)."""
    judged = [judge_bound(measured, epsilon) for epsilon, measured in looks.items()]
    judged = [bound for bound in judged if bound]
    judgements = []
    for bound in judged:
        for item in bound:
            p_value = min(1.0, item.p_value * len(judged))
            flagged = p_value < alpha and item.z_success > candidate_z
            judgements.append(replace(item, p_value=p_value, flagged=flagged))
    return sorted(judgements, key=lambda judgement: (judgement.p_value, -judgement.z, judgement.epsilon))


def judge_bound(measured: Mapping[int, AdditiveMeasurement], epsilon: float) -> list[AdditiveJudgement]:
    """The judgements of one bound's labels against each other, p-values corrected for the number of labels (none
    flagged yet); [] with fewer than MIN_LABELS labels with images. The mimicry joins where most labels have one."""
    judged = {label: item for label, item in measured.items() if item.evaluated > 0}
    if len(judged) < MIN_LABELS:
        return []
    z_success = robust_z(
        {label: log_odds(item.success, item.evaluated) for label, item in judged.items()}, SUCCESS_Z_FLOOR, True
    )
    mimicries = {label: item.mimicry for label, item in judged.items() if item.mimicry is not None}
    z_mimicry = robust_z(mimicries, MIMICRY_Z_FLOOR, False) if 2 * len(mimicries) > len(judged) else {}
    judgements = []
    for label, item in judged.items():
        z = stouffer([z_success[label], z_mimicry.get(label, 0.0)], [1.0, 1.0]) if z_mimicry else z_success[label]
        p_value = sidak(normal_upper_tail(z), len(judged))
        judgements.append(
            AdditiveJudgement(
                label,
                item.success,
                item.evaluated,
                item.mimicry,
                z_success[label],
                z_mimicry.get(label, 0.0),
                z,
                p_value,
                False,
                epsilon,
            )
        )
    return judgements


def flagged_looks(judged: Sequence[AdditiveJudgement]) -> dict[int, AdditiveJudgement]:
    """Each flagged label's most suspicious flagged look, most suspicious first (`judged` as judge_additive sorts
    it): a label flagged at two bounds is one finding."""
    looks: dict[int, AdditiveJudgement] = {}
    for look in judged:
        if look.flagged:
            looks.setdefault(look.label, look)
    return looks


def kept_looks(judged: Sequence[AdditiveJudgement]) -> dict[int, AdditiveJudgement]:
    """The looks whose perturbations a report keeps: each flagged label's most suspicious flagged look (the one
    mitigation removes), and the most suspicious look, unless its label is flagged at another bound."""
    kept = flagged_looks(judged)
    if judged:
        kept.setdefault(judged[0].label, judged[0])
    return kept
