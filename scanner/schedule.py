"""The label scheduler: how far to reverse each label, so that the scan's work goes where the verdict can change.

`full` runs every label to its own early stop, as Neural Cleanse does. `screened`:

1. Screen: every label runs `screen_steps` steps. A label's best norm so far is an upper bound on its final
   norm (the best only ever shrinks).
2. Calibrate: labels spread evenly over the screen's ranking run to their early stop until
   `calibration_labels` have finished. Their shrink ratios (final norm / best norm after s steps) say how far
   a label stopped at step s may still shrink.
3. Settle: every unfinished label's final norm is drawn as its bound times a shrink ratio of a finished label
   (labels the decision flags are left out of this pool: a planted trigger shrinks unlike the others), and the
   scan's own decision runs on the point projection (median ratio) and on `draws` independent draws; each
   unfinished label is also tried alone at the fastest shrink any finished label showed. When every scenario
   flags the same labels, no label could be flagged alone, and each flagged label is final, the verdict is
   settled. Otherwise flagged labels run to their early stop, and the contested ones, with the unfinished
   labels nearest the median, run `screen_steps` more steps (their bounds tighten as they run on, and the
   fastest shrink left to them shrinks), and the test repeats. A label that no scenario can move is stopped:
   its work is saved. In the worst case every label finishes, as in `full`.

The decision is a parameter (`Decide`: norms -> flagged labels), so the settle test always asks the same
question as the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scanner.config import ScheduleConfig
from scanner.reverse import LabelRun, ProgressCallback, ReverseSession

Decide = Callable[[dict[int, float]], frozenset[int]]


@dataclass(frozen=True)
class LabelEstimate:
    """Where one label's reverse engineering ended."""

    label: int
    final: bool  # ran to its own early stop (or the step limit)
    bound: float  # best norm reached: the final norm when final, an upper bound on it otherwise
    estimate: float  # the norm the decision used: the final norm, or the projected one


@dataclass(frozen=True)
class ScheduleSummary:
    mode: str
    labels: list[LabelEstimate]
    rounds: int  # settle tests run
    calibration_ratios: list[float]  # shrink ratios the last projection drew from (empty for `full`)
    steps: int  # optimization steps over all labels
    images: int  # clean images pushed forward and backward over all labels

    def estimates(self) -> dict[int, float]:
        return {item.label: item.estimate for item in self.labels}

    def to_dict(self) -> dict:
        stopped = [item for item in self.labels if not item.final]
        return {
            "mode": self.mode,
            "rounds": self.rounds,
            "final_labels": len(self.labels) - len(stopped),
            "stopped_labels": len(stopped),
            "median_and_mad_from": (
                "final norms of every label"
                if not stopped
                else "final norms of the finished labels and projected norms of the stopped ones "
                "(their bound times the median shrink ratio of the finished labels)"
            ),
            "calibration_ratios": [round(ratio, 4) for ratio in self.calibration_ratios],
            "steps": self.steps,
            "images": self.images,
        }


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


def evenly_ranked(labels_by_bound: Sequence[int], count: int) -> list[int]:
    """`count` labels spread evenly over a ranking (the middle of each of `count` equal slices)."""
    if count >= len(labels_by_bound):
        return list(labels_by_bound)
    positions = ((np.arange(count) + 0.5) * len(labels_by_bound) / count).astype(int)
    return [labels_by_bound[position] for position in positions]


def point_projection(bounds: dict[int, float], ratios: dict[int, np.ndarray]) -> dict[int, float]:
    return {label: bound * float(np.median(ratios[label])) for label, bound in bounds.items()}


def scenarios(
    final: dict[int, float], bounds: dict[int, float], ratios: dict[int, np.ndarray], draws: int, seed: int
) -> list[dict[int, float]]:
    """Norm sets the unfinished labels' final norms may take: the point projection first (median ratio), then
    `draws` random ones (each label's ratio drawn independently from its calibration ratios)."""
    rng = np.random.default_rng(seed)
    result = [{**final, **point_projection(bounds, ratios)}]
    for _ in range(draws):
        drawn = {label: bound * float(rng.choice(ratios[label])) for label, bound in bounds.items()}
        result.append({**final, **drawn})
    return result


def contested_labels(decide: Decide, norm_sets: Sequence[dict[int, float]]) -> tuple[frozenset[int], frozenset[int]]:
    """(labels flagged in some scenario but not all, labels flagged in every scenario)."""
    verdicts = [decide(norms) for norms in norm_sets]
    everywhere = frozenset.intersection(*verdicts)
    somewhere = frozenset.union(*verdicts)
    return somewhere - everywhere, everywhere


def nearest_median(estimates: dict[int, float], candidates: Sequence[int], count: int) -> list[int]:
    median = float(np.median(list(estimates.values())))
    return sorted(candidates, key=lambda label: abs(estimates[label] - median))[:count]


# ---------------------------------------------------------------- the scheduler


@dataclass(frozen=True)
class Projection:
    """What the settle test knows: final norms, the unfinished labels' bounds, the shrink ratios drawn for each
    (from finished labels the decision does not flag), the fastest shrink seen, and the labels that cannot be
    projected yet."""

    final: dict[int, float]
    bounds: dict[int, float]
    typical: dict[int, np.ndarray]
    fastest: dict[int, float]
    unprojectable: list[int]


class LabelScheduler:
    """`LabelScheduler(session, config, decide).run(labels) -> (runs, summary)`."""

    def __init__(
        self, session: ReverseSession, config: ScheduleConfig, decide: Decide, seed: int = 0,
        progress: ProgressCallback | None = None,
    ):  # fmt: skip
        self.session = session
        self.config = config.validate()
        self.decide = decide
        self.seed = seed
        self.progress = progress

    def run(self, labels: Sequence[int]) -> tuple[dict[int, LabelRun], ScheduleSummary]:
        runs = {label: self.session.start(label) for label in labels}
        if self.config.mode == "full" or len(labels) <= self.config.calibration_labels:
            self._finish(list(runs.values()))
            return runs, self._summary(runs, 0, [])
        self.session.advance(list(runs.values()), self.config.screen_steps, self.progress)
        self._calibrate(runs)
        rounds = 0
        while True:
            rounds += 1
            projection = self._projection(runs)
            if projection.unprojectable:  # no trigger yet, or no finished label to compare with at its step
                self.session.advance([runs[label] for label in projection.unprojectable], self.config.screen_steps)
                continue
            if not projection.bounds:
                return runs, self._summary(runs, rounds, [])
            norm_sets = scenarios(
                projection.final, projection.bounds, projection.typical, self.config.draws, self.seed + rounds
            )
            contested, flagged = contested_labels(self.decide, norm_sets)
            contested |= self._could_be_flagged_alone(projection, norm_sets[0])
            to_finish = {label for label in flagged if label in projection.bounds}
            to_advance = {label for label in contested if label in projection.bounds} - to_finish
            if not to_finish and not to_advance:
                pooled = sorted({ratio for ratios in projection.typical.values() for ratio in ratios.tolist()})
                return runs, self._summary(runs, rounds, pooled, norm_sets[0])
            if to_advance:
                others = [label for label in projection.bounds if label not in to_finish | to_advance]
                to_advance |= set(nearest_median(norm_sets[0], others, self.config.median_neighbours))
            self._finish([runs[label] for label in sorted(to_finish)])
            self.session.advance([runs[label] for label in sorted(to_advance)], self.config.screen_steps, self.progress)

    def _calibrate(self, runs: dict[int, LabelRun]) -> None:
        """Finish labels spread over the screen's ranking until enough have finished to draw ratios from."""
        missing = self.config.calibration_labels - sum(run.finished for run in runs.values())
        if missing <= 0:
            return
        open_by_bound = sorted((run for run in runs.values() if not run.finished), key=lambda run: run.norm)
        chosen = evenly_ranked([run.label for run in open_by_bound], missing)
        self._finish([runs[label] for label in chosen])

    def _projection(self, runs: dict[int, LabelRun]) -> Projection:
        finished = [run for run in runs.values() if run.finished]
        open_runs = [run for run in runs.values() if not run.finished]
        every = {run.label: shrink_ratios(finished, run.steps) for run in open_runs}
        unprojectable = [run.label for run in open_runs if not math.isfinite(run.norm) or len(every[run.label]) == 0]
        final = {run.label: self._norm(run) for run in finished}
        bounds = {run.label: self._norm(run) for run in open_runs if run.label not in unprojectable}
        every = {label: every[label] for label in bounds}
        flagged = self.decide({**final, **point_projection(bounds, every)}) if bounds else frozenset()
        typical_runs = [run for run in finished if run.label not in flagged] or finished
        typical = {label: shrink_ratios(typical_runs, runs[label].steps) for label in bounds}
        typical = {label: ratios if len(ratios) else every[label] for label, ratios in typical.items()}
        fastest = {label: float(every[label].min()) for label in bounds}
        return Projection(final, bounds, typical, fastest, unprojectable)

    def _could_be_flagged_alone(self, projection: Projection, point: dict[int, float]) -> frozenset[int]:
        """Unfinished labels the decision would flag if they alone shrank like the fastest finished label (a
        planted trigger shrinks faster than natural ones: typical ratios alone would hide it)."""
        return frozenset(
            label
            for label, bound in projection.bounds.items()
            if label in self.decide({**point, label: bound * projection.fastest[label]})
        )

    def _norm(self, run: LabelRun) -> float:
        """The L1 norm of the run's trigger as the report gives it (its best mask, or its current one when it
        never reached the success threshold)."""
        return self.session.result(run).norm

    def _finish(self, runs: list[LabelRun]) -> None:
        self.session.advance(runs, None, self.progress)

    def _summary(
        self, runs: dict[int, LabelRun], rounds: int, ratios: list[float], estimates: dict[int, float] | None = None
    ) -> ScheduleSummary:
        estimates = estimates or {}
        labels = []
        for run in runs.values():
            norm = self._norm(run)
            labels.append(LabelEstimate(run.label, run.finished, norm, norm if run.finished else estimates[run.label]))
        return ScheduleSummary(
            mode=self.config.mode,
            labels=labels,
            rounds=rounds,
            calibration_ratios=ratios,
            steps=sum(run.steps for run in runs.values()),
            images=sum(run.images for run in runs.values()),
        )
