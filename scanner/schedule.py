"""The label scheduler: how far to reverse each label, so that the scan's work goes where the verdict can change.

`full` runs every label to its own early stop, as Neural Cleanse does, and measures each final trigger's
evidence. `screened`:

1. Screen: every label runs `screen_steps` steps (a label that has not yet reached the success threshold runs
   on, `screen_steps` at a time, until it does) from its first `screen_starts` starts; a label that runs on
   opens the rest (ReverseSession.open_starts). A label's best norm so far is an upper bound on its final norm.
   Every label's evidence is measured on its trigger as the screen left it (forward passes only).
2. Calibrate: the `calibration_labels` labels whose bounds lie nearest the median run to their early stop. How
   their norm shrank after the screen (final / bound at that step) and how their other measurements moved
   (final - screened) say where a stopped label would have ended.
3. Settle: every unfinished label is projected (its bound times the calibration labels' median shrink ratio,
   its other measurements shifted by their median move), and the decision judges the finished and projected
   labels together. Each unfinished label is then tried alone at the fastest shrink a calibration label showed,
   its other measurements moved as each calibration label's moved in turn: if the decision would flag it, or come
   near (`Decision.near`), under any of them, it runs to its early stop. Repeat until no
   unfinished label can come near a flag.
4. Settled? The projection is only as good as the calibration labels, and no stopped label moves exactly as
   their median did: the decision judges `resamples` projections in which every stopped label moves as one
   calibration label drawn at random did (its shrink ratio, its measurements' moves), and the verdict is settled
   when every one flags the same labels and agrees on whether the model is a close call (evidence rule), and every
   flag lies past the threshold by the near band's width (`Decision.sure`). (Moving every stopped label by the same
   median keeps the screen's spread between them, which can be narrower or wider than the final spread and so
   inflate or deflate every z-score.) Otherwise `calibration_labels` more labels nearest the median run to their
   end, join the calibration, and the settle test repeats.
5. Checked? Calibration labels lie nearest the median and can move more alike than the others, so resamples drawn
   from them can keep a spread narrower than the final one. A flag short of sure makes `check_labels` stopped labels
   drawn at random run to their end (then `calibration_labels` more each round): an unbiased sample of how stopped
   labels move. The flag settles once the resamples drawn from that sample agree too. Flagged labels are always
   final; in the worst case every label finishes, as in `full`.

The decision is a parameter, so the settle test asks the same question as the verdict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scanner.config import ScheduleConfig
from scanner.decision.evidence import LabelEvidence
from scanner.decision.rules import Decision, DecisionResult
from scanner.reverse import LabelRun, LabelTrigger, ProgressCallback, ReverseSession

# the evidence fields a stopped label's projection moves by the finished labels' median change
MOVING_MEASURES = tuple(item.name for item in dataclasses.fields(LabelEvidence) if item.name not in ("label", "norm"))


Measure = Callable[[int, np.ndarray, np.ndarray], LabelEvidence]  # (label, mask, pattern) -> evidence


@dataclass(frozen=True)
class ScheduleSummary:
    mode: str
    final: dict[int, bool]  # per label: ran to its own early stop (or the step limit)
    rounds: int  # settle tests run
    calibration_ratios: list[float]  # shrink ratios the last projection drew from (empty for `full`)
    calibration_labels: list[int]  # the labels run to their end to calibrate the projection
    check_labels: list[int]  # the labels drawn at random and run to their end to check a flag short of sure
    steps: int  # optimization steps over all labels
    images: int  # clean images pushed forward and backward over all labels

    def to_dict(self) -> dict:
        stopped = sum(not final for final in self.final.values())
        return {
            "mode": self.mode,
            "rounds": self.rounds,
            "final_labels": len(self.final) - stopped,
            "stopped_labels": stopped,
            "median_and_mad_from": (
                "final triggers of every label"
                if not stopped
                else "final triggers of the finished labels and projections of the stopped ones (their bound "
                "times the median shrink ratio of the finished labels; their other measurements moved by the "
                "finished labels' median change)"
            ),
            "calibration_ratios": [round(ratio, 4) for ratio in self.calibration_ratios],
            "calibration_labels": self.calibration_labels,
            "check_labels": self.check_labels,
            "steps": self.steps,
            "images": self.images,
        }


@dataclass(frozen=True)
class ScheduleOutcome:
    runs: dict[int, LabelRun]
    evidence: dict[int, LabelEvidence]  # what the decision judges: final, or projected for a stopped label
    summary: ScheduleSummary


# ---------------------------------------------------------------- pure pieces


def shrink_ratios(finished: Sequence[LabelRun], step: int) -> np.ndarray:
    """Final norm / best norm after `step` steps, for each finished run that had found a trigger by then. A
    run that finished before `step` had its final norm by then: ratio 1."""
    ratios = []
    for run in finished:
        if len(run.best_norms) < step:
            ratios.append(1.0)
        elif math.isfinite(run.best_norms[step - 1]) and run.best_norms[step - 1] > 0:
            ratios.append(run.norm / run.best_norms[step - 1])
    return np.array(ratios, dtype=np.float64)


def nearest_median(bounds: Mapping[int, float], count: int) -> list[int]:
    """The `count` labels whose values lie nearest the median of all."""
    median = float(np.median(list(bounds.values())))
    return sorted(bounds, key=lambda label: (abs(bounds[label] - median), label))[:count]


def median_moves(
    screened: Mapping[int, LabelEvidence], final: Mapping[int, LabelEvidence], labels: Sequence[int]
) -> dict[str, float]:
    """Per measurement, the median of (final - screened) over `labels` (0 where none measured both)."""
    moves = {}
    for name in MOVING_MEASURES:
        changes = [
            getattr(final[label], name) - getattr(screened[label], name)
            for label in labels
            if getattr(final[label], name) is not None and getattr(screened[label], name) is not None
        ]
        moves[name] = float(np.median(changes)) if changes else 0.0
    return moves


def own_moves(
    screened: Mapping[int, LabelEvidence], final: Mapping[int, LabelEvidence], labels: Iterable[int]
) -> dict[int, dict[str, float]]:
    """Each of `labels`' own measurement moves (final - screened)."""
    return {label: median_moves(screened, final, [label]) for label in labels}


def projected(screened: LabelEvidence, norm: float, moves: Mapping[str, float]) -> LabelEvidence:
    """A stopped label's evidence as it would have ended: the projected norm, every measurement moved."""
    moved = {
        name: None if getattr(screened, name) is None else getattr(screened, name) + moves[name]
        for name in MOVING_MEASURES
    }
    return dataclasses.replace(screened, norm=norm, **moved)


def near_labels(
    decision: Decision, evidence: Mapping[int, LabelEvidence], trials: Mapping[int, Sequence[LabelEvidence]]
) -> set[int]:
    """The labels that `decision` would flag, or come near flagging (`Decision.near`), with any one of their
    trial evidences in place of theirs, every other label as in `evidence`."""
    return {
        label
        for label, tried in trials.items()
        if any(decision.near({**evidence, label: trial}, [label]) for trial in tried)
    }


def verdict_of(result: DecisionResult) -> tuple[list[int], bool]:
    """What the settle test holds fixed: the flagged labels and whether the model is a close call."""
    return result.flagged, result.inconclusive


def screen(
    session: ReverseSession,
    runs: Sequence[LabelRun],
    steps: int,
    progress: ProgressCallback | None = None,
    mini_batch: int | None = None,
    screened: ProgressCallback | None = None,
) -> None:
    """Every run on by `steps` steps; a run that has not yet reached the success threshold runs on, `steps` at a
    time, until it does (or finishes). `progress` gets each run that finishes, `screened` each run once, as its
    screen ends (finished, or paused with a trigger found: a run leaves the loop below on the advance that reports
    it, so none is reported twice)."""

    def finished(result: LabelTrigger) -> None:
        if progress:
            progress(result)
        if screened:
            screened(result)

    def paused(result: LabelTrigger) -> None:
        if screened and result.found:  # one without a trigger yet screens on
            screened(result)

    session.advance(runs, steps, finished, mini_batch, paused)
    while unfound := [run for run in runs if not run.finished and not math.isfinite(run.norm)]:
        session.advance(unfound, steps, finished, mini_batch, paused)


# ---------------------------------------------------------------- the scheduler


@dataclass
class Standing:
    """Where a screened schedule stands: every label's run, its evidence as the screen left it, the finished
    labels' final evidence, the calibration labels, and the labels drawn at random to check a flag."""

    runs: dict[int, LabelRun]
    screened: dict[int, LabelEvidence]
    final: dict[int, LabelEvidence]
    calibration: list[int]
    checks: list[int] = dataclasses.field(default_factory=list)


class LabelScheduler:
    """`LabelScheduler(session, config, decision, measure).run(labels) -> ScheduleOutcome`. `progress` gets each label
    that runs to its end as it does, `screened` each label as its screen ends (under `screened`)."""

    def __init__(
        self, session: ReverseSession, config: ScheduleConfig, decision: Decision, measure: Measure, seed: int = 0,
        progress: ProgressCallback | None = None, screened: ProgressCallback | None = None,
    ):  # fmt: skip
        if config.mode == "auto":
            raise ValueError(f"schedule {config.mode!r}: resolve it for the scan first (ScheduleConfig.for_scan)")
        self.session = session
        self.config = config.validate()
        self.decision = decision
        self.measure = measure
        self.seed = seed
        self.progress = progress  # each label that runs to its end, as it does
        self.screened = screened  # each label as its screen ends (`screened` only)

    def run(self, labels: Sequence[int], finish: Sequence[int] = ()) -> ScheduleOutcome:
        """Every label reversed, each to its end or stopped where the verdict is settled; the labels in `finish`
        always run to their end (the retry's likeliest targets: it retries final labels only)."""
        if self.config.mode == "full" or len(labels) <= self.config.calibration_labels + 1:
            runs = {label: self.session.start(label) for label in labels}
            self._finish(list(runs.values()))
            return self._outcome(runs, self._measured(runs.values()), 0, [])
        runs = {label: self.session.start(label, self.config.screen_starts) for label in labels}
        screen(
            self.session,
            list(runs.values()),
            self.config.screen_steps,
            self.progress,
            self.config.screen_mini_batch or None,
            self.screened,
        )
        bounds = {label: run.norm for label, run in runs.items()}
        standing = Standing(
            runs, self._measured(runs.values()), {}, nearest_median(bounds, self.config.calibration_labels)
        )
        self._finish([runs[label] for label in sorted({*standing.calibration, *finish} & runs.keys())])
        rng = np.random.default_rng(self.seed)
        rounds = 0
        while True:
            rounds += 1
            standing.final.update(
                self._measured(run for run in runs.values() if run.finished and run.label not in standing.final)
            )
            evidence, fastest = self._projection(standing)
            near = self._near(standing, evidence, fastest)
            if near:
                self._finish([runs[label] for label in sorted(near)])
                continue
            sure = self.decision.sure(evidence)
            if self._settled(standing, evidence, sure, rng):
                steps = {run.steps for run in runs.values() if not run.finished}
                typical = [runs[label] for label in standing.calibration]
                pooled = sorted({ratio for step in steps for ratio in shrink_ratios(typical, step).tolist()})
                return self._outcome(runs, evidence, rounds, pooled, standing.calibration, standing.checks)
            stopped = {label: run.norm for label, run in runs.items() if not run.finished}
            if self.config.check_labels and not sure:
                count = max(self.config.check_labels - len(standing.checks), self.config.calibration_labels)
                more = sorted(rng.choice(sorted(stopped), min(count, len(stopped)), replace=False).tolist())
                standing.checks = [*standing.checks, *more]
            else:
                more = nearest_median(stopped, self.config.calibration_labels)
                standing.calibration = [*standing.calibration, *more]
            self._finish([runs[label] for label in more])

    def _projection(
        self, standing: Standing, drawn: Mapping[int, int] | None = None
    ) -> tuple[dict[int, LabelEvidence], dict[int, float]]:
        """(every label's evidence: final, or projected from the calibration labels' median shrink ratio and median
        moves, or, for a stopped label given a calibration label in `drawn`, from that label's own ratio and moves;
        each stopped label's fastest shrink ratio among the calibration labels)."""
        runs, screened, final = standing.runs, standing.screened, standing.final
        typical = [runs[label] for label in standing.calibration]
        finished = [run for run in runs.values() if run.finished]
        moves = median_moves(screened, final, standing.calibration)
        drawn_moves = own_moves(screened, final, set((drawn or {}).values()))  # once, however many drew a label
        evidence, fastest = dict(final), {}
        for label, run in runs.items():
            if label not in final:
                # calibration labels that had no trigger yet at this step say nothing: any finished label does
                ratios = shrink_ratios(typical, run.steps)
                ratios = ratios if len(ratios) else shrink_ratios(finished, run.steps)
                ratios = ratios if len(ratios) else np.ones(1)
                ratio, label_move = float(np.median(ratios)), moves
                if drawn is not None:
                    own = shrink_ratios([runs[drawn[label]]], run.steps)
                    ratio = float(own[0]) if len(own) else ratio
                    label_move = drawn_moves[drawn[label]]
                evidence[label] = projected(screened[label], run.norm * ratio, label_move)
                fastest[label] = float(ratios.min())
        return evidence, fastest

    def _near(self, standing: Standing, evidence: dict[int, LabelEvidence], fastest: Mapping[int, float]) -> set[int]:
        """The stopped labels near a flag at the fastest shrink a calibration label showed, their other
        measurements moved as each calibration label's moved in turn (a mask can sharpen far more than the median
        one did)."""
        each_moves = own_moves(standing.screened, standing.final, standing.calibration).values()
        trials = {
            label: [
                projected(standing.screened[label], standing.runs[label].norm * ratio, moves) for moves in each_moves
            ]
            for label, ratio in fastest.items()
        }
        return near_labels(self.decision, evidence, trials)

    def _settled(
        self, standing: Standing, evidence: dict[int, LabelEvidence], sure: bool, rng: np.random.Generator
    ) -> bool:
        """Whether the verdict stays the same when every stopped label moves as a calibration label drawn at random
        did (the projection's own uncertainty, label by label), and, where a flag is short of sure (`sure`:
        `Decision.sure` on `evidence`), as a check label drawn at random did, once there are `check_labels` of them."""
        if len(standing.final) == len(standing.runs):
            return True
        pools = [standing.calibration]
        if not sure:
            if not self.config.check_labels or len(standing.checks) < self.config.check_labels:
                return False
            pools.append(standing.checks)
        verdict = verdict_of(self.decision.judge(evidence))
        stopped = [label for label in standing.runs if label not in standing.final]
        for pool in pools:
            for _ in range(self.config.resamples):
                drawn = dict(zip(stopped, rng.choice(pool, len(stopped)).tolist(), strict=True))
                if verdict_of(self.decision.judge(self._projection(standing, drawn)[0])) != verdict:
                    return False
        return True

    def _measured(self, runs) -> dict[int, LabelEvidence]:
        """Each run's evidence on its trigger as it stands (final once the run finished)."""
        evidence = {}
        for run in runs:
            trigger = self.session.result(run)
            evidence[run.label] = self.measure(run.label, trigger.mask, trigger.pattern)
        return evidence

    def _finish(self, runs: list[LabelRun]) -> None:
        for run in runs:
            self.session.open_starts(run)
        self.session.advance(runs, None, self.progress)

    def _outcome(
        self,
        runs: dict[int, LabelRun],
        evidence: dict[int, LabelEvidence],
        rounds: int,
        ratios: list[float],
        calibration: Sequence[int] = (),
        checks: Sequence[int] = (),
    ) -> ScheduleOutcome:
        summary = ScheduleSummary(
            mode=self.config.mode,
            final={label: run.finished for label, run in runs.items()},
            rounds=rounds,
            calibration_ratios=ratios,
            calibration_labels=sorted(calibration),
            check_labels=sorted(checks),
            steps=sum(run.steps_spent for run in runs.values()),
            images=sum(run.images for run in runs.values()),
        )
        return ScheduleOutcome(runs, evidence, summary)
