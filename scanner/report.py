"""The scan report: one dataclass, written as report.json plus trigger images a person can look at."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cleanse_base.errors import ConfigError, InputError
from cleanse_base.exit_codes import CLEAN, INCONCLUSIVE, INFECTED
from cleanse_base.files import (
    atomic_output,
    check_writable_folder,
    json_safe,
    real_folder,
    refuse_overlap,
    write_json_atomic,
)
from cleanse_base.plain import from_plain
from cleanse_base.text import printable
from converters.contract import ModelContract
from scanner.additive import AdditiveProbe
from scanner.config import ScanConfig
from scanner.decision.additive import AdditiveJudgement, flagged_looks
from scanner.decision.pairs import PairJudgement
from scanner.decision.rules import DecisionResult, LabelJudgement, paper_result
from scanner.mad import MIN_LABELS, MadResult
from scanner.pairs import PairTrigger
from scanner.retry import CHOSEN_AS, LIKELIEST, SMALLEST, Retry
from scanner.reverse import LabelTrigger
from scanner.second_opinion import SecondOpinion

SCHEMA_VERSION = "1.27"  # 1.1: top-level "precision"; 1.2: verdict "inconclusive", "verdict_reason", config
# reverse.mini_batch (was batch_size) and contract.fixed_batch (was batch_size); 1.3: "schedule", and per label
# "final" and "estimated_norm"; 1.4: "decision" (rule, flagged labels, model score, per-label judgements), config
# "decision" and "alpha", per label "evidence"; 1.5: config reverse.starts (per label "steps" count every start)
# 1.6: config reverse.start_trial_steps; 1.7: config inconclusive_factor, decision "inconclusive_below" and
# "inconclusive" (the evidence rule's close calls); 1.8: config schedule.screen_starts (older reports: 0, every start)
# 1.9: config "pairs", "pair_stage" (pairs reversed, images, seconds) and decision "pairs" (the evidence rule's
# source-specific look; older reports: none); 1.10: decision "close_flag" (flagged, but within the close band);
# 1.11: config reverse.initial_mask_max (older reports: 1, as they ran); 1.12: reverse.initial_mask_max may be a list,
# one range per start; 1.13: config "additive", "additive_stage" (bound, images, seconds) and decision "additive" (the
# evidence rule's additive look; older reports: none); 1.14: config additive.rungs, "additive_stage.epsilons" and per
# look "epsilon" (every label judged at the settled bound and the next rung up; older reports: the settled bound
# alone, rungs 1); 1.15: config additive.rung_steps (older reports: 0, every rung from zero, as they ran); 1.16: a
# bound the look climbs to from one every label was probed at goes on from there for additive.rung_steps steps too
# (in older reports it started from zero; the config reads the same); 1.17: config schedule.look_share, a screened
# scan's share of the additive look's steps (older reports: 1, the whole look, as they ran), and "additive_stage"
# "steps" and "rung_steps" (what ran); 1.18: config "retry" and "retry_stage" (the labels with the smallest triggers
# reversed again: each round's norm, the round kept, images, seconds; older reports: none, retry.rounds 0); 1.19:
# decision "close_labels" (flagged labels whose own flag lies within the close band; derived when read), config
# retry.likeliest and per retry "chosen_as" ("smallest" or "likeliest"; older reports: likeliest 0, every retry
# "smallest", as they ran); 1.20: config schedule.mode may be "auto" (the schedule that ran is "schedule.mode") and
# schedule.screen_from (older reports: the default, unused by their `full` or `screened`); 1.21: config
# schedule.check_labels and "schedule.check_labels" (labels drawn at random to check a flag short of sure; older
# reports: 0, none drawn, as they ran); 1.22: config pairs.carry_images and per pair "carried_to" and "carry_p_value"
# (where the pair's trigger carries the other classes; a pair's p-value the smaller of its norm's and its carry's;
# older reports: not measured, the norm's alone), and "carried" (each other class's label and share; "carried_to" is
# derived from it); 1.23: "retry_stage.sure_flags" (labels the retry chose but left as they were, their flag sure
# already; older reports: none, every chosen label retried); 1.24: per label evidence "faded_success" (the trigger's
# success with its mask at half strength; older reports: not measured, read as null); 1.25: per pair "carry_flagged"
# (flagged by its carry, alone or in the cycle look, so the labels it carries classes to are flagged too; older
# reports: false, as judged); 1.26: config schedule.screen_mini_batch (older reports: 0, the reversal's mini-batch,
# as they ran); 1.27: config second_opinions and "second_opinion" (a close result's runs from more seeds and the
# verdict more than half of them reach; older reports: null, none run, second_opinions 0)
TRIGGER_FOLDER = "triggers"
# What a report folder holds besides triggers/ (html_report writes the second).
REPORT_FILES = ("report.json", "report.html")


@dataclass
class LabelResult:
    label: int
    l1_norm: float
    attack_success: float
    found: bool  # a mask reached the attack success threshold
    steps: int
    seconds: float
    anomaly_index: float
    flagged: bool
    final: bool = True  # ran to its own early stop; False: the scheduler stopped it at l1_norm (an upper bound)
    estimated_norm: float | None = None  # the norm the decision used: l1_norm when final, else the projection
    evidence: dict[str, float | None] = field(default_factory=dict)  # scanner.decision.evidence, measured


@dataclass
class ScalingChoice:
    name: str  # as Scaling.describe()
    chosen_by: str  # "user", "accuracy" or "default"
    accuracy: float | None  # clean accuracy under this scaling (labelled data only)
    trials: dict[str, float] = field(default_factory=dict)  # accuracy of each candidate tried


@dataclass
class PairStage:
    """What the source-specific stage (scanner/pairs.py) cost."""

    pairs: int = 0  # (source, target) pairs reversed
    images: int = 0  # images pushed forward and backward
    seconds: float = 0.0
    needed: int = 0  # the pairs a whole table takes (none reversed when more than pairs.max_pairs; 0: not asked)

    def too_large(self, max_pairs: int) -> bool:
        """Whether no pair was reversed because the whole table exceeds `max_pairs` (not because the scan's
        labels left too few targets to judge)."""
        return self.pairs == 0 and self.needed > max_pairs


@dataclass
class AdditiveStage:
    """What the additive look (scanner/additive.py) cost, and the bound its perturbations were judged at."""

    labels: int = 0  # labels probed (0: the look did not run)
    epsilon: float = 0.0  # the settled bound on every pixel's change, 0-255 scale
    images: int = 0  # images pushed forward and backward over every bound tried
    seconds: float = 0.0
    epsilons: list[float] = field(default_factory=list)  # every bound judged: the settled one, the next rung up
    # steps each label ran from zero at the settled bound (the schedule's share of additive.steps), and going on at
    # each rung above it (additive.rung_steps; 0: each rung from zero); 0 in reports before schema 1.17
    steps: int = 0
    rung_steps: int = 0

    def bounds(self) -> list[float]:
        """Every bound judged (reports before schema 1.14 judged the settled one alone)."""
        return self.epsilons or ([self.epsilon] if self.labels else [])

    def budget_text(self) -> str:
        """The steps each label ran, as a clause (empty for reports before schema 1.17, which do not say)."""
        if not self.steps:
            return ""
        above = ", ".join(f"{bound:g}" for bound in self.bounds()[1:])
        if above:  # rung_steps 0: each rung from zero for as many steps
            above = (
                f", then {self.rung_steps} more at {above}" if self.rung_steps else f", as many from zero at {above}"
            )
        return f"{self.steps} steps a label{above}"

    def cost_text(self) -> str:
        """What the look ran and cost, as the text and HTML reports put it in parentheses."""
        cost = f"{self.images:,} images, {self.seconds:.1f} s"
        return f"{self.budget_text()}; {cost}" if self.steps else cost


@dataclass
class RetryStage:
    """What the retry (scanner/retry.py) found and cost."""

    rounds: int = 0  # fresh runs of each retried label (0: the retry did not run)
    # one per label retried: the smallest triggers, smallest first, then the likeliest targets (Retry.chosen_as)
    retries: list[Retry] = field(default_factory=list)
    images: int = 0  # images pushed forward and backward over every round
    seconds: float = 0.0
    # chosen, but flagged surely already (Decision.sure_flags): a smaller trigger could only flag them more surely
    sure_flags: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a report folder is untrusted: every round a norm, the kept round one of them
        for retry in self.retries:
            if retry.chosen_as not in CHOSEN_AS:
                raise ConfigError(f"retry_stage: label {retry.label} chosen_as must be one of {CHOSEN_AS}")
            kept_in_range = retry.kept_round is None or 1 <= retry.kept_round <= self.rounds
            if len(retry.norms) != self.rounds or not kept_in_range:
                raise ConfigError(
                    f"retry_stage: label {retry.label} has {len(retry.norms)} round norm(s) and kept round "
                    f"{retry.kept_round} for {self.rounds} round(s)"
                )

    def text(self) -> str:
        """What the retry did, as one sentence (empty where it did not run)."""
        if not self.rounds:
            return ""
        replaced = [
            f"label {r.label} L1 {r.first_norm:.1f} -> {r.norms[r.kept_round - 1]:.1f}"
            for r in self.retries
            if r.kept_round is not None
        ]
        found = "; ".join(replaced) if replaced else "no smaller trigger found"
        times = "time" if self.rounds == 1 else "times"
        cost = f"{self.images:,} images, {self.seconds:.1f} s"
        retried = f"{self.subject()} reversed {self.rounds} more {times}: {found} ({cost})" if self.retries else ""
        return "; ".join(part for part in (retried, self.sure_text()) if part)

    def sure_text(self) -> str:
        """The labels left as they were because their flag is sure, as a clause (empty where none)."""
        if not self.sure_flags:
            return ""
        labels = ", ".join(map(str, self.sure_flags))
        return f"label{'s' if len(self.sure_flags) > 1 else ''} {labels} flagged surely already, not retried"

    def subject(self) -> str:
        """Which labels were retried, as a noun phrase: "the smallest trigger (label 12) and the likeliest target
        (label 25)"."""
        nouns = {
            SMALLEST: ("smallest trigger", "smallest triggers"),
            LIKELIEST: ("likeliest target", "likeliest targets"),
        }
        phrases = []
        for why, (one, many) in nouns.items():
            labels = [str(retry.label) for retry in self.retries if retry.chosen_as == why]
            if len(labels) == 1:
                phrases.append(f"the {one} (label {labels[0]})")
            elif labels:
                phrases.append(f"the {len(labels)} {many} (labels {', '.join(labels)})")
        return " and ".join(phrases)


@dataclass
class ScanReport:
    tool_version: str
    model_path: str
    model_sha256: str
    contract: ModelContract
    conversion: dict[str, Any]
    data: dict[str, Any]
    scaling: ScalingChoice
    config: ScanConfig
    labels: list[LabelResult]
    mad: MadResult
    device: str
    threads: int
    precision: str  # what the model ran in while reversing: float32 or bfloat16
    seconds_total: float
    started_at: str
    schedule: dict[str, Any] = field(default_factory=dict)  # scanner.schedule.ScheduleSummary.to_dict()
    decision: DecisionResult | None = None  # None: a report written before schema 1.4 (the paper rule, `mad`)
    triggers: list[LabelTrigger] = field(default_factory=list, repr=False)  # not in the JSON
    pair_stage: PairStage = field(default_factory=PairStage)
    # the flagged pairs' triggers and the most suspicious pair's (run_scan.shown_pairs); not in the JSON
    pair_triggers: list[PairTrigger] = field(default_factory=list, repr=False)
    # the perturbations of the looks decision.additive.kept_looks names; not in the JSON
    additive_triggers: list[AdditiveProbe] = field(default_factory=list, repr=False)
    additive_stage: AdditiveStage = field(default_factory=AdditiveStage)
    retry_stage: RetryStage = field(default_factory=RetryStage)
    # a close result's runs from more seeds (scanner/second_opinion.py); None where none ran. The rest of the report
    # is the run it shows
    second_opinion: SecondOpinion | None = None

    @property
    def disagreed(self) -> bool:
        """A second opinion ran and no verdict holds a majority of the runs."""
        return self.second_opinion is not None and not self.second_opinion.agreed

    @property
    def verdict(self) -> str:
        """clean, infected, or inconclusive where the statistics cannot decide (see verdict_reason); after a second
        opinion, the verdict more than half of the runs reach (the run shown holds it), else inconclusive."""
        if self.disagreed:
            return INCONCLUSIVE
        return decide_verdict(self.labels, self.mad, self.judged, self.config.reverse.attack_success_threshold)[0]

    @property
    def verdict_reason(self) -> str:
        if self.second_opinion is not None and self.disagreed:
            return self.second_opinion.text()
        verdict, reason = decide_verdict(
            self.labels, self.mad, self.judged, self.config.reverse.attack_success_threshold
        )
        if self.second_opinion is None:
            return reason
        if verdict == INFECTED:  # the runs settled the close flag: no advice to rerun
            reason = flagged_text(self.judged)
        return f"{reason}; {self.second_opinion.text()}"

    @property
    def close_flag(self) -> bool:
        """Infected, but only just: the decision's flag lies in the close band (DecisionResult.close_flag)."""
        return self.verdict == INFECTED and self.judged.close_flag

    @property
    def close_labels(self) -> list[int]:
        """Infected, some labels only just: the flagged labels in the close band (DecisionResult.close_labels)."""
        return self.judged.close_labels if self.verdict == INFECTED else []

    @property
    def judged(self) -> DecisionResult:
        """The decision's outcome (for a report from before schema 1.4: the paper rule's, from `mad`)."""
        if self.decision is not None:
            return self.decision
        return paper_result(self.mad)

    @property
    def score(self) -> float:
        """The model's score: the decision's, or after a second opinion the median of the runs' (evidence rule: a
        p-value)."""
        return self.judged.score if self.second_opinion is None else self.second_opinion.score

    @property
    def flagged(self) -> list[int]:
        """The flagged labels of the verdict: none where a second opinion's runs disagree."""
        return [] if self.disagreed else list(self.judged.flagged)

    def to_json_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "schema_version": SCHEMA_VERSION,
                "tool": {"name": "cleanse", "version": self.tool_version},
                "model": {"path": self.model_path, "sha256": self.model_sha256},
                "contract": dataclasses.asdict(self.contract),
                "conversion": self.conversion,
                "data": self.data,
                "scaling": dataclasses.asdict(self.scaling),
                "config": self.config.to_dict(),
                "labels": [dataclasses.asdict(label) for label in self.labels],
                "median": self.mad.median,
                "mad": self.mad.mad,
                "anomaly_index": self.mad.anomaly_index,
                "mad_threshold": self.mad.threshold,
                "flagged_labels": self.flagged,
                "decision": self.judged.to_dict(),
                "verdict": self.verdict,
                "verdict_reason": self.verdict_reason,
                "device": self.device,
                "threads": self.threads,
                "precision": self.precision,
                "schedule": self.schedule,
                "pair_stage": dataclasses.asdict(self.pair_stage),
                "additive_stage": dataclasses.asdict(self.additive_stage),
                "retry_stage": dataclasses.asdict(self.retry_stage),
                "second_opinion": self.second_opinion.to_dict() if self.second_opinion else None,
                "seconds_total": self.seconds_total,
                "started_at": self.started_at,
            }
        )

    @classmethod
    def from_json(cls, payload: Any, where: str = "report.json") -> ScanReport:
        """The report `to_json_dict` wrote, every value's type checked (a report folder is untrusted input):
        a one-line ConfigError naming the first bad field. The trigger arrays stay on disk."""
        document = from_plain(_ReportDocument, _as_they_ran(payload), where, ConfigError, allow_unknown=True)
        labels = [_label_from_json(entry, f"{where}.labels[{i}]") for i, entry in enumerate(document.labels)]
        flagged = document.flagged_labels
        opinion = (
            from_plain(SecondOpinion, document.second_opinion, f"{where}.second_opinion", ConfigError, True)
            if document.second_opinion is not None
            else None
        )
        if opinion is not None and opinion.agreed and opinion.flagged != flagged:
            raise ConfigError(f"{where}: flagged_labels {flagged[:10]} differ from the second opinion's verdict")
        classes = document.contract.num_classes
        if len(set(flagged)) != len(flagged) or not all(0 <= label < classes for label in flagged):
            raise ConfigError(f"{where}: flagged_labels must be distinct labels in [0, {classes}), not {flagged[:10]}")
        mad = MadResult(
            median=document.median,
            mad=document.mad,
            anomaly_indices={label.label: label.anomaly_index for label in labels},
            anomaly_index=math.inf if document.anomaly_index is None else document.anomaly_index,
            flagged=flagged,
            threshold=document.mad_threshold,
        )
        return cls(
            tool_version=document.tool.version,
            model_path=document.model.path,
            model_sha256=document.model.sha256,
            contract=document.contract,
            conversion=document.conversion,
            data=document.data,
            scaling=document.scaling,
            config=document.config,
            labels=labels,
            mad=mad,
            device=document.device,
            threads=document.threads,
            precision=document.precision,
            seconds_total=document.seconds_total,
            started_at=document.started_at,
            schedule=document.schedule,
            pair_stage=document.pair_stage,
            additive_stage=document.additive_stage,
            retry_stage=document.retry_stage,
            decision=_decision_from_json(
                document.decision, flagged, f"{where}.decision", document.additive_stage.epsilon, opinion
            )
            if document.decision
            else None,
            second_opinion=opinion,
        )


def decide_verdict(
    labels: list[LabelResult], mad: MadResult, decision: DecisionResult, success_threshold: float
) -> tuple[str, str]:
    """(verdict, reason). Inconclusive, never clean, where the statistics cannot decide: too few labels for MAD
    to flag one, no trigger that reached the attack success threshold (norms of failed masks say nothing), or
    every norm the same."""
    found = sum(result.found for result in labels)
    if len(labels) < MIN_LABELS:
        return INCONCLUSIVE, f"{len(labels)} label(s) scanned: MAD needs at least {MIN_LABELS} to flag one"
    if not found:
        return INCONCLUSIVE, f"no label's trigger reached the attack success threshold ({success_threshold:g})"
    if decision.flagged:
        reason = flagged_text(decision)
        close = close_text(decision)
        return INFECTED, reason + (f"; {close}" if close else "")
    if decision.inconclusive:
        return INCONCLUSIVE, close_call_text(decision)
    if found < MIN_LABELS:
        return INCONCLUSIVE, (
            f"only {found} label(s) reached the attack success threshold ({success_threshold:g}): MAD needs at least "
            f"{MIN_LABELS} to compare"
        )
    if mad.all_equal:
        return INCONCLUSIVE, "every label's trigger has the same L1 norm: MAD is 0 and cannot tell them apart"
    return CLEAN, f"no label flagged: {rule_text(decision)}"


def flagged_text(decision: DecisionResult) -> str:
    return f"label(s) {', '.join(map(str, decision.flagged))} flagged: {rule_text(decision)}"


def close_call_text(decision: DecisionResult) -> str:
    pair, label = decision.suspect_pair, decision.suspect
    if pair is not None:
        suspect = f" (label {pair.target}, from class {pair.source}'s images)"
    else:
        suspect = "" if label is None else f" (label {label})"
    return (
        f"a close call: the model's p-value {decision.score:.3g}{suspect} lies between the flag threshold "
        f"{decision.threshold:g} and {decision.inconclusive_below:g}; rerun with more --starts or another --seed, or "
        "look at that label's trigger"
    )


def close_flag_text(decision: DecisionResult) -> str:
    return (
        f"a close call: the model's p-value {decision.score:.3g} lies between {decision.close_flag_above:g} and the "
        f"flag threshold {decision.threshold:g}, where another seed may not flag it; rerun with more --starts or "
        "another --seed before acting on it"
    )


def close_labels_text(decision: DecisionResult) -> str:
    labels = decision.close_labels
    p_values = ", ".join(f"{decision.flag_p_value(label):.3g}" for label in labels)
    return (
        f"label(s) {', '.join(map(str, labels))} flagged only just (p-value {p_values}, between "
        f"{decision.close_flag_above:g} and the flag threshold {decision.threshold:g}): another seed may not flag "
        f"{'it' if len(labels) == 1 else 'them'}"
    )


def close_text(decision: DecisionResult) -> str | None:
    """What a flagged scan's report says of a close finding: the whole flag (close_flag), else the flagged labels
    that are close beside others that are not; None where nothing flagged is close."""
    if decision.close_flag:
        return close_flag_text(decision)
    return close_labels_text(decision) if decision.close_labels else None


def rule_text(decision: DecisionResult) -> str:
    if decision.score_kind == "p_value":
        return f"evidence rule, model p-value {decision.score:.3g} (flagged below {decision.threshold:g})"
    return f"paper rule, anomaly index {decision.score:.2f} (flagged above {decision.threshold:g})"


@dataclass(frozen=True)
class _ToolJson:
    name: str
    version: str


@dataclass(frozen=True)
class _ModelFileJson:
    path: str
    sha256: str


@dataclass(frozen=True)
class _ReportDocument:
    """report.json's layout, for type-checked reading."""

    tool: _ToolJson
    model: _ModelFileJson
    contract: ModelContract
    conversion: dict[str, Any]
    data: dict[str, Any]
    scaling: ScalingChoice
    config: ScanConfig
    labels: list[dict[str, Any]]  # LabelResult, with null for an infinite anomaly index
    median: float
    mad: float
    anomaly_index: float | None  # null: infinite
    mad_threshold: float
    flagged_labels: list[int]
    device: str
    threads: int
    precision: str
    seconds_total: float
    started_at: str
    schedule: dict[str, Any] = field(default_factory=dict)  # absent before schema 1.3
    decision: dict[str, Any] = field(default_factory=dict)  # absent before schema 1.4
    pair_stage: PairStage = field(default_factory=PairStage)  # absent before schema 1.9
    additive_stage: AdditiveStage = field(default_factory=AdditiveStage)  # absent before schema 1.13
    retry_stage: RetryStage = field(default_factory=RetryStage)  # absent before schema 1.18
    second_opinion: dict[str, Any] | None = None  # absent before schema 1.27


@dataclass(frozen=True)
class _DecisionJson:
    rule: str
    flagged: list[int]
    score: float
    score_kind: str
    threshold: float
    measures: list[str] = field(default_factory=list)
    labels: list[LabelJudgement] = field(default_factory=list)
    inconclusive_below: float | None = None  # absent before schema 1.7
    pairs: list[dict[str, Any]] = field(default_factory=list)  # absent before schema 1.9
    additive: list[AdditiveJudgement] = field(default_factory=list)  # absent before schema 1.13


def _as_they_ran(payload: Any) -> Any:
    """Settings older reports leave out, as those scans ran: before schema 1.3 every label ran `full`, before 1.14
    the additive look judged one bound, before 1.15 every rung started from zero, before 1.17 a screened scan ran the
    whole look, before 1.18 no label was retried, before 1.19 no likeliest target, before 1.21 no check label, before
    1.27 no second opinion; before 1.8 a screen ran every start."""
    config = payload.get("config") if isinstance(payload, dict) else None
    if not isinstance(config, dict):
        return payload
    ran: dict[str, Any] = {}
    additive, schedule = config.get("additive"), config.get("schedule")
    if isinstance(additive, dict):
        left_out = {"rungs": 1, "rung_steps": 0} if "rungs" not in additive else {"rung_steps": 0}
        ran["additive"] = {**left_out, **additive}
    if schedule is None:  # before schema 1.3 every label ran to its end
        ran["schedule"] = {"mode": "full"}
    elif isinstance(schedule, dict):
        ran["schedule"] = {"mode": "full", "look_share": 1.0, "screen_starts": 0, "check_labels": 0, **schedule}
    if "second_opinions" not in config:  # before schema 1.27 a close result stood
        ran["second_opinions"] = 0
    retry = config.get("retry")
    if retry is None:
        ran["retry"] = {"rounds": 0, "likeliest": 0}
    elif isinstance(retry, dict) and "likeliest" not in retry:
        ran["retry"] = {**retry, "likeliest": 0}
    return {**payload, "config": {**config, **ran}}


def _decision_from_json(
    entry: dict[str, Any],
    flagged: list[int],
    where: str,
    settled_epsilon: float = 0.0,
    opinion: SecondOpinion | None = None,
) -> DecisionResult:
    """The decision of the run the report shows; additive looks of reports before schema 1.14 were all judged at the
    settled bound. Its flagged labels are the report's, but where a second opinion's runs disagreed (none flagged)."""
    document = from_plain(_DecisionJson, entry, where, ConfigError, allow_unknown=True)
    if opinion is not None and not opinion.agreed:
        if flagged:
            raise ConfigError(f"{where}: flagged_labels must be empty where the second opinion's runs disagree")
        flagged = document.flagged
    if document.flagged != flagged:
        raise ConfigError(f"{where}.flagged {document.flagged[:10]} differs from flagged_labels {flagged[:10]}")
    judgements = {item.label: item for item in document.labels}
    return DecisionResult(
        document.rule,
        flagged,
        document.score,
        document.score_kind,
        document.threshold,
        judgements,
        document.measures,
        document.inconclusive_below,
        [_pair_from_json(item, f"{where}.pairs") for item in document.pairs],
        [item if item.epsilon else dataclasses.replace(item, epsilon=settled_epsilon) for item in document.additive],
    )


def _pair_from_json(entry: dict[str, Any], where: str) -> PairJudgement:
    renamed = {("norm" if key == "l1_norm" else key): value for key, value in entry.items() if key != "carried_to"}
    return from_plain(PairJudgement, renamed, where, ConfigError)


def _label_from_json(entry: dict[str, Any], where: str) -> LabelResult:
    infinite = entry.get("anomaly_index", 0.0) is None  # how json_safe writes an infinite index
    result = from_plain(LabelResult, {**entry, "anomaly_index": 0.0} if infinite else entry, where, ConfigError)
    return dataclasses.replace(result, anomaly_index=math.inf) if infinite else result


# ---------------------------------------------------------------- trigger images and arrays


def trigger_paths(folder: Path, label: int, source: int | None = None) -> dict[str, Path]:
    """A label's trigger files, or with `source` those of the pair source -> label."""
    name = f"label_{label:03d}" if source is None else f"pair_{source:03d}_to_{label:03d}"
    stem = folder / TRIGGER_FOLDER / name
    return {kind: Path(f"{stem}_{kind}") for kind in ("mask", "pattern", "fusion")}


def _to_image(array_hwc: np.ndarray):
    from PIL import Image

    pixels = np.clip(np.rint(array_hwc), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _save_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file renamed over `path`: a symlink or hard link planted at `path` is
    replaced, never written through."""
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as file:
            write(file)


def write_trigger(folder: Path, trigger: LabelTrigger | PairTrigger) -> None:
    """Mask, pattern and fusion (mask * pattern) PNGs as the reference wrote them, and .npy arrays:
    mask (H, W) in [0, 1] and pattern (H, W, C) in raw pixels, the format `--trigger` reads."""
    if isinstance(trigger, PairTrigger):
        paths = trigger_paths(folder, trigger.target, trigger.source)
    else:
        paths = trigger_paths(folder, trigger.label)
    real_folder(paths["mask"].parent)
    pattern_hwc = trigger.pattern.transpose(1, 2, 0)
    mask_hw1 = trigger.mask[..., None]
    images = {"mask": mask_hw1 * 255, "pattern": pattern_hwc, "fusion": mask_hw1 * pattern_hwc}
    for kind, pixels in images.items():
        _save_atomic(Path(f"{paths[kind]}.png"), lambda file, pixels=pixels: _to_image(pixels).save(file, "PNG"))
    arrays = {"mask": trigger.mask.astype(np.float32), "pattern": pattern_hwc.astype(np.float32)}
    for kind, array in arrays.items():
        _save_atomic(Path(f"{paths[kind]}.npy"), lambda file, array=array: np.save(file, array))


def additive_path(folder: Path, label: int) -> Path:
    """The stem of a label's additive perturbation files (.npy: H x W x C raw-pixel offsets; .png to look at)."""
    return folder / TRIGGER_FOLDER / f"label_{label:03d}_additive"


def write_additive(folder: Path, probe: AdditiveProbe) -> None:
    """A label's additive perturbation as .npy (H, W, C) raw-pixel offsets, the format `cleanse mitigate` reads, and
    as a PNG where mid-grey is no change and black and white the bound either way."""
    if probe.delta is None:
        return
    stem = additive_path(folder, probe.label)
    real_folder(stem.parent)
    delta_hwc = probe.delta.transpose(1, 2, 0).astype(np.float32)
    shown = 127.5 + delta_hwc * (127.5 / probe.epsilon)
    _save_atomic(Path(f"{stem}.png"), lambda file: _to_image(shown).save(file, "PNG"))
    _save_atomic(Path(f"{stem}.npy"), lambda file: np.save(file, delta_hwc))


def read_trigger(folder: str | Path, label: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W), pattern (H, W, C)) of a label from a report folder."""
    paths = trigger_paths(Path(folder), label)
    try:
        return np.load(f"{paths['mask']}.npy"), np.load(f"{paths['pattern']}.npy")
    except FileNotFoundError:
        raise InputError(f"{folder}: no reversed trigger for label {label}") from None


def check_report_folder(folder: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """ConfigError unless `folder` can take a report without writing over or into any of `inputs` (model, data,
    config, trigger files) and without following a symlink planted in it. The CLI calls it before a scan, so a
    bad --out fails in a second; write_report calls it again."""
    folder = Path(folder)
    check_writable_folder(folder)
    triggers = folder / TRIGGER_FOLDER
    if triggers.is_symlink() or (triggers.exists() and not triggers.is_dir()):
        raise ConfigError(f"{triggers}: is a symlink or not a folder; refusing to write trigger files through it")
    refuse_overlap(inputs, [folder, *(folder / name for name in REPORT_FILES)], [triggers])


def write_report(report: ScanReport, folder: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """report.json and the trigger files into `folder`; returns the JSON path. Every file is written to a
    temporary name and renamed; nothing is written over the scanned model, its data or any of `inputs`."""
    folder = Path(folder)
    check_report_folder(folder, [report.model_path, report.data.get("source"), *inputs])
    real_folder(folder)
    for trigger in [*report.triggers, *report.pair_triggers]:
        write_trigger(folder, trigger)
    for probe in report.additive_triggers:
        write_additive(folder, probe)
    path = folder / REPORT_FILES[0]
    write_json_atomic(path, report.to_json_dict())
    return path


# ---------------------------------------------------------------- text for people


def decision_norm(result: LabelResult) -> float:
    """The norm the decision used: the label's own, or its projection when the scheduler stopped it early."""
    return result.l1_norm if result.estimated_norm is None else result.estimated_norm


def format_label_table(report: ScanReport) -> str:
    judgements = report.judged.judgements
    evidence_column = f"  {'p-value':>8}" if judgements else ""
    rows = [
        f"{'label':>5}  {'L1 norm':>9}  {'success':>7}  {'anomaly':>7}{evidence_column}  {'steps':>5}  {'seconds':>7}"
    ]
    for result in sorted(report.labels, key=decision_norm):
        index = "inf" if math.isinf(result.anomaly_index) else f"{result.anomaly_index:.2f}"
        if judgements:
            index += f"  {judgements[result.label].p_value:>8.2g}"
        mark = "  <- flagged" if result.flagged else ""
        if not result.found:
            mark += "  (no trigger reached the success threshold)"
        if not result.final:
            mark += f"  stopped early, projected {decision_norm(result):.2f}"
        rows.append(
            f"{result.label:>5}  {result.l1_norm:>9.2f}  {result.attack_success:>7.3f}  {index:>7}  "
            f"{result.steps:>5}  {result.seconds:>7.1f}{mark}"
        )
    return "\n".join(rows)


def schedule_text(report: ScanReport) -> str:
    schedule = report.schedule
    if not schedule:
        return ""
    stopped = f", {schedule['stopped_labels']} stopped early" if schedule.get("stopped_labels") else ""
    reverse = report.config.reverse
    trial = f" (the best after {reverse.start_trial_steps} steps goes on)" if reverse.start_trial_steps else ""
    per_label = f", {reverse.starts} starts per label{trial}" if reverse.starts > 1 else ""
    screen_starts = report.config.schedule.screen_starts
    if per_label and schedule.get("stopped_labels") and 0 < screen_starts < reverse.starts:
        per_label += f" ({screen_starts} for the labels stopped early)"
    chosen = report.config.schedule
    auto = f" (auto: {len(report.labels)} labels, screened from {chosen.screen_from})" if chosen.mode == "auto" else ""
    screen = chosen.screen_mini_batch
    on_smaller = f", screened on mini-batches of {screen}" if schedule["mode"] == "screened" and screen else ""
    return f", {schedule['mode']} schedule{auto}{per_label}{on_smaller}: {schedule['images']:,} images{stopped}"


def findings_text(flagged: list[str], most_suspicious: str, nothing: str) -> str:
    """A look's findings in a summary line: its flagged items, else its most suspicious one ("": none), else
    `nothing`."""
    if flagged:
        return "flagged " + "; ".join(flagged)
    return f"most suspicious {most_suspicious}" if most_suspicious else nothing


def pair_text(pair: PairJudgement) -> str:
    carries = f", carries classes to {', '.join(map(str, pair.carried_to))}" if pair.carried_to else ""
    carries += " (flagged too)" if pair.carry_flagged else ""
    return f"{pair.source} -> {pair.target}: L1 {pair.norm:.2f}, z {pair.z:.2f}{carries}, p {pair.p_value:.3g}"


def pairs_lines(report: ScanReport) -> list[str]:
    """The source-specific look: what it cost, its flagged pairs or its most suspicious one."""
    stage, pairs = report.pair_stage, report.judged.pairs
    if stage.too_large(report.config.pairs.max_pairs):
        return [
            f"pairs      none reversed: the whole table takes {stage.needed:,} source -> target pairs, more than "
            f"--pairs {report.config.pairs.max_pairs}"
        ]
    if not stage.pairs:
        return []
    top = pair_text(pairs[0]) if pairs else ""
    shown = findings_text([pair_text(p) for p in pairs if p.flagged], top, "too few to judge")
    if any(p.carry_flagged for p in pairs):
        shown += "; pairs carrying each class to a label of its own (all-to-all), alone or together, flag those labels"
    return [
        f"pairs      {stage.pairs} source -> target pairs reversed from one class's images "
        f"({stage.images:,} images, {stage.seconds:.1f} s); {shown}"
    ]


def additive_text(item: AdditiveJudgement) -> str:
    return f"label {item.label} at {item.epsilon:g}: success {item.success:.2f}, z {item.z:.2f}, p {item.p_value:.3g}"


def additive_lines(report: ScanReport) -> list[str]:
    """The additive look: its bounds and cost, its flagged labels (each at its most suspicious bound) or its most
    suspicious one."""
    stage, judged = report.additive_stage, report.judged.additive
    if not stage.labels:
        return []
    top = additive_text(judged[0]) if judged else ""
    flagged = flagged_looks(judged).values()
    shown = findings_text([additive_text(item) for item in flagged], top, "too few labels to judge")
    bounds = " and ".join(f"{epsilon:g}" for epsilon in stage.bounds())
    return [
        f"additive   a universal perturbation of at most {bounds} per pixel towards each of {stage.labels} "
        f"labels ({stage.cost_text()}); {shown}"
    ]


def retry_lines(report: ScanReport) -> list[str]:
    """The retry: what it reversed again and what it left as sure, where it did either."""
    text = report.retry_stage.text()
    return [f"retry      {text}"] if text else []


def opinion_lines(report: ScanReport) -> list[str]:
    opinion = report.second_opinion
    if opinion is None:
        return []
    shown = f"; this report shows seed {opinion.shown_seed}'s run" if len(opinion.runs) > 1 else ""
    return [f"opinions   the first result was close, {opinion.text()}{shown}"]


def format_summary(report: ScanReport) -> str:
    scaling = report.scaling
    # a second opinion settled a close flag (its line says how)
    close = close_text(report.judged) if report.verdict == INFECTED and report.second_opinion is None else None
    accuracy = f", clean accuracy {scaling.accuracy:.3f}" if scaling.accuracy is not None else ""
    lines = [
        f"model      {printable(report.model_path)}",
        f"contract   {report.contract.layout} {report.contract.channels}x{report.contract.height}x"
        f"{report.contract.width}, {report.contract.num_classes} classes, {report.contract.output_kind}"
        + (f", fixed batch {report.contract.batch_size}" if report.contract.batch_size else ""),
        f"scaling    {scaling.name} ({scaling.chosen_by}{accuracy})",
        f"data       {report.data['images']} images from {printable(report.data['source'])}",
        "",
        format_label_table(report),
        "",
        f"median L1 {report.mad.median:.2f}, MAD {report.mad.mad:.2f}, anomaly index {report.mad.anomaly_index:.2f} "
        f"(threshold {report.mad.threshold:g})",
        *retry_lines(report),
        f"decision   {rule_text(report.judged)}",
        *pairs_lines(report),
        *additive_lines(report),
        *opinion_lines(report),
        f"verdict    {report.verdict.upper()}"
        + (f": flagged label(s) {', '.join(map(str, report.flagged))}" if report.verdict == INFECTED else "")
        + (f" ({report.verdict_reason})" if report.verdict == INCONCLUSIVE else "")
        + (f" ({close})" if close else ""),
        f"time       {report.seconds_total:.1f} s on {report.device} ({report.precision})" + schedule_text(report),
    ]
    return "\n".join(lines)
