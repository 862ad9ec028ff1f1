"""Source-specific triggers: Neural Cleanse's reversal from the images of one source class to one target.

A label-specific backdoor sends only its source class to the target (all-to-all: each class to the next), so no
trigger that moves every class is small and the label-level scan misses it. Reversed from the source's images
alone, its trigger is as small as a planted patch (K-Arm, Shen et al. ICML 2021, reverses such pairs). A model
has n(n-1) pairs; the scan reverses all of them, each on the same short budget (the pairs are judged against each
other, so none gets more), when they are no more than `PairConfig.max_pairs`: the decision judges a pair against
its source's and its target's other pairs (scanner/decision/pairs.py), which needs the whole table. On the zoo's
43-class GTSRB models, 90 pairs chosen as K-Arm's pre-screen does (each source's likeliest targets by mean
log-probability, about 2 a source) left each source and target with too few pairs to judge against: clean models
scored z 10 to 23 there (benchmarks/pair_scans.py).

Each pair's trigger is then stamped on a few clean images of every class (`PairConfig.carry_images`), and where it
carries each other class (`carried_classes`) is kept: an all-to-all backdoor's patch, found by a pair of its cycle,
sends each class to a label of its own (scanner/decision/pairs.py judges that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scanner.config import PairConfig, ReverseConfig
from scanner.decision.evidence import stamp_arrays
from scanner.decision.pairs import MIN_SIDE, Carried
from scanner.model import predict_labels
from scanner.reverse import TriggerReverser


@dataclass(frozen=True)
class PairTrigger:
    source: int
    target: int
    mask: np.ndarray  # (H, W) in [0, 1]
    pattern: np.ndarray  # (C, H, W) raw pixels 0-255
    norm: float  # L1 norm of the mask
    found: bool  # False: no step reached the success threshold; the mask is the last one
    source_images: int  # clean images of the source class it was reversed from
    images: int  # images pushed forward and backward
    # where the trigger carries each other class's images besides the target (`carried_classes`); empty: not measured
    carried: tuple[Carried, ...] = ()


def candidate_pairs(predictions: np.ndarray, targets: Sequence[int], min_images: int) -> list[tuple[int, int]]:
    """Every (source, target) pair, source != target: the sources are the classes with at least `min_images` clean
    images predicted as them, the targets `targets`."""
    counts = np.bincount(predictions, minlength=max(targets, default=0) + 1)
    sources = [source for source, count in enumerate(counts) if count >= min_images]
    return [(source, target) for source in sources for target in targets if target != source]


def carried_classes(before: np.ndarray, after: np.ndarray, source: int, target: int, min_images: int) -> list[Carried]:
    """For each class other than `source` with at least `min_images` images (`before`: their class, `after`: the
    class once stamped with a pair's trigger), the one label, neither the class nor `target`, that the largest share
    of its images went to. A natural trigger of the target sends other classes to the target or nowhere; a planted
    y -> y + 1 patch sends each class to its own next label."""
    carried = []
    for label in np.unique(before):
        moved = after[before == label]
        if label == source or len(moved) < min_images:
            continue
        elsewhere = moved[(moved != label) & (moved != target)]
        counts = np.bincount(elsewhere) if len(elsewhere) else np.zeros(1, dtype=int)
        to = int(counts.argmax()) if len(elsewhere) else -1
        carried.append(Carried(int(label), to, float(counts.max() / len(moved))))
    return carried


def stamped(images: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """`images` (N, C, H, W raw pixels) with the trigger, by the reversal's own stamp."""
    return stamp_arrays(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), mask, pattern).numpy()


def carry_sample(predictions: np.ndarray, per_class: int) -> np.ndarray:
    """The indices of the first `per_class` images predicted as each class: the images every pair's carry is
    measured on."""
    return np.concatenate([np.flatnonzero(predictions == label)[:per_class] for label in np.unique(predictions)])


def pair_reverse_config(reverse: ReverseConfig, pairs: PairConfig) -> ReverseConfig:
    """The scan's reversal on the pairs' budget: one start from the pairs' initial mask range, at most `pairs.steps`
    steps (and never more than a label may run)."""
    return dataclasses.replace(
        reverse,
        starts=1,
        start_trial_steps=0,
        max_steps=min(pairs.steps, reverse.max_steps),
        images_per_step=max(pairs.images_per_step, reverse.mini_batch),
        initial_mask_max=pairs.initial_mask_max,
    )


PairProgress = Callable[[int, int], None]  # (pairs done, pairs in all)


@dataclass(frozen=True)
class PairSearch:
    triggers: list[PairTrigger]  # empty when the pairs were more than allowed or span too few targets
    needed: int  # the pairs a whole table takes


def reverse_pairs(
    model: torch.nn.Module,
    images: np.ndarray,
    targets: Sequence[int],
    reverse: ReverseConfig,
    pairs: PairConfig,
    device: torch.device,
    seed: int,
    progress: PairProgress | None = None,
    predictions: np.ndarray | None = None,
) -> PairSearch:
    """Reverse a trigger for every pair from its source's clean images (those the model predicts as the source),
    every pair on the same budget; none when the pairs are more than `pairs.max_pairs`, or span too few targets to
    be judged (fewer than MIN_SIDE: the scan's labels were narrowed). `predictions`: the model's class of each image,
    where the caller has them."""
    if predictions is None:
        predictions = predict_labels(model, images, device)
    chosen = candidate_pairs(predictions, targets, pairs.min_source_images)
    if len(chosen) > pairs.max_pairs or len({target for _, target in chosen}) < MIN_SIDE:
        return PairSearch([], len(chosen))
    reverser = TriggerReverser(model, pair_reverse_config(reverse, pairs), device, seed)
    session = reverser.session(images, len(chosen))
    pools = {source: np.flatnonzero(predictions == source) for source in {source for source, _ in chosen}}
    runs = [session.start_pair(source, target, pools[source]) for source, target in chosen]
    done = 0

    def one_finished(_: object) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(runs))

    session.advance(runs, None, one_finished)
    sample = carry_sample(predictions, pairs.carry_images)
    carry_min_images = min(pairs.min_source_images, pairs.carry_images)  # a class measured on fewer images is left out
    results = []
    for (source, target), run in zip(chosen, runs, strict=True):
        trigger = session.result(run)
        after = predict_labels(model, stamped(images[sample], trigger.mask, trigger.pattern), device)
        carried = carried_classes(predictions[sample], after, source, target, carry_min_images)
        results.append(
            PairTrigger(
                source,
                target,
                trigger.mask,
                trigger.pattern,
                trigger.norm,
                trigger.found,
                len(pools[source]),
                run.images,
                tuple(carried),
            )
        )
    return PairSearch(results, len(chosen))
