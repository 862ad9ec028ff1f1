"""The retry: the labels with the smallest triggers, and the likeliest targets, reversed again from fresh starts,
each keeping the smallest trigger any round found.

A reversal can miss a planted trigger that is there: a start whose mask fades before the patch's pattern has
formed ends at about twice the patch's norm (docs/measurements.md, "Starts"). Such a miss is all or nothing, while
a natural trigger ends about the same from any start, so more rounds on the label that could be flagged find what
the first round missed more often than they sharpen a natural trigger. The label retried by default is the smallest
trigger, Neural Cleanse's suspect; retrying more of them also sharpens the natural triggers that the others are
judged against (docs/measurements.md, "Retry"). The rounds start from small masks (uniform on [0, 0.1] where the
first round's start from the reference's [0, 1]): a small mask grows where the trigger is, and found a 6 px patch on
starts where the reference's shrinking mask lost it ("Initial mask"); as every label's init it also sharpened the
natural triggers the others are judged against, which a retry of the suspect alone leaves as they were.

A planted trigger the first round missed need not be among the smallest (a 6 px patch's target ended sixth of 43),
but its label draws probability from every class's clean images: the label with the highest mean log-probability on
other classes' images (K-Arm's pre-screen, Shen et al. ICML 2021) is retried too. On the zoo it ranked a planted
target first on 5 of the 6 GTSRB patch models (docs/measurements.md, "Retry").

The retry asks whether a label could be flagged, so a chosen label that the decision already flags surely
(Decision.sure_flags) is left as it is (scanner/run_scan.py): a smaller trigger could only flag it more surely.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scanner.reverse import LabelRun, LabelTrigger, ReverseSession


def retry_count(labels: int, configured: int) -> int:
    """How many labels a scan of `labels` labels retries: `configured`, or ceil(sqrt(labels)) where it is 0."""
    return min(labels, configured or math.ceil(math.sqrt(labels)))


SMALLEST, LIKELIEST = "smallest", "likeliest"  # why a label is retried (Retry.chosen_as)
CHOSEN_AS = (SMALLEST, LIKELIEST)


def retry_candidates(
    norms: Mapping[int, float],
    final: Collection[int],
    labels: int,
    likeliest_order: Sequence[int] = (),
    likeliest: int = 0,
) -> dict[int, str]:
    """The labels a retry reverses again, each with why (SMALLEST or LIKELIEST), in that order: the smallest norms
    among the labels reversed to their end, smallest first, `labels` of them (RetryConfig.labels: 0 is ceil(sqrt));
    then the first `likeliest` of `likeliest_order` (likeliest_targets) among those labels, less any already chosen
    (a likeliest target that is also a smallest trigger is retried once). A label the scheduler stopped early holds a
    projection, not a trigger to improve on."""
    count = retry_count(len(norms), labels)
    smallest = sorted((label for label in norms if label in final), key=lambda label: (norms[label], label))[:count]
    chosen = dict.fromkeys(smallest, SMALLEST)
    likely = first_likeliest(likeliest_order, {label for label in norms if label in final}, likeliest)
    chosen.update({label: LIKELIEST for label in likely if label not in chosen})
    return chosen


def split_sure(candidates: Mapping[int, str], sure: Collection[int]) -> tuple[dict[int, str], list[int]]:
    """`candidates` (retry_candidates' answer) split into those the retry reverses again, with why, and those it leaves
    as they are, in order: the labels the decision flags surely already (Decision.sure_flags)."""
    retried = {label: why for label, why in candidates.items() if label not in sure}
    return retried, [label for label in candidates if label in sure]


def first_likeliest(likeliest_order: Sequence[int], among: Collection[int], likeliest: int) -> list[int]:
    """The first `likeliest` labels of `likeliest_order` that are in `among`: the likeliest targets a retry takes
    (a screened scan runs them to their end, so that they are among its final labels)."""
    return [label for label in likeliest_order if label in among][:likeliest]


def likeliest_targets(log_probs: np.ndarray) -> list[int]:
    """Every label, likeliest target first: by its mean log-probability over the clean images the model predicts as
    another label (K-Arm's pre-screen, Shen et al. ICML 2021: a planted target draws probability from every class)."""
    predictions = log_probs.argmax(axis=1)
    means = [
        float(log_probs[predictions != label, label].mean()) if (predictions != label).any() else -math.inf
        for label in range(log_probs.shape[1])
    ]
    return sorted(range(len(means)), key=lambda label: (-means[label], label))


@dataclass(frozen=True)
class Retry:
    """One label's retry: the norm of its trigger before, each round's, and the round whose trigger it keeps."""

    label: int
    first_norm: float  # the label's trigger before the retry
    norms: list[float]  # each round's trigger
    kept_round: int | None  # the round (1-based) whose trigger the label keeps; None: the first stays
    images: int  # clean images the rounds pushed forward and backward
    seconds: float
    chosen_as: str = SMALLEST  # why it was retried: one of the smallest triggers, or a likeliest target


def kept_round(first: LabelTrigger, rounds: Sequence[LabelTrigger]) -> int | None:
    """The round (1-based) whose trigger replaces the first: the smallest that reached the attack success threshold,
    where it is smaller than the first or the first never reached it; else None (a tie keeps the first). A mask that
    never reached the threshold says nothing about the label, however small."""
    found = [i for i, trigger in enumerate(rounds) if trigger.found]
    best = min(found, key=lambda i: rounds[i].norm, default=None)
    if best is None or (first.found and rounds[best].norm >= first.norm):
        return None
    return best + 1


def retry_rounds(
    session: ReverseSession,
    labels: Sequence[int],
    rounds: int,
    mask_max: float | None = None,
    progress: Callable[[LabelTrigger], None] | None = None,
) -> dict[int, list[LabelTrigger]]:
    """Reverse every label of `labels` `rounds` more times from fresh starts (ReverseSession.restart), each mask
    uniform on [0, `mask_max`] (None: the scan's range), all of them sharing the session's passes: label -> each
    round's trigger."""
    runs: dict[int, list[LabelRun]] = {
        label: [session.restart(label, r, mask_max) for r in range(1, rounds + 1)] for label in labels
    }
    session.advance([run for label_runs in runs.values() for run in label_runs], None, progress)
    return {label: [session.result(run) for run in label_runs] for label, label_runs in runs.items()}


def retry_labels(
    session: ReverseSession,
    first: Mapping[int, LabelTrigger],
    rounds: int,
    mask_max: float | None = None,
    progress: Callable[[LabelTrigger], None] | None = None,
    chosen_as: Mapping[int, str] | None = None,
) -> tuple[dict[int, LabelTrigger], list[Retry]]:
    """Retry every label of `first` (label -> its trigger so far) for `rounds` rounds: each label's trigger to keep
    (kept_round's choice; its steps, seconds and images counted over the first and every round) and what each
    label's rounds found (`chosen_as`: why each label is retried, retry_candidates' answer; SMALLEST where not
    given)."""
    found = retry_rounds(session, list(first), rounds, mask_max, progress)
    kept: dict[int, LabelTrigger] = {}
    retries = []
    for label, triggers in found.items():
        norms = [trigger.norm for trigger in triggers]
        chosen = kept_round(first[label], triggers)
        spent = [first[label], *triggers]
        kept[label] = dataclasses.replace(
            first[label] if chosen is None else triggers[chosen - 1],
            steps=sum(trigger.steps for trigger in spent),
            seconds=sum(trigger.seconds for trigger in spent),
            images=sum(trigger.images for trigger in spent),
        )
        images = sum(trigger.images for trigger in triggers)
        seconds = sum(trigger.seconds for trigger in triggers)
        why = (chosen_as or {}).get(label, SMALLEST)
        retries.append(Retry(label, first[label].norm, norms, chosen, images, seconds, why))
    return kept, retries


def retried_labels(retries: Sequence[Retry]) -> list[int]:
    """The labels whose trigger a retry round replaced."""
    return [retry.label for retry in retries if retry.kept_round is not None]
