"""A second opinion on a close result: the scan again from other seeds, and the verdict most of the runs reach.

A close result (a close call, or a flag in the close band: DecisionResult.inconclusive, close_flag, close_labels) is
one that another seed may not repeat: on the model zoo every verdict that changed between seeds 0, 1 and 2 was close
on some seed, and the reports told the user to rerun with another seed. The scan does that itself: it runs again
from `second_opinions` more seeds (its seed + 1, + 2, ...; each run draws its own starts, and its own clean images
where --max-images samples them) until one verdict (the same flagged labels, or clean, or inconclusive) is held by
more than half of the runs planned. Where none can be, the verdict is inconclusive: the runs disagree. The report
shows the first run that holds the verdict (its triggers, tables and decision) and lists every run.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cleanse_base.errors import ConfigError
from cleanse_base.exit_codes import CLEAN, INCONCLUSIVE, INFECTED
from scanner.decision.rules import DecisionResult

VerdictKey = tuple[str, tuple[int, ...]]  # a run's verdict and its flagged labels, sorted


@dataclass(frozen=True)
class RunVerdict:
    """One run's outcome, as the second opinion counts it."""

    seed: int
    verdict: str  # clean, infected or inconclusive
    flagged: list[int] = field(default_factory=list)
    score: float = 1.0  # the decision's score (evidence rule: the model's p-value)
    close: bool = False  # the run's own result was close (what asks for a second opinion)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in (CLEAN, INFECTED, INCONCLUSIVE):
            raise ConfigError(f"a run's verdict must be clean, infected or inconclusive, not {self.verdict!r}")
        if bool(self.flagged) != (self.verdict == INFECTED):
            raise ConfigError("a run flags labels if and only if its verdict is infected")
        if len(set(self.flagged)) != len(self.flagged) or min(self.flagged, default=0) < 0:
            raise ConfigError(f"a run's flagged labels must be distinct labels, not {self.flagged[:10]}")

    @property
    def key(self) -> VerdictKey:
        return (self.verdict, tuple(sorted(self.flagged)))

    def text(self) -> str:
        if self.verdict == INFECTED:
            return f"seed {self.seed} flags {', '.join(map(str, self.flagged))}"
        return f"seed {self.seed} {'is clean' if self.verdict != INCONCLUSIVE else 'is inconclusive'}"


@dataclass(frozen=True)
class SecondOpinion:
    """Every run of a scan whose first result was close, and the verdict they reach together."""

    runs: list[RunVerdict]  # the scan's own seed first, then each second opinion in turn
    planned: int  # runs planned: 1 + second_opinions; a majority is more than half of these
    shown_seed: int  # the run the report shows: the first that holds the majority verdict, else the first run

    def __post_init__(self) -> None:
        if not 1 <= len(self.runs) <= self.planned:
            raise ConfigError(f"a second opinion holds 1 to {self.planned} (planned) runs, not {len(self.runs)}")
        if self.shown_seed != shown_run(self.runs, self.planned).seed:
            raise ConfigError(f"the run shown (seed {self.shown_seed}) is not the first that holds the verdict")

    @property
    def majority(self) -> VerdictKey | None:
        return majority_key([run.key for run in self.runs], self.planned)

    @property
    def agreed(self) -> bool:
        return self.majority is not None

    @property
    def verdict(self) -> str:
        majority = self.majority
        return INCONCLUSIVE if majority is None else majority[0]

    @property
    def flagged(self) -> list[int]:
        """The flagged labels of the majority verdict (in the shown run's order); none where the runs disagree."""
        return next(run.flagged for run in self.runs if run.seed == self.shown_seed) if self.agreed else []

    @property
    def score(self) -> float:
        """The model's score over the runs: the median of theirs (a p-value under the evidence rule)."""
        return statistics.median(run.score for run in self.runs)

    def text(self) -> str:
        """How the runs went, for the verdict's reason: "2 of 3 runs agree (seed 0 is inconclusive; seed 1 flags 7;
        seed 2 flags 7)"."""
        runs = "; ".join(run.text() for run in self.runs)
        if not self.agreed:
            return f"the runs disagree, none held by more than half of {self.planned} ({runs})"
        holding = sum(run.key == self.majority for run in self.runs)
        return f"a second opinion: {holding} of {len(self.runs)} runs agree ({runs})"

    def to_dict(self) -> dict:
        return {
            "runs": [dataclasses.asdict(run) for run in self.runs],
            "planned": self.planned,
            "shown_seed": self.shown_seed,
            "agreed": self.agreed,
            "score": self.score,
            "verdict": self.verdict,
            "flagged": self.flagged,
        }


def close_result(decision: DecisionResult) -> bool:
    """Whether a run's decision is one another seed may not repeat: a close call, a close flag or close labels."""
    return decision.inconclusive or decision.close_flag or bool(decision.close_labels)


def opinion_seeds(seed: int, count: int, seed_max: int) -> list[int]:
    """The seeds of `count` second opinions after `seed`: seed + 1, seed + 2, ..., wrapping past `seed_max` to 0."""
    return [(seed + offset) % (seed_max + 1) for offset in range(1, count + 1)]


def gather_runs(first: RunVerdict, count: int, seed_max: int, run: Callable[[int], RunVerdict]) -> list[RunVerdict]:
    """The runs a scan's verdict rests on: `first` alone where it is not close; else it and `run(seed)` for each of
    the next `count` seeds (opinion_seeds) until the runs settle."""
    runs = [first]
    for seed in opinion_seeds(first.seed, count, seed_max) if first.close else []:
        if settled([earlier.key for earlier in runs], 1 + count):
            break
        runs.append(run(seed))
    return runs


def majority_key(keys: Sequence[VerdictKey], planned: int) -> VerdictKey | None:
    """The verdict held by more than half of `planned` runs, or None."""
    counts = Counter(keys)
    best = max(counts, key=lambda key: counts[key], default=None)
    return best if best is not None and counts[best] * 2 > planned else None


def settled(keys: Sequence[VerdictKey], planned: int) -> bool:
    """Whether the runs so far decide: a verdict holds a majority of `planned` already, or none can reach one with
    the runs left (even one not seen yet)."""
    if majority_key(keys, planned) is not None:
        return True
    left = planned - len(keys)
    most = max(Counter(keys).values(), default=0)
    return (most + left) * 2 <= planned and left * 2 <= planned


def shown_run(runs: Sequence[RunVerdict], planned: int) -> RunVerdict:
    """The run a report shows: the first that holds the majority verdict, else the first run."""
    majority = majority_key([run.key for run in runs], planned)
    return next((run for run in runs if run.key == majority), runs[0])
