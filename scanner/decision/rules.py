"""Decision rules: per-label evidence in, flagged labels and a model-level score out.

`paper` is Neural Cleanse's rule exactly: MAD of the L1 norms, a label flagged when its anomaly index exceeds
the threshold (2). `evidence` judges every label on several measurements of its reversed trigger (see
scanner.decision.evidence), each as a robust z-score against the model's other labels, combined into one
z-score per label (Stouffer); the model-level score is a p-value: the chance that a clean model's most
suspicious label looks at least this suspicious, corrected for the number of labels (Sidak).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scanner.decision.additive import AdditiveJudgement, AdditiveLooks, flagged_looks, judge_additive
from scanner.decision.evidence import LabelEvidence
from scanner.decision.pairs import Carried, PairJudgement, judge_pairs
from scanner.decision.statistics import normal_upper_tail, robust_z, sidak, stouffer
from scanner.mad import MadResult, mad_outliers


@dataclass(frozen=True)
class Measure:
    """One kind of evidence as the `evidence` rule reads it."""

    name: str
    larger_is_suspicious: bool
    floor: float  # smallest scale (consistency-scaled MAD) a z-score divides by
    weight: float


def log_of_norm(norm: float) -> float:
    return math.log(max(norm, 1e-6))


@dataclass(frozen=True)
class LabelJudgement:
    label: int
    z_scores: dict[str, float]  # per measure, positive = suspicious
    combined_z: float
    p_value: float  # family-wise, corrected for the number of labels
    flagged: bool
    flagged_by: list[str]  # measures whose z-score alone passed the threshold

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "z_scores": {name: round(z, 4) for name, z in self.z_scores.items()},
            "combined_z": round(self.combined_z, 4),
            "p_value": self.p_value,
            "flagged": self.flagged,
            "flagged_by": self.flagged_by,
        }


@dataclass(frozen=True)
class DecisionResult:
    rule: str  # "paper" or "evidence"
    flagged: list[int]  # most suspicious first
    score: float  # evidence: the model's p-value (small = suspicious); paper: the anomaly index (large = suspicious)
    score_kind: str  # "p_value" or "anomaly_index"
    threshold: float  # evidence: the p-value below which a label is flagged; paper: the anomaly index threshold
    judgements: dict[int, LabelJudgement] = field(default_factory=dict)  # evidence rule only
    measures: list[str] = field(default_factory=list)
    # evidence rule: an unflagged model whose p-value lies below this is a close call (None: no such band)
    inconclusive_below: float | None = None
    # the evidence rule's source-specific look (scanner/decision/pairs.py), most suspicious first
    pairs: list[PairJudgement] = field(default_factory=list)
    # the evidence rule's additive look (scanner/decision/additive.py), most suspicious first
    additive: list[AdditiveJudgement] = field(default_factory=list)

    @property
    def inconclusive(self) -> bool:
        """No label flagged, but the model's score lies in the band between the flag threshold and
        `inconclusive_below`: too close to call either way."""
        return not self.flagged and self.inconclusive_below is not None and self.score < self.inconclusive_below

    @property
    def close_flag_above(self) -> float | None:
        """The score above which a flag is close: the threshold over the inconclusive band's factor, the band's
        mirror on the flagged side (evidence rule: alpha / 10; None where there is no band)."""
        if self.inconclusive_below is None:
            return None
        return self.threshold**2 / self.inconclusive_below

    @property
    def close_flag(self) -> bool:
        """Labels flagged, but the model's score lies between `close_flag_above` and the threshold: a finding that
        another seed may not repeat."""
        above = self.close_flag_above
        return bool(self.flagged) and above is not None and self.score > above

    def flag_p_value(self, label: int) -> float:
        """The smallest p-value among the looks that flagged `label` (its own judgement, a pair that flags it, an
        additive look at it); 1 where none did."""
        own = self.judgements.get(label)
        return min(
            ([own.p_value] if own is not None and own.flagged else [])
            + [pair.p_value for pair in self.pairs if label in pair.flags]
            + [look.p_value for look in self.additive if look.flagged and look.label == label],
            default=1.0,
        )

    @property
    def close_labels(self) -> list[int]:
        """The flagged labels whose own flag lies in the close band (above `close_flag_above`): findings another
        seed may not repeat, beside a model flagged for sure by another label. Every flagged label where
        `close_flag`."""
        above = self.close_flag_above
        if above is None:
            return []
        return [label for label in self.flagged if self.flag_p_value(label) > above]

    @property
    def suspect(self) -> int | None:
        """Evidence rule: the label whose p-value is the model's score, or the target of the pair whose is, or the
        label whose additive look's is (None where none's is)."""
        pair = self.suspect_pair
        if pair is not None:
            return pair.target
        label = next((label for label, item in self.judgements.items() if item.p_value == self.score), None)
        if label is not None:
            return label
        return next((item.label for item in self.additive if item.p_value == self.score), None)

    @property
    def suspect_pair(self) -> PairJudgement | None:
        """The pair whose p-value is the model's score, where a pair's is and no label's."""
        if any(item.p_value == self.score for item in self.judgements.values()):
            return None
        return next((pair for pair in self.pairs if pair.p_value == self.score), None)

    @property
    def suspicion(self) -> float:
        """The score on one scale, larger = more suspicious (for ROC curves): -log10 p, or the anomaly index."""
        if self.score_kind == "p_value":
            return -math.log10(max(self.score, 1e-300))
        return self.score

    @property
    def margin(self) -> float:
        """How far the score lies from the threshold, on the suspicion scale (positive: flagged side)."""
        if self.score_kind == "p_value":
            return self.suspicion + math.log10(self.threshold)
        return self.score - self.threshold

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "flagged": self.flagged,
            "score": self.score,
            "score_kind": self.score_kind,
            "threshold": self.threshold,
            "margin": round(self.margin, 4),
            "inconclusive_below": self.inconclusive_below,
            "inconclusive": self.inconclusive,
            "close_flag": self.close_flag,
            "close_labels": self.close_labels,
            "measures": self.measures,
            "labels": [self.judgements[label].to_dict() for label in sorted(self.judgements)],
            "pairs": [pair.to_dict() for pair in self.pairs],
            "additive": [item.to_dict() for item in self.additive],
        }


class Decision(Protocol):
    name: str

    def judge(
        self,
        evidence: Mapping[int, LabelEvidence],
        pairs: Mapping[tuple[int, int], float] | None = None,
        additive: AdditiveLooks | None = None,
        carried: Mapping[tuple[int, int], Sequence[Carried]] | None = None,
    ) -> DecisionResult: ...

    def near(self, evidence: Mapping[int, LabelEvidence], labels: Iterable[int] | None = None) -> frozenset[int]:
        """The labels among `labels` (default: all) flagged or near a flag: the scheduler finishes any label that
        could end here."""

    def sure(self, evidence: Mapping[int, LabelEvidence]) -> bool:
        """Whether every label flagged on `evidence` lies past the threshold by the near band's width: the scheduler
        settles a verdict with some labels projected only where it is (a projection can narrow the spread every
        label is judged against)."""

    def sure_flags(self, evidence: Mapping[int, LabelEvidence]) -> frozenset[int]:
        """The labels flagged on `evidence` past the threshold by the near band's width: a smaller trigger could
        only flag them more surely, so the retry leaves them be."""


# How near a flag the scheduler finishes a label that it could otherwise stop (scanner/schedule.py): a stopped
# label's evidence is a projection, so the margin is wide. A p-value of 0.5 is about 1.8 z-units short of a flag at
# alpha 0.001 on 43 labels; an anomaly index 0.5 short of the threshold. The same band mirrored past the threshold
# (p-values: alpha**2 / 0.5, 2e-6 at alpha 0.001) is where a flag is sure enough to settle a verdict while labels
# are projected (`Decision.sure`): on the zoo, stopped labels' projected compactness bunched and took a clean label's
# p-value from 0.0012 (every label final) to 1.9e-5 (docs/measurements.md, "Label schedule").
NEAR_P_VALUE = 0.5
NEAR_ANOMALY_INDEX = 0.5


@dataclass(frozen=True)
class PaperDecision:
    threshold: float = 2.0
    name: str = "paper"

    def judge(
        self,
        evidence: Mapping[int, LabelEvidence],
        pairs: Mapping[tuple[int, int], float] | None = None,
        additive: AdditiveLooks | None = None,
        carried: Mapping[tuple[int, int], Sequence[Carried]] | None = None,
    ) -> DecisionResult:
        """The paper's rule judges labels only: `pairs`, `additive` and `carried` are not looked at."""
        return paper_result(mad_outliers(norms_of(evidence), self.threshold))

    def near(self, evidence: Mapping[int, LabelEvidence], labels: Iterable[int] | None = None) -> frozenset[int]:
        threshold = max(self.threshold - NEAR_ANOMALY_INDEX, self.threshold / 2)
        near = frozenset(mad_outliers(norms_of(evidence), threshold).flagged)
        return near if labels is None else near & frozenset(labels)

    def sure(self, evidence: Mapping[int, LabelEvidence]) -> bool:
        return self.sure_flags(evidence) == frozenset(mad_outliers(norms_of(evidence), self.threshold).flagged)

    def sure_flags(self, evidence: Mapping[int, LabelEvidence]) -> frozenset[int]:
        # past the threshold by the band is flagged at the threshold too: the index only grows with the threshold's
        # distance
        return frozenset(mad_outliers(norms_of(evidence), self.threshold + NEAR_ANOMALY_INDEX).flagged)


def norms_of(evidence: Mapping[int, LabelEvidence]) -> dict[int, float]:
    return {label: item.norm for label, item in evidence.items()}


def paper_result(mad: MadResult) -> DecisionResult:
    """The paper rule's outcome, from its MAD statistics."""
    return DecisionResult("paper", list(mad.flagged), mad.anomaly_index, "anomaly_index", mad.threshold)


# Chosen on the model zoo (benchmarks/detection_table.py, figures in the README and docs/measurements.md): the norm
# and the mask's compactness separate planted triggers from natural ones on every dataset, and a trigger whose
# features do not look like the label's clean images (low mimicry) is planted on about half the models and never
# natural.
# `core_success` and `drive` are measured and reported but left out: natural small triggers scored as high on
# the first, and the second's sign on planted triggers varied; `faded_success` as a fourth measure lost a BadNets
# target and flagged a clean model on the zoo (docs/measurements.md, "Faded triggers").
LOG_NORM = Measure("log_norm", larger_is_suspicious=False, floor=0.05, weight=1.0)
EVIDENCE_MEASURES: tuple[Measure, ...] = (
    LOG_NORM,
    Measure("compactness", larger_is_suspicious=True, floor=0.05, weight=1.0),
    Measure("mimicry", larger_is_suspicious=False, floor=0.02, weight=1.0),
)


def measure_value(item: LabelEvidence, name: str) -> float | None:
    return log_of_norm(item.norm) if name == LOG_NORM.name else getattr(item, name)


MIN_MEASURED_SHARE = 0.5  # a measure missing for more labels than this is left out of the rule


def measure_z_scores(
    evidence: Mapping[int, LabelEvidence], measures: tuple[Measure, ...]
) -> dict[str, dict[int, float]]:
    """Per measure, every label's robust z-score against the labels where it was measured; a label where it
    was not scores 0 (no evidence either way); a measure missing for most labels is left out."""
    scores: dict[str, dict[int, float]] = {}
    for measure in measures:
        values = {label: measure_value(item, measure.name) for label, item in evidence.items()}
        measured = {label: value for label, value in values.items() if value is not None and math.isfinite(value)}
        if len(measured) < max(3, MIN_MEASURED_SHARE * len(values)):
            continue
        z = robust_z(measured, measure.floor, measure.larger_is_suspicious)
        scores[measure.name] = {label: z.get(label, 0.0) for label in values}
    return scores


@dataclass(frozen=True)
class EvidenceDecision:
    alpha: float = 0.001  # family-wise p-value below which a label is flagged (calibrated on the zoo's clean models)
    measures: tuple[Measure, ...] = EVIDENCE_MEASURES
    # measures also judged on their own: an extremely small trigger is a finding even where the other measures
    # are silent (Neural Cleanse's own test); each look is paid for (Bonferroni)
    alone: tuple[str, ...] = ("log_norm",)
    candidate_z: float = 1.0  # log-norm z-score above which a label may be flagged
    # an unflagged model whose p-value lies below alpha times this is inconclusive (1: never): in the decade above
    # alpha clean models and hard backdoors (blended, label-specific, a trigger the reversal found only in part)
    # both land on the zoo (docs/measurements.md, "Detection on the model zoo")
    inconclusive_factor: float = 10.0
    name: str = "evidence"

    def near(self, evidence: Mapping[int, LabelEvidence], labels: Iterable[int] | None = None) -> frozenset[int]:
        judgements, _ = self._judgements(evidence, evidence if labels is None else labels)
        return frozenset(
            label
            for label, judgement in judgements.items()
            if judgement.p_value < max(NEAR_P_VALUE, self.alpha) and self._small(judgement.z_scores)
        )

    def sure(self, evidence: Mapping[int, LabelEvidence]) -> bool:
        judgements, _ = self._judgements(evidence, evidence)
        return all(self._sure(judgement) for judgement in judgements.values() if judgement.flagged)

    def sure_flags(self, evidence: Mapping[int, LabelEvidence]) -> frozenset[int]:
        judgements, _ = self._judgements(evidence, evidence)
        return frozenset(
            label for label, judgement in judgements.items() if judgement.flagged and self._sure(judgement)
        )

    def _sure(self, judgement: LabelJudgement) -> bool:
        return judgement.p_value <= self.alpha**2 / max(NEAR_P_VALUE, self.alpha)

    def judge(
        self,
        evidence: Mapping[int, LabelEvidence],
        pairs: Mapping[tuple[int, int], float] | None = None,
        additive: AdditiveLooks | None = None,
        carried: Mapping[tuple[int, int], Sequence[Carried]] | None = None,
    ) -> DecisionResult:
        """Judge every label, and with `pairs` ((source, target) -> the L1 norm of the trigger reversed from the
        source's images, scanner/pairs.py) every pair: a flagged pair flags its target (with `carried`, where each
        pair's trigger sends the other classes, judged on that too, and a pair flagged by its carry, alone or in the
        cycle look, flags the labels it carries classes to as well); with `additive` (bound -> label -> what its
        additive perturbation did, scanner/additive.py) every label's additive look at every bound: a flagged look
        flags its label."""
        judgements, measures = self._judgements(evidence, evidence)
        flagged = [
            label
            for label in sorted(judgements, key=lambda label: judgements[label].p_value)
            if judgements[label].flagged
        ]
        pair_judgements = judge_pairs(pairs, self.alpha, self.candidate_z, carried) if pairs else []
        flagged += list(dict.fromkeys(label for p in pair_judgements for label in p.flags if label not in flagged))
        additive_judgements = judge_additive(additive, self.alpha, self.candidate_z) if additive else []
        flagged += [label for label in flagged_looks(additive_judgements) if label not in flagged]
        # the model's score: its most suspicious label that could be flagged, pair, or additive look
        score = min(
            [j.p_value for j in judgements.values() if self._small(j.z_scores)]
            + [p.p_value for p in pair_judgements if p.z > self.candidate_z]
            + [a.p_value for a in additive_judgements if a.z_success > self.candidate_z],
            default=1.0,
        )
        return DecisionResult(
            "evidence",
            flagged,
            score,
            "p_value",
            self.alpha,
            judgements,
            measures,
            inconclusive_below=self.alpha * self.inconclusive_factor,
            pairs=pair_judgements,
            additive=additive_judgements,
        )

    def _small(self, z_scores: Mapping[str, float]) -> bool:
        # a planted trigger is first of all a small one (Neural Cleanse's premise): the other measures weigh a
        # label's case, they cannot make an ordinary-sized trigger a finding; with too few labels for a z-score,
        # no label is small
        return z_scores.get(LOG_NORM.name, 0.0) > self.candidate_z

    def _judgements(
        self, evidence: Mapping[int, LabelEvidence], labels: Iterable[int]
    ) -> tuple[dict[int, LabelJudgement], list[str]]:
        """The judgements of `labels`, each against every label in `evidence`; the measures judged."""
        z_scores = measure_z_scores(evidence, self.measures)
        weights = {measure.name: measure.weight for measure in self.measures}
        tests = len(evidence)
        one_test_z = upper_tail_quantile(1 - (1 - self.alpha) ** (1 / max(tests, 1)))
        names = list(z_scores)
        judgements = {}
        for label in labels:
            combined = (
                stouffer([z_scores[name][label] for name in names], [weights[name] for name in names]) if names else 0.0
            )
            looks = [combined, *(z_scores[name][label] for name in self.alone if name in z_scores)]
            p_value = sidak(min(1.0, len(looks) * normal_upper_tail(max(looks))), tests)
            label_z = {name: z_scores[name][label] for name in names}
            flagged = p_value < self.alpha and self._small(label_z)
            judgements[label] = LabelJudgement(
                label,
                label_z,
                combined,
                p_value,
                flagged,
                [name for name in names if z_scores[name][label] > one_test_z] if flagged else [],
            )
        return judgements, names


@functools.cache  # every judgement of a scan asks for the same few
def upper_tail_quantile(p_value: float) -> float:
    """z with P(Z > z) = p_value, by bisection on the normal tail (no scipy)."""
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        if normal_upper_tail(middle) > p_value:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def make_decision(
    name: str, mad_threshold: float, alpha: float, inconclusive_factor: float
) -> PaperDecision | EvidenceDecision:
    if name == "paper":
        return PaperDecision(mad_threshold)
    if name == "evidence":
        return EvidenceDecision(alpha, inconclusive_factor=inconclusive_factor)
    raise ValueError(f"unknown decision {name!r}")
