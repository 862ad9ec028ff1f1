"""The additive look: how far a small universal additive perturbation carries the model's images to each label.

Blended and SIG backdoors answer a faint signal spread over the whole image (noise at alpha 0.15, a sinusoid of
amplitude 20), which Neural Cleanse's mask cannot express cheaply: a mask that covers the image at 0.15 has an L1
norm of 15% of the pixels, as large as any natural trigger. The model has learned that direction, though, so a
universal perturbation `delta` bounded by `epsilon` in every pixel (`x' = clip(x + delta)`, raw 0-255 pixels)
optimized towards the target moves far more images there than the same budget moves towards a clean label
(a targeted universal adversarial perturbation, Moosavi-Dezfooli et al. 2017, as a per-label probe). Every label
gets the same budget; the decision judges each label's success against the model's other labels
(scanner/decision/additive.py).

How small a bound moves images depends on the model (an MNIST network barely moves at 6 of 255 where a CIFAR-10
one sends a third of its images anywhere), and a success of 0 everywhere says nothing, so the bound starts at
`epsilon` and doubles (at most `MAX_DOUBLINGS` times) until the median label's success reaches
`MIN_MEDIAN_SUCCESS`; every label is judged at that bound and, where the ladder has one, at the next rung up: a
planted signal stronger than the settled bound carries (a blend at alpha 0.15 against a bound of 6) shows its full
strength only there (on the zoo, `gtsrb-blended-bn`'s target at 6 sent 0.92 of the images against others' 0.29,
at 12 all of them: docs/measurements.md, "The additive look"). A rung above the settled bound does not start
from zero: each label's perturbation goes on from where it stood at the rung below (scaled to the new bound), for
fewer steps, since the direction is found already; so does a bound climbed to from one that every label was
probed at (with many labels, a bound whose sample reached the success where the whole median did not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from scanner.config import AdditiveConfig
from scanner.decision.additive import AdditiveLooks, AdditiveMeasurement, looks_by_bound
from scanner.decision.evidence import EvidenceMeter
from scanner.model import predict_labels
from scanner.optim import Adam
from scanner.reverse import PIXEL_MAX, auto_labels_per_batch

LEARNING_RATE = 0.1  # Adam on the tanh parameter, as the reversal's
STREAM_OFFSET = 7_919  # the look's random stream is its own, apart from the reversal's and the evidence's
MIN_MEDIAN_SUCCESS = 0.1
MAX_DOUBLINGS = 3
# with more than twice this many labels a bound is first tried on this many, drawn with the seed, and left when
# their median falls short (the rest are probed only where it does not): at 200 classes the try at 6 that falls
# short costs 24 labels' probes rather than the 101 or more it takes all labels' median to fall short
BOUND_SAMPLE = 24


@dataclass(frozen=True)
class AdditiveProbe:
    label: int
    success: float  # share of the held-out images (not predicted as the label) the perturbation sends to it
    evaluated: int  # held-out images it was tried on
    mimicry: float | None  # cosine of the perturbed images' features to the label's clean mean (EvidenceMeter)
    images: int  # images pushed forward and backward while it was optimized
    epsilon: float  # the bound it was optimized under
    # the perturbation itself, (C, H, W) raw-pixel offsets within +-epsilon (None: not kept); not compared
    delta: np.ndarray | None = field(default=None, repr=False, compare=False)


# called as each label's probe is done: (that probe, labels done at its bound, labels in all)
AdditiveProgress = Callable[[AdditiveProbe, int, int], None]


@dataclass(frozen=True)
class AdditiveSearch:
    probes: list[AdditiveProbe]  # one per label at each bound judged
    epsilons: tuple[float, ...]  # those bounds: the settled one, then the next rung where there is one (): no look
    images: int  # images pushed forward and backward over every bound tried

    @property
    def epsilon(self) -> float:
        """The settled bound (0: the look did not run)."""
        return self.epsilons[0] if self.epsilons else 0.0

    def looks(self) -> AdditiveLooks:
        """What the decision judges: every bound's labels and what their perturbations did."""
        return looks_by_bound(
            (probe.epsilon, probe.label, AdditiveMeasurement(probe.success, probe.evaluated, probe.mimicry))
            for probe in self.probes
        )


def optimized_on(count: int, held_out: np.ndarray) -> np.ndarray:
    """The indices of the `count` images the perturbations are optimized on: every image but the `held_out` ones
    they are judged on, unless that leaves none (then all)."""
    rest = np.setdiff1d(np.arange(count), held_out)
    return rest if len(rest) else np.arange(count)


def perturbed(images: torch.Tensor, weights: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`images` (K, B, C, H, W) plus each of the K perturbations `epsilon * tanh(weights)` (K, C, H, W), clipped to
    the pixel range."""
    return (images + epsilon * torch.tanh(weights).unsqueeze(1)).clamp(0.0, PIXEL_MAX)


def adding(weights: torch.Tensor, epsilon: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The perturbation of `weights` (1, C, H, W) as a trigger: raw images (N, C, H, W) in, perturbed images out."""
    return lambda images: perturbed(images.unsqueeze(0), weights, epsilon)[0]


def probe_labels(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: Sequence[int],
    config: AdditiveConfig,
    meter: EvidenceMeter,
    seed: int = 0,
    labels_per_batch: int = 0,
    progress: AdditiveProgress | None = None,
    predictions: np.ndarray | None = None,
    try_order: Sequence[int] = (),
) -> AdditiveSearch:
    """Every label's probe at the smallest bound of the ladder where the median label's success reaches
    MIN_MEDIAN_SUCCESS (the largest tried where none does; with many labels a bound whose sample falls short is
    left at once), and at the `config.rungs - 1` rungs above it where the ladder has them (each label going on
    from its perturbation at the rung below for `config.rung_steps` steps, as on a bound climbed to from one every
    label was probed at), `labels_per_batch` labels sharing each forward pass (0: as many as the reversal would
    stack at this mini-batch; `predictions`: the model's class of each image, where the caller has them). A bound
    below the settled one is left as soon as more than half the labels fall short, so `try_order` (labels, those
    likeliest to fall short first) tries them in that order: such a bound is left sooner, and which bound settles
    does not depend on the order (labels it leaves out go last, in label order)."""
    if config.steps == 0 or not labels:
        return AdditiveSearch([], (), 0)
    device = meter.device
    clean = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    if predictions is None:
        predictions = predict_labels(model, images, device)
    train = optimized_on(len(images), meter.chosen)
    pixels = int(np.prod(images.shape[2:]))
    width = labels_per_batch or auto_labels_per_batch(device, config.mini_batch, len(labels), pixels)

    sample = bound_sample(labels, seed)
    sampled = set(sample)
    known = set(labels)
    ordered = dict.fromkeys([*(label for label in try_order if label in known), *labels])  # each label once
    climb_order = [*sample, *(label for label in ordered if label not in sampled)]

    def probe_all(epsilon: float, climbing: bool, below: dict[int, np.ndarray] | None = None) -> list[AdditiveProbe]:
        """Every label's probe at `epsilon`, from zero for `config.steps` steps or going on from its perturbation
        `below` for `config.rung_steps`; while `climbing`, only until the median cannot reach the success, or the
        sample's median does not."""
        order = climb_order if climbing else list(labels)
        steps = config.rung_steps if below else config.steps
        probes: list[AdditiveProbe] = []
        for start in range(0, len(order), width):
            group = order[start : start + width]
            begin = [below[label] for label in group] if below else None
            for probe in probe_group(
                model, clean, predictions, group, train, config, epsilon, meter, seed, steps, begin
            ):
                probes.append(probe)
                if progress:
                    progress(probe, len(probes), len(labels))
            if climbing and median_is_below(probes, len(labels)):
                break  # the rest cannot lift the median: on to the next bound
            if climbing and sample and len(probes) >= len(sample) and falls_short(probes[: len(sample)]):
                break  # the sample's median falls short: on to the next bound
        return probes

    def going_on(probes: list[AdditiveProbe]) -> dict[int, np.ndarray] | None:
        """Every label's perturbation in `probes`, to go on from at the next bound up (None: from zero, where
        some label was not probed or rungs start from zero)."""
        below = {probe.label: probe.delta for probe in probes if probe.delta is not None}
        return below if config.rung_steps and len(below) == len(labels) else None

    ladder = ladder_bounds(config.epsilon)
    images_used = 0
    below: dict[int, np.ndarray] | None = None
    for rung, epsilon in enumerate(ladder):
        last = rung == len(ladder) - 1
        # a bound above one that every label was probed at (a sample that reached the success where the whole
        # median did not) goes on from there, as a rung above the settled bound does
        probes = probe_all(epsilon, not last, below)
        images_used += sum(probe.images for probe in probes)
        if last or (len(probes) == len(labels) and not falls_short(probes)):
            break
        below = going_on(probes)
    judged = ladder[rung : rung + config.rungs]
    stronger: list[AdditiveProbe] = []
    at_bound = probes
    for bound in judged[1:]:
        at_bound = probe_all(bound, False, going_on(at_bound))
        stronger += at_bound
    images_used += sum(probe.images for probe in stronger)
    return AdditiveSearch(probes + stronger, tuple(judged), images_used)


def weights_of(delta: np.ndarray, epsilon: float) -> np.ndarray:
    """The tanh parameter whose perturbation under `epsilon` is `delta` (kept off +-1, where arctanh is infinite)."""
    return np.arctanh(np.clip(delta / epsilon, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)


def ladder_bounds(epsilon: float) -> list[float]:
    """The bounds the look may try: `epsilon` doubled up to MAX_DOUBLINGS times, up to the pixel range."""
    bounds = [min(PIXEL_MAX, epsilon * 2**doubling) for doubling in range(MAX_DOUBLINGS + 1)]
    return sorted(set(bounds))


def bound_sample(labels: Sequence[int], seed: int) -> list[int]:
    """The labels a bound is first tried on, in label order: BOUND_SAMPLE of them drawn with the seed where there
    are more than twice as many labels, else none (every label is tried)."""
    if len(labels) <= 2 * BOUND_SAMPLE:
        return []
    rng = np.random.default_rng([seed, STREAM_OFFSET, 1])
    return sorted(int(label) for label in rng.choice(np.asarray(labels), BOUND_SAMPLE, replace=False))


def falls_short(probes: Sequence[AdditiveProbe]) -> bool:
    """Whether the median success of `probes` is below MIN_MEDIAN_SUCCESS."""
    return bool(np.median([probe.success for probe in probes]) < MIN_MEDIAN_SUCCESS)


def median_is_below(probes: Sequence[AdditiveProbe], labels: int) -> bool:
    """Whether the median success over all `labels` is below MIN_MEDIAN_SUCCESS whatever the labels not yet probed
    reach: more than half of them already lie below."""
    return sum(probe.success < MIN_MEDIAN_SUCCESS for probe in probes) > labels // 2


def probe_group(
    model: torch.nn.Module,
    clean: torch.Tensor,
    predictions: np.ndarray,
    group: list[int],
    train: np.ndarray,
    config: AdditiveConfig,
    epsilon: float,
    meter: EvidenceMeter,
    seed: int,
    steps: int | None = None,
    start: Sequence[np.ndarray] | None = None,
) -> list[AdditiveProbe]:
    """One pass's labels, optimized together (each its own perturbation, images and loss) for `steps` steps
    (None: `config.steps`) from zero or from the perturbations `start` (each (C, H, W) within +-`epsilon`), then
    judged by `meter` on its held-out images."""
    device = meter.device
    steps = config.steps if steps is None else steps
    pools = [train[predictions[train] != label] for label in group]
    pools = [pool if len(pool) else train for pool in pools]  # a model that predicts one label everywhere
    streams = [np.random.default_rng([seed, STREAM_OFFSET, label]) for label in group]
    weights = torch.zeros((len(group), *clean.shape[1:]), device=device)
    if start is not None:
        weights[:] = torch.from_numpy(np.stack([weights_of(delta, epsilon) for delta in start])).to(device)
    weights.requires_grad_(True)
    optimizer = Adam([weights], lr=LEARNING_RATE)
    targets = torch.tensor(group, device=device).view(-1, 1)
    for _ in range(steps):
        chosen = np.stack(
            [pool[rng.integers(0, len(pool), config.mini_batch)] for pool, rng in zip(pools, streams, strict=True)]
        )
        batch = clean[torch.from_numpy(chosen).to(device)]  # (K, B, C, H, W)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=meter.bfloat16):
            log_probs = model(perturbed(batch, weights, epsilon).flatten(0, 1)).float()
        log_probs = log_probs.view(len(group), config.mini_batch, -1)
        loss = -log_probs.gather(2, targets.unsqueeze(2).expand(-1, config.mini_batch, 1)).mean(dim=(1, 2)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probes, images = [], steps * config.mini_batch
    for index, label in enumerate(group):
        kept = weights[index : index + 1].detach()
        success, _, mimicry = meter.outcome(label, adding(kept, epsilon))
        delta = (epsilon * torch.tanh(kept[0])).float().cpu().numpy()
        probes.append(AdditiveProbe(label, success, meter.victims(label), mimicry, images, epsilon, delta))
    return probes
