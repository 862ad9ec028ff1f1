"""Neural Cleanse trigger reverse engineering, several labels at a time.

For each target label, find the smallest mask m (H x W, shared over channels) and a pattern p (C x H x W)
such that x' = (1 - m) * x + m * p sends clean images to the label: minimize CE(f(x'), label) + cost * |m|_1
with Adam in tanh space, tuning `cost` on the fly (Wang et al., S&P 2019, and their visualizer.py).

Labels are independent problems. Several of them share one forward pass as "slots" of a batch: each slot
has its own parameters, Adam moments, cost schedule, early stop and stream of clean images, so a label's
result does not depend on which labels run beside it. A finished label leaves its slot to the next one.

A label's run can also pause after some steps and resume later with all of its state (the label scheduler in
scanner/schedule.py screens every label briefly and spends the rest where the verdict can change):
`ReverseSession.advance(runs, steps)` moves each run on by up to `steps` steps.

A label may be reversed from several starts (`ReverseConfig.starts`): independent runs from different random
initial masks and patterns, over different orders of the clean images; the label keeps the smallest trigger
any start found. One start misses a planted trigger that another finds (the reversal is not convex), and
every label gets the same number of starts, so no label's norm is favoured over another's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cleanse_base.errors import ResourceError
from scanner.config import ReverseConfig

TANH_EPSILON = 1e-7  # keeps arctanh finite at mask 0/1, as in the reference
ADAM_EPSILON = 1e-8
PIXEL_MAX = 255.0


# ---------------------------------------------------------------- cost schedule (pure, one label)


@dataclass
class CostSchedule:
    """The reference's per-step bookkeeping: cost tuning, best mask, early stop."""

    cost: float = 0.0
    cost_set_counter: int = 0
    cost_up_counter: int = 0
    cost_down_counter: int = 0
    cost_up_flag: bool = False
    cost_down_flag: bool = False
    best_norm: float = math.inf
    early_stop_best: float = math.inf
    early_stop_counter: int = 0


@dataclass(frozen=True)
class StepOutcome:
    improved: bool  # this step's mask is the new best
    stop: bool  # early stop


def advance_schedule(state: CostSchedule, success: float, norm: float, config: ReverseConfig) -> StepOutcome:
    """Update `state` after one step with mean attack success `success` and mean mask norm `norm`,
    in the reference's order: best mask, early stop, then cost."""
    reached = success >= config.attack_success_threshold
    improved = reached and norm < state.best_norm
    if improved:
        state.best_norm = norm

    if config.early_stop:
        if state.best_norm < math.inf:
            if state.best_norm >= config.early_stop_threshold * state.early_stop_best:
                state.early_stop_counter += 1
            else:
                state.early_stop_counter = 0
        state.early_stop_best = min(state.best_norm, state.early_stop_best)
        if state.cost_down_flag and state.cost_up_flag and state.early_stop_counter >= config.early_stop_patience:
            return StepOutcome(improved, stop=True)

    if state.cost == 0 and reached:
        state.cost_set_counter += 1
        if state.cost_set_counter >= config.patience:
            state.cost = config.init_cost
            state.cost_up_counter = state.cost_down_counter = 0
            state.cost_up_flag = state.cost_down_flag = False
    else:
        state.cost_set_counter = 0

    if reached:
        state.cost_up_counter += 1
        state.cost_down_counter = 0
    else:
        state.cost_up_counter = 0
        state.cost_down_counter += 1
    if state.cost_up_counter >= config.patience:
        state.cost_up_counter = 0
        state.cost *= config.cost_multiplier_up
        state.cost_up_flag = True
    elif state.cost_down_counter >= config.patience:
        state.cost_down_counter = 0
        state.cost /= config.cost_multiplier_down
        state.cost_down_flag = True
    return StepOutcome(improved, stop=False)


# ---------------------------------------------------------------- math helpers


def mask_from_tanh(mask_tanh: torch.Tensor) -> torch.Tensor:
    # The clamp only removes float32 rounding (about 6e-8 past 0 or 1 when tanh saturates).
    return (torch.tanh(mask_tanh) / (2 - TANH_EPSILON) + 0.5).clamp(0.0, 1.0)


def pattern_from_tanh(pattern_tanh: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(pattern_tanh) / (2 - TANH_EPSILON) + 0.5).clamp(0.0, 1.0) * PIXEL_MAX


def to_tanh(values01: np.ndarray) -> np.ndarray:
    return np.arctanh((values01 - 0.5) * (2 - TANH_EPSILON))


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x' = (1 - m) * x + m * p; raw pixels, broadcasting mask (.., 1, H, W) over channels."""
    return (1 - mask) * images + mask * pattern


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    first_moment: torch.Tensor,
    second_moment: torch.Tensor,
    steps: torch.Tensor,
    learning_rate: float,
    beta1: float,
    beta2: float,
) -> None:
    """torch.optim.Adam's update in place, with a step count per slot (dim 0) so that slots restart alone."""
    first_moment.mul_(beta1).add_(grad, alpha=1 - beta1)
    second_moment.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    shape = (-1,) + (1,) * (param.dim() - 1)
    bias1 = (1 - beta1**steps).view(shape)
    bias2 = (1 - beta2**steps).view(shape)
    param.sub_(learning_rate * (first_moment / bias1) / ((second_moment / bias2).sqrt() + ADAM_EPSILON))


def start_rng(seed: int, label: int, start: int, source: int | None = None) -> np.random.Generator:
    """A start's initial mask and pattern and its order of images (start 0: as with a single start); a pair run
    (images of one `source` class only) has its own stream."""
    if source is not None:
        return np.random.default_rng([seed, label, start, source, 1])
    return np.random.default_rng([seed, label] if start == 0 else [seed, label, start])


# ---------------------------------------------------------------- results


@dataclass
class LabelTrigger:
    label: int
    mask: np.ndarray  # (H, W) in [0, 1]
    pattern: np.ndarray  # (C, H, W) raw pixels 0-255
    norm: float  # L1 norm of the mask
    attack_success: float  # mean attack success over the step that produced the mask
    found: bool  # False: no step reached the success threshold; the mask is the last one
    steps: int
    seconds: float
    final_cost: float
    images: int = 0  # clean images pushed forward and backward over all its starts


@dataclass
class StartRun:
    """One start of a label's reversal, resumable: its schedule, data stream, best-so-far and (while it is
    paused) its parameters and Adam state."""

    label: int
    rng: np.random.Generator
    index: int = 0  # which of its label's starts (ReverseConfig.initial_mask_max_of)
    schedule: CostSchedule = field(default_factory=CostSchedule)
    order: np.ndarray | None = None
    cursor: int = 0
    steps: int = 0
    seconds: float = 0.0
    images: int = 0  # clean images pushed through the model forward and backward
    success_sum: float = 0.0
    norm_sum: float = 0.0
    best: tuple[np.ndarray, np.ndarray, float] | None = None  # mask, pattern, success
    finished: bool = False  # early stop, the step limit, or dropped
    dropped: bool = False  # lost its label's start trial: another start went on
    best_norms: list[float] = field(default_factory=list)  # best norm after each step (inf until one is found)
    saved: tuple[torch.Tensor, ...] | None = None  # while paused: mask_tanh, pattern_tanh, 4 Adam moments, steps
    late: bool = False  # opened after its label's first steps (ReverseSession.open_starts): not step-aligned
    mask_max: float | None = None  # its initial mask's range where not the config's (ReverseSession.restart)
    pool: np.ndarray | None = None  # indices of the clean images it draws from (None: all of them)

    @property
    def norm(self) -> float:
        """The best norm so far: an upper bound on the final one (inf until the success threshold is reached)."""
        return self.schedule.best_norm

    def initial_mask_max(self, config: ReverseConfig) -> float:
        """Its initial mask's range: its own where given, else its start's in `config`."""
        return config.initial_mask_max_of(self.index) if self.mask_max is None else self.mask_max

    @property
    def trigger_norm(self) -> float:
        """The L1 norm of the best mask itself (inf until one is found): what starts are compared by."""
        return math.inf if self.best is None else float(np.abs(self.best[0]).sum())

    def next_indices(self, count: int, population: int) -> np.ndarray:
        """Shuffled passes over the clean images (or over its pool of them), as the reference's data generator."""
        if self.pool is not None:
            population = len(self.pool)
        picked = []
        while count:
            if self.order is None or self.cursor >= population:
                self.order, self.cursor = self.rng.permutation(population), 0
            take = min(count, population - self.cursor)
            picked.append(self.order[self.cursor : self.cursor + take])
            self.cursor += take
            count -= take
        drawn = np.concatenate(picked)
        return drawn if self.pool is None else self.pool[drawn]


@dataclass
class LabelRun:
    """One label being reversed from one or more starts; it stands where its best start stands."""

    label: int
    starts: list[StartRun]

    @property
    def norm(self) -> float:
        """The smallest best norm of any start so far: an upper bound on the final one."""
        return min(start.norm for start in self.starts)

    @property
    def finished(self) -> bool:
        return all(start.finished for start in self.starts)

    @property
    def steps(self) -> int:
        """Where the label stands: the starts step side by side, so the furthest start's count."""
        return max(start.steps for start in self.starts)

    @property
    def steps_spent(self) -> int:
        """The work done: steps over all starts."""
        return sum(start.steps for start in self.starts)

    @property
    def images(self) -> int:
        """Clean images pushed forward and backward over all starts."""
        return sum(start.images for start in self.starts)

    @property
    def best_norms(self) -> list[float]:
        """The label's best norm after each of its steps: the smallest over the starts opened with it (a finished
        start keeps its last; a late start's steps came later and are left out)."""
        each = [start.best_norms for start in self.starts if not start.late]
        length = max(len(norms) for norms in each)
        padded = [norms + (norms[-1:] or [math.inf]) * (length - len(norms)) for norms in each]
        return [min(norms) for norms in zip(*padded, strict=True)] if length else []

    @property
    def live(self) -> list[StartRun]:
        """The starts not dropped by the start trial."""
        return [start for start in self.starts if not start.dropped]

    def in_trial(self, trial_steps: int) -> bool:
        """Whether the label's starts are still on trial: more than one is live and `trial_steps` is set."""
        return trial_steps > 0 and len(self.live) > 1

    def end_trial(self, trial_steps: int) -> StartRun | None:
        """Once every live start has run `trial_steps` steps (or finished), keep the one with the smallest
        trigger so far (the first on ties) and drop the others; the kept start, or None while the trial runs."""
        live = self.live
        if not self.in_trial(trial_steps) or any(s.steps < trial_steps and not s.finished for s in live):
            return None
        kept = min(live, key=lambda start: start.trigger_norm)
        for start in live:
            if start is not kept:
                start.dropped = start.finished = True
                start.saved = None
        return kept

    def best_start(self) -> StartRun:
        """The start whose trigger the label keeps: the smallest mask a live start found, else the first live
        start's."""
        return min(self.live, key=lambda start: start.trigger_norm)


ProgressCallback = Callable[[LabelTrigger], None]


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX (torch.cpu has no public check)."""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return native is not None and bool(native())


# CPU stacking was measured on 32x32 and 64x64 inputs; larger images fill the cores at one label a pass, and
# activations grow with the pass
CPU_STACKING_MAX_PIXELS = 64 * 64
# a GPU pass holds every start of every label up to this many input pixels (3,200 images of 64x64: 200 slots of
# 16 on an H200, where the Tiny-ImageNet ResNet's full scan took 20.0 s against 32.7 s at 512 images a pass)
GPU_PIXELS_PER_PASS = 3200 * 64 * 64


def auto_labels_per_batch(
    device: torch.device, mini_batch: int, label_count: int, image_pixels: int, starts: int = 1
) -> int:
    """How many starts share a forward pass. On a GPU every start of every label, up to `GPU_PIXELS_PER_PASS`
    (a pass of a small model is launch-bound: fewer, wider passes; the GTSRB replica's full scan took 10.2 s at
    all 86 starts a pass against 16.3 s at 32). On a CPU with native bfloat16, about 64 images a pass for images
    up to 64x64 (a recent Xeon: stacking 4 labels of 16 images measured 1.1x to 1.9x faster per label than one at
    a time, in float32 too; benchmarks/reverse_speed.py); one label at a time elsewhere: on other CPUs stacking
    measured slower. The labels' optimizations stay separate, but a convolution's round-off depends on the batch
    size, and the reversal amplifies round-off: a label's trigger can differ with the width, as it does between
    float32 and bfloat16 (never with the run: the same width is chosen on the same machine)."""
    if device.type == "cuda":
        return max(1, min(label_count * starts, GPU_PIXELS_PER_PASS // (mini_batch * image_pixels)))
    if cpu_has_native_bfloat16() and image_pixels <= CPU_STACKING_MAX_PIXELS:
        images_per_pass = 64
    else:
        images_per_pass = mini_batch
    return max(1, min(label_count, images_per_pass // mini_batch))


def fit_to_memory(run_pass: Callable[[int], object], width: int) -> int:
    """The widest of `width`, `width // 2`, ... down to 1 at which `run_pass(width)` runs without running out of
    GPU memory (the automatic width counts pixels, not the model's activations); ResourceError where none does."""
    while True:
        try:
            run_pass(width)
            return width
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if width == 1:
                raise ResourceError(
                    "the model does not fit in GPU memory even one label a pass (--labels-per-batch 1); scan "
                    "with --device cpu or on a larger GPU"
                ) from None
            width //= 2


def use_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether the model runs under bfloat16 autocast for `precision` ("float32", "bfloat16" or "auto")."""
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # without native bfloat16 instructions autocast is slower than float32
    return device.type == "cpu" and cpu_has_native_bfloat16()


class TriggerReverser:
    """`TriggerReverser(model, config).reverse(images, labels)`: one reversed trigger per label.

    `model` maps raw NCHW pixels to log-probabilities (see scanner.model.ScoringModel).
    """

    def __init__(self, model: torch.nn.Module, config: ReverseConfig, device: torch.device, seed: int = 0):
        self.model = model
        self.config = config
        self.device = device
        self.seed = seed
        self.bfloat16 = use_bfloat16(config.precision, device)

    def reverse(
        self, images: np.ndarray, labels: Sequence[int], progress: ProgressCallback | None = None
    ) -> list[LabelTrigger]:
        """Reverse a trigger for every label, each to its own early stop, from clean raw NCHW images (float32,
        0-255)."""
        session = self.session(images, len(labels))
        runs = [session.start(label) for label in labels]
        session.advance(runs, None, progress)
        return [session.result(run) for run in runs]

    def session(self, images: np.ndarray, label_count: int) -> ReverseSession:
        if len(images) == 0:
            raise ValueError("no clean images to reverse triggers with")
        return ReverseSession(self, torch.from_numpy(images).to(self.device), label_count)

    def _run_step(self, clean: torch.Tensor, slots: list[StartRun], params: _SlotTensors, mini_batch: int) -> None:
        config = self.config
        started = time.perf_counter()
        targets = torch.tensor([slot.label for slot in slots], device=self.device)
        costs = torch.tensor([slot.schedule.cost for slot in slots], device=self.device, dtype=clean.dtype)
        # the step's draws for every mini-batch at once, and its sums kept on the device: on a GPU the host then
        # waits for it twice a step rather than at every mini-batch (float64 sums add as Python's floats did)
        draws = [
            np.stack([slot.next_indices(mini_batch, len(clean)) for slot in slots])
            for _ in range(config.batches_per_step)
        ]
        indices = torch.from_numpy(np.stack(draws)).to(self.device)  # (steps, K, B)
        success_sum = torch.zeros(len(slots), dtype=torch.float64, device=self.device)
        norm_sum = torch.zeros_like(success_sum)
        for index in indices:
            log_probs, norms, mask_grad, pattern_grad = self._pass(
                clean[index], params.mask_tanh, params.pattern_tanh, targets, costs
            )
            with torch.no_grad():
                success_sum += (log_probs.argmax(dim=2) == targets.view(-1, 1)).float().mean(dim=1).double()
                norm_sum += norms.double()
                params.step(mask_grad, pattern_grad, config)
        elapsed = (time.perf_counter() - started) / len(slots)
        for slot, slot_success, slot_norm in zip(slots, success_sum.tolist(), norm_sum.tolist(), strict=True):
            slot.success_sum = slot_success
            slot.norm_sum = slot_norm
            slot.seconds += elapsed
            slot.images += mini_batch * config.batches_per_step

    def _pass(
        self,
        batch: torch.Tensor,
        mask_tanh: torch.Tensor,
        pattern_tanh: torch.Tensor,
        targets: torch.Tensor,
        costs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One forward and backward pass of K slots' mini-batches `batch` (K, B, C, H, W): (log-probabilities
        (K, B, classes), mask norms (K,), the gradients of the mask and pattern parameters)."""
        slots, mini_batch = batch.shape[:2]
        mask_tanh.requires_grad_(True)
        pattern_tanh.requires_grad_(True)
        mask = mask_from_tanh(mask_tanh)  # (K, 1, H, W)
        pattern = pattern_from_tanh(pattern_tanh)  # (K, C, H, W)
        stamped = stamp(batch, mask.unsqueeze(1), pattern.unsqueeze(1))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            log_probs = self.model(stamped.flatten(0, 1)).float().view(slots, mini_batch, -1)
        target_log_probs = log_probs.gather(2, targets.view(-1, 1, 1).expand(-1, mini_batch, 1))
        cross_entropy = -target_log_probs.squeeze(2).mean(dim=1)  # (K,)
        norms = mask.sum(dim=(1, 2, 3))  # (K,)
        loss = (cross_entropy + costs * norms).sum()
        mask_grad, pattern_grad = torch.autograd.grad(loss, [mask_tanh, pattern_tanh])
        return log_probs, norms, mask_grad, pattern_grad

    def probe(self, clean: torch.Tensor, slots: int) -> None:
        """One pass of `slots` slots over the first clean images, nothing kept: what a scan's widest pass needs
        in memory (to fit the width to a GPU)."""
        mini_batch = self.config.mini_batch
        channels, height, width = clean.shape[1:]
        index = torch.arange(slots * mini_batch, device=clean.device) % len(clean)
        batch = clean[index].view(slots, mini_batch, channels, height, width)
        mask_tanh = torch.zeros((slots, 1, height, width), device=clean.device)
        pattern_tanh = torch.zeros((slots, channels, height, width), device=clean.device)
        targets = torch.zeros(slots, dtype=torch.long, device=clean.device)
        self._pass(batch, mask_tanh, pattern_tanh, targets, torch.zeros(slots, device=clean.device))

    def _after_step(self, slot: StartRun, params: _SlotTensors, index: int) -> bool:
        """Advance one slot's schedule after a step; True when the label is finished."""
        batches = self.config.batches_per_step
        success, norm = slot.success_sum / batches, slot.norm_sum / batches
        slot.steps += 1
        outcome = advance_schedule(slot.schedule, success, norm, self.config)
        slot.best_norms.append(slot.schedule.best_norm)
        if outcome.improved:
            mask, pattern = params.current(index)
            slot.best = (mask, pattern, success)
        return outcome.stop or slot.steps >= self.config.max_steps

    def _result(self, run: LabelRun) -> LabelTrigger:
        """The label's trigger: its best start's; steps and seconds spent over all starts."""
        slot = run.best_start()
        found = slot.best is not None
        if found:
            mask, pattern, success = slot.best
        else:
            mask, pattern = _SlotTensors.unpack(slot.saved)
            success = slot.success_sum / self.config.batches_per_step
        return LabelTrigger(
            label=slot.label,
            mask=mask,
            pattern=pattern,
            norm=float(np.abs(mask).sum()),
            attack_success=float(success),
            found=found,
            steps=run.steps_spent,
            seconds=sum(start.seconds for start in run.starts),
            final_cost=slot.schedule.cost,
            images=run.images,
        )


class ReverseSession:
    """Resumable reverse engineering over one set of clean images: runs start, advance by some steps (up to
    `labels_per_batch` of them sharing each forward pass), pause and resume."""

    def __init__(self, reverser: TriggerReverser, clean: torch.Tensor, label_count: int):
        self.reverser = reverser
        self.clean = clean
        config = reverser.config
        pixels = clean.shape[-2] * clean.shape[-1]
        self.width = config.labels_per_batch or auto_labels_per_batch(
            reverser.device, config.mini_batch, label_count, pixels, config.starts
        )
        if reverser.device.type == "cuda" and not config.labels_per_batch:
            self.width = fit_to_memory(lambda slots: reverser.probe(clean, slots), self.width)

    def start(self, label: int, starts: int = 0) -> LabelRun:
        """A run of `label` with its first `starts` starts open (0: all the config's); the others open with
        `open_starts`."""
        count = min(starts, self.reverser.config.starts) if starts > 0 else self.reverser.config.starts
        return LabelRun(label, [StartRun(label, start_rng(self.reverser.seed, label, k), k) for k in range(count)])

    def restart(self, label: int, round_: int, mask_max: float | None = None) -> LabelRun:
        """A fresh run of `label`, every start open, its starts drawn after those of the `round_` runs before it
        (round 0: `start`'s), each mask uniform on [0, `mask_max`] (None: the config's range)."""
        count, seed = self.reverser.config.starts, self.reverser.seed
        draws = [start_rng(seed, label, round_ * count + k) for k in range(count)]
        return LabelRun(label, [StartRun(label, rng, k, mask_max=mask_max) for k, rng in enumerate(draws)])

    def start_pair(self, source: int, label: int, pool: np.ndarray) -> LabelRun:
        """A run of `label` over the clean images at `pool` only (those of class `source`), every start open."""
        seed = self.reverser.seed
        starts = range(self.reverser.config.starts)
        return LabelRun(label, [StartRun(label, start_rng(seed, label, k, source), k, pool=pool) for k in starts])

    def open_starts(self, run: LabelRun) -> None:
        """Open an unfinished run's remaining starts: each runs its start trial from step 0 while the run's first
        starts wait at theirs, and the smallest trigger goes on (as if every start had opened with the run)."""
        if run.finished:
            return
        for k in range(len(run.starts), self.reverser.config.starts):
            run.starts.append(StartRun(run.label, start_rng(self.reverser.seed, run.label, k), k, late=True))

    def advance(
        self,
        runs: Sequence[LabelRun],
        steps: int | None,
        progress: ProgressCallback | None = None,
        mini_batch: int | None = None,
        paused: ProgressCallback | None = None,
    ) -> None:
        """Run each unfinished run for up to `steps` more steps (None: until it finishes). A run that finishes
        or has spent its steps leaves its slot to the next, so the batch stays full. `progress` gets the
        result of each run that finishes, `paused` of each run whose starts have all spent their steps without it
        finishing (as it leaves, not at the end: the label scheduler's screen shows its progress so). `mini_batch`
        (at most the config's) runs each step's Adam updates on fewer images: as many updates per step, at a
        fraction of the cost, and a success test over fewer images (benchmarks/schedule_replay.py records screens
        made this way)."""
        config = self.reverser.config
        mini_batch = min(mini_batch or config.mini_batch, config.mini_batch)
        # an automatic width holds as many images a pass at a smaller mini-batch: more labels share it
        slots = self.width if config.labels_per_batch else self.width * (config.mini_batch // mini_batch)
        channels, height, width = self.clean.shape[1:]
        trial = config.start_trial_steps
        owner = {id(start): run for run in runs for start in run.starts}
        unfinished = [start for run in runs for start in run.starts if not start.finished]
        stop_at = {id(start): math.inf if steps is None else start.steps + steps for start in unfinished}
        # a start already through its label's trial waits for the late starts still on it (open_starts)
        pending = [start for start in unfinished if not (owner[id(start)].in_trial(trial) and start.steps >= trial)]

        def limit(start: StartRun) -> float:
            """The step the start leaves its slot at: the caller's, or the end of its label's start trial."""
            return min(stop_at[id(start)], trial) if owner[id(start)].in_trial(trial) else stop_at[id(start)]

        active: list[StartRun] = []
        reported: set[int] = set()  # runs passed to `progress` or `paused` (a trial can end two starts of one at once)
        params = _SlotTensors(self.reverser.device, channels, height, width)

        def fill() -> None:
            while pending and len(active) < slots:
                run = pending.pop(0)
                if run.saved is None:
                    params.append(run.rng, height, width, channels, run.initial_mask_max(self.reverser.config))
                else:
                    params.resume(run.saved)
                active.append(run)

        fill()
        while active:
            self.reverser._run_step(self.clean, active, params, mini_batch)
            leaving = []
            for i, start in enumerate(active):
                start.finished = self.reverser._after_step(start, params, i)
                if start.finished or start.steps >= limit(start):
                    leaving.append(i)
            left = []
            for i in reversed(leaving):
                start = active.pop(i)
                saved = params.pause(i)
                start.saved = None if start.dropped else saved  # dropped while in the batch: nothing to resume
                left.append(start)
            # only once every leaving start is saved: a label reported here may keep any of them
            for start in left:
                label_run = owner[id(start)]
                kept = label_run.end_trial(trial)
                if kept is not None and not kept.finished and kept.steps < stop_at[id(kept)]:
                    pending.insert(0, kept)  # the trial's winner goes on before the next label starts
                if id(label_run) in reported or any(owner[id(other)] is label_run for other in pending + active):
                    continue
                reported.add(id(label_run))
                callback = progress if label_run.finished else paused
                if callback:
                    callback(self.result(label_run))
            fill()

    def result(self, run: LabelRun) -> LabelTrigger:
        """The run's trigger so far: its best start's best mask, or its first start's current one when no start
        reached the threshold."""
        return self.reverser._result(run)


class _SlotTensors:
    """The stacked parameters and Adam state of the active slots (dim 0 = slot)."""

    def __init__(self, device: torch.device, channels: int, height: int, width: int):
        self.device = device
        self.mask_tanh = torch.zeros((0, 1, height, width), device=device)
        self.pattern_tanh = torch.zeros((0, channels, height, width), device=device)
        self.moments = [torch.zeros_like(self.mask_tanh) for _ in range(2)]
        self.moments += [torch.zeros_like(self.pattern_tanh) for _ in range(2)]
        self.steps = torch.zeros(0, device=device)

    def append(self, rng: np.random.Generator, height: int, width: int, channels: int, mask_max: float) -> None:
        """A new slot initialized as the reference does: uniform random mask (on [0, mask_max]) and pattern."""
        mask = to_tanh(mask_max * rng.random((1, 1, height, width))).astype(np.float32)
        pattern = to_tanh(rng.random((1, channels, height, width))).astype(np.float32)
        self.mask_tanh = torch.cat([self.mask_tanh.detach(), torch.from_numpy(mask).to(self.device)])
        self.pattern_tanh = torch.cat([self.pattern_tanh.detach(), torch.from_numpy(pattern).to(self.device)])
        self.moments = [torch.cat([m, m.new_zeros((1, *m.shape[1:]))]) for m in self.moments]
        self.steps = torch.cat([self.steps, torch.zeros(1, device=self.device)])

    def pause(self, index: int) -> tuple[torch.Tensor, ...]:
        """Remove one slot and return its state (for `resume`, or `unpack` to read its mask and pattern)."""
        tensors = (self.mask_tanh.detach(), self.pattern_tanh.detach(), *self.moments, self.steps)
        saved = tuple(tensor[index : index + 1].clone() for tensor in tensors)
        keep = [i for i in range(len(self.steps)) if i != index]
        self.mask_tanh = self.mask_tanh.detach()[keep]
        self.pattern_tanh = self.pattern_tanh.detach()[keep]
        self.moments = [m[keep] for m in self.moments]
        self.steps = self.steps[keep]
        return saved

    def resume(self, saved: tuple[torch.Tensor, ...]) -> None:
        mask, pattern, *moments, steps = saved
        self.mask_tanh = torch.cat([self.mask_tanh.detach(), mask])
        self.pattern_tanh = torch.cat([self.pattern_tanh.detach(), pattern])
        self.moments = [torch.cat([m, paused]) for m, paused in zip(self.moments, moments, strict=True)]
        self.steps = torch.cat([self.steps, steps])

    @staticmethod
    def unpack(saved: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(mask (H, W), pattern (C, H, W)) of a saved slot, as numpy."""
        with torch.no_grad():
            return mask_from_tanh(saved[0][0, 0]).cpu().numpy(), pattern_from_tanh(saved[1][0]).cpu().numpy()

    def step(self, mask_grad: torch.Tensor, pattern_grad: torch.Tensor, config: ReverseConfig) -> None:
        self.mask_tanh = self.mask_tanh.detach()
        self.pattern_tanh = self.pattern_tanh.detach()
        self.steps += 1
        mask_m, mask_v, pattern_m, pattern_v = self.moments
        hyper = (config.learning_rate, config.beta1, config.beta2)
        adam_update(self.mask_tanh, mask_grad, mask_m, mask_v, self.steps, *hyper)
        adam_update(self.pattern_tanh, pattern_grad, pattern_m, pattern_v, self.steps, *hyper)

    def current(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask (H, W), pattern (C, H, W)) of one slot, as numpy."""
        return self.unpack((self.mask_tanh[index : index + 1], self.pattern_tanh[index : index + 1]))
