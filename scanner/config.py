"""Every knob of a scan, in dataclasses that the CLI, the config file, the audit and the report share.

There is one way from plain settings (a config file's tables, CLI flags, an audit manifest) to a config:
`make_config(settings)` (or `settings_to_config(*layers)` for several layers, the later winning), which checks
every value's type and range and gives a one-line ConfigError naming the bad one.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError
from cleanse_base.files import read_toml
from cleanse_base.limits import Limits, parse_limits
from cleanse_base.plain import from_plain, type_name
from cleanse_base.text import printable
from converters.overrides import ContractOverrides

PRECISIONS = ("float32", "bfloat16", "auto")
SCALE_NAMES = ("raw", "unit", "inception", "imagenet-caffe", "imagenet-torch", "custom")  # scanner/preprocess.py
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed
MAX_SECOND_OPINIONS = 8  # each is a whole scan again
LIMITS_TABLE = "limits"  # the config file's [limits] table: cleanse_base.limits.Limits, not scan settings
# Keys that older config files used, with their new names: the error tells the user which to write.
RENAMED = {("reverse", "batch_size"): "mini_batch", ("contract", "batch_size"): "fixed_batch"}


@dataclass(frozen=True)
class ReverseConfig:
    """Neural Cleanse trigger reverse engineering (names follow the reference implementation)."""

    mini_batch: int = 32  # images per Adam update
    images_per_step: int = 1000  # a step runs images_per_step // mini_batch mini-batches
    max_steps: int = 1000
    init_cost: float = 1e-3
    learning_rate: float = 0.1
    beta1: float = 0.5
    beta2: float = 0.9
    attack_success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier_up: float = 2.0
    cost_multiplier_down: float = 2.0**1.5
    early_stop: bool = True
    early_stop_threshold: float = 1.0  # the best norm must fall below threshold x the previous best to count
    early_stop_patience: int = 25
    labels_per_batch: int = 0  # labels reversed together in one forward pass; 0 = choose for the device
    # independent reversals per label from different random starts; the label keeps the smallest trigger found
    starts: int = 1
    # with several starts, every start first runs this many steps; then only the start with the smallest trigger
    # so far goes on (0: every start runs to its own end)
    start_trial_steps: int = 0
    # each start's mask begins uniform on [0, initial_mask_max] (the reference: 1, a mask half open everywhere). From
    # a small mask the reversal grows the mask where pixels move the label most; from a large one Adam shrinks every
    # pixel at the same pace once the cost starts, and a patch whose pattern has not yet formed fades with the rest.
    # Measured, not yet the default (docs/measurements.md, "Initial mask"). A list gives each start its own, start k
    # the k-th (the last for the starts past its end): [1, 0.1] runs the reference's start beside a small one
    initial_mask_max: float | tuple[float, ...] = 1.0
    # the model's forward/backward in float32, or bfloat16 (autocast); "auto" = bfloat16 where the device has
    # native bfloat16 arithmetic (AVX512-BF16/AMX CPUs, CUDA GPUs that support it), else float32
    precision: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.initial_mask_max, tuple) and len(self.initial_mask_max) == 1:
            object.__setattr__(self, "initial_mask_max", self.initial_mask_max[0])  # one range for every start
        self.validate()

    @property
    def batches_per_step(self) -> int:
        return max(1, self.images_per_step // self.mini_batch)

    @property
    def initial_mask_maxima(self) -> tuple[float, ...]:
        value = self.initial_mask_max
        return value if isinstance(value, tuple) else (value,)

    def initial_mask_max_of(self, start: int) -> float:
        """Start `start`'s initial mask range: its own entry, or the last one past the list's end."""
        maxima = self.initial_mask_maxima
        return maxima[min(start, len(maxima) - 1)]

    def validate(self) -> ReverseConfig:
        positive = (
            "mini_batch", "images_per_step", "max_steps", "learning_rate", "patience", "early_stop_patience", "starts"
        )  # fmt: skip
        for name in positive:
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"reverse.{name} must be positive, not {getattr(self, name)}")
        if not 0 < self.attack_success_threshold <= 1:
            raise ConfigError("reverse.attack_success_threshold must be in (0, 1]")
        if not (1 < self.cost_multiplier_up < math.inf and 1 < self.cost_multiplier_down < math.inf):
            raise ConfigError("reverse.cost_multiplier_up and cost_multiplier_down must be above 1")
        if not (0 <= self.init_cost < math.inf and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("reverse.init_cost must be 0 or positive, beta1 and beta2 in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"reverse.precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.labels_per_batch < 0:
            raise ConfigError("reverse.labels_per_batch must be 0 (auto) or positive")
        if self.initial_mask_max == ():
            raise ConfigError("reverse.initial_mask_max must not be an empty list")
        if not all(0 < value <= 1 for value in self.initial_mask_maxima):
            raise ConfigError(f"reverse.initial_mask_max must be in (0, 1], not {self.initial_mask_max}")
        if self.start_trial_steps < 0:
            raise ConfigError("reverse.start_trial_steps must be 0 (every start to its end) or positive")
        return self


# `paper` holds the reference numbers (Wang et al. 2019, gtsrb_visualize_example.py). `default` runs the
# same algorithm on a smaller budget, calibrated on the GTSRB replica against a full `paper` scan
# (benchmarks/scan_gtsrb.py; the figures are in the README): smaller mini-batches give more Adam updates per
# image, which matter more than images; steps of 256 images keep the success test from passing by luck; the
# patience and early stop let typical labels shrink as far as `paper` does (a shorter schedule left their
# norms higher and flagged natural small triggers); bfloat16 autocast, where native, is faster with the same
# norms within noise. Two starts with a 10-step trial: one start misses a planted trigger it can find far more
# often than the trial's second start costs (benchmarks/start_trials.py; figures in docs/measurements.md, "Starts").
PRESETS: dict[str, ReverseConfig] = {
    "paper": ReverseConfig(),
    "default": ReverseConfig(
        mini_batch=16,
        images_per_step=256,
        max_steps=300,
        patience=3,
        early_stop_patience=12,
        precision="auto",
        starts=2,
        start_trial_steps=10,
    ),
}


PRESET_DECISIONS = {"paper": "paper", "default": "evidence"}  # a preset's decision rule, unless one is given

SCHEDULES = ("auto", "full", "screened")
DECISIONS = ("paper", "evidence")  # scanner/decision/rules.py


@dataclass(frozen=True)
class ScheduleConfig:
    """How far each label is reversed (scanner/schedule.py): `full` runs every label to its own early stop;
    `screened` screens every label briefly and spends the rest where the verdict can still change; `auto` screens a
    scan of at least `screen_from` labels under the evidence rule and runs `full` otherwise (`for_scan`)."""

    mode: str = "auto"
    # `auto` screens from this many labels up. The screen saves more the more labels there are, and projects the
    # stopped labels from few finished ones: at 10 classes it saved 1.21x of the label stage's images and changed the
    # flags of 2 of 33 zoo scans; at 43 it flagged what `full` flags on the 42 zoo scans (1.64x fewer images) and on
    # 5 of the 6 replica scans, the sixth leaving out a close false flag of `full` (docs/measurements.md, "Label
    # schedule")
    screen_from: int = 20
    screen_steps: int = 10  # steps every label runs before any is stopped
    calibration_labels: int = 5  # labels nearest the median run to the end: how stopped labels would have moved
    resamples: int = 20  # projections, each stopped label moved as a random calibration label did, that must all agree
    # labels drawn at random among the stopped ones that run to their end when a flag is short of sure
    # (`Decision.sure`): an unbiased sample of how stopped labels move, every resample drawn from it must agree
    # before such a flag settles (0: a flag short of sure waits for every label, as `full`). Calibration labels lie
    # nearest the median and can move more alike than the rest; on the zoo this bounds what a marginal flag costs at
    # 200 classes (docs/measurements.md, "Label schedule")
    check_labels: int = 10
    # starts each label screens with (0: all of reverse.starts); a label that runs on (calibration, near a flag, the
    # likeliest targets) opens the rest then, and ends where it would have with all of them. One start halves the
    # screen; on the 14 GTSRB zoo models (seeds 0 to 2) and both replicas it flagged what every start flags
    # (docs/measurements.md, "Label schedule")
    screen_starts: int = 1
    # share of the additive look's steps from zero (additive.steps, every label the same) a screened scan runs; 1:
    # the whole look. At 200 classes the look costs about as much as the screen of every label; on the zoo half the
    # steps kept every verdict but one close call, where cutting the rungs' steps too cost a flag (docs/measurements.md,
    # "Label schedule")
    look_share: float = 0.5
    # images in each of the screen's mini-batches (0: the reversal's own): as many Adam updates per screened step on
    # fewer images. A label that runs on goes back to the reversal's mini-batch.
    screen_mini_batch: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def for_scan(self, labels: int, decision: str) -> ScheduleConfig:
        """The schedule a scan of `labels` labels under `decision` runs: `auto` resolved to `screened` from
        `screen_from` labels up under the evidence rule, else to `full` (the paper rule reverses every label whole);
        `full` and `screened` as they are."""
        if self.mode != "auto":
            return self
        screened = decision == "evidence" and labels >= self.screen_from
        return dataclasses.replace(self, mode="screened" if screened else "full")

    def look(self, additive: AdditiveConfig) -> AdditiveConfig:
        """The additive look this schedule runs: `full` the whole of it, `screened` its `look_share` of the steps
        from zero (rounded up; 0, no look, stays 0). The rungs' steps going on from a found direction stay."""
        if self.mode != "screened" or not additive.steps:
            return additive
        return dataclasses.replace(additive, steps=math.ceil(additive.steps * self.look_share))

    def validate(self) -> ScheduleConfig:
        if self.mode not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, not {printable(self.mode)!r}")
        for name in ("screen_steps", "calibration_labels", "resamples", "screen_from"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"schedule.{name} must be positive, not {getattr(self, name)}")
        if self.check_labels < 0:
            raise ConfigError(f"schedule.check_labels must be 0 (none) or positive, not {self.check_labels}")
        if self.screen_starts < 0:
            raise ConfigError(f"schedule.screen_starts must be 0 (all) or positive, not {self.screen_starts}")
        if not (math.isfinite(self.look_share) and 0 < self.look_share <= 1):
            raise ConfigError(f"schedule.look_share must be in (0, 1], not {self.look_share}")
        if self.screen_mini_batch < 0:
            raise ConfigError(
                f"schedule.screen_mini_batch must be 0 (the reversal's) or positive, not {self.screen_mini_batch}"
            )
        return self


@dataclass(frozen=True)
class PairConfig:
    """The source-specific look (scanner/pairs.py): triggers reversed from one source class's images to a target,
    for backdoors that only one source carries (label-specific, all-to-all). The evidence rule only."""

    # the most (source, target) pairs reversed: all of them when the whole table fits, else none (0: none); 90 = every
    # pair of 10 classes
    max_pairs: int = 90
    steps: int = 30  # steps each pair runs at most (never more than reverse.max_steps): every pair the same budget
    images_per_step: int = 64
    min_source_images: int = 10  # sources with fewer clean images predicted as them are left out
    # each pair's mask begins uniform on [0, this] (ReverseConfig.initial_mask_max); small masks shrank the natural
    # pairs with the planted ones on the zoo (docs/measurements.md, "Detection on the model zoo"): the reference's 1
    initial_mask_max: float = 1.0
    # images of each class every pair's trigger is stamped on to measure where it carries them (scanner.pairs.
    # carried_classes: an all-to-all backdoor's trigger carries each class to a label of its own)
    carry_images: int = 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> PairConfig:
        if self.max_pairs < 0:
            raise ConfigError(f"pairs.max_pairs must be 0 (none) or positive, not {self.max_pairs}")
        for name in ("steps", "images_per_step", "min_source_images", "carry_images"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"pairs.{name} must be positive, not {getattr(self, name)}")
        if not (math.isfinite(self.initial_mask_max) and 0 < self.initial_mask_max <= 1):
            raise ConfigError(f"pairs.initial_mask_max must be in (0, 1], not {self.initial_mask_max}")
        return self


@dataclass(frozen=True)
class AdditiveConfig:
    """The additive look (scanner/additive.py): per label, a universal additive perturbation bounded by `epsilon`
    raw pixels, optimized for `steps` steps of `mini_batch` images; its attack success is judged against the other
    labels' (blended and SIG backdoors). The evidence rule only."""

    steps: int = 60  # 0: no additive look
    epsilon: float = 6.0  # largest change of any pixel, on the 0-255 scale
    mini_batch: int = 32  # on the zoo the verdicts of 64 (126 scans), at half the images
    # bounds judged: the settled one and the rungs above it (within the ladder); 1 judges the settled one alone
    rungs: int = 2
    # steps at each rung above the settled bound, every label going on from its perturbation at the rung below
    # (on the zoo the verdicts of 60 fresh steps: docs/measurements.md, "The additive look"); 0: from zero for
    # `steps` steps, as schema 1.14's look ran
    rung_steps: int = 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> AdditiveConfig:
        if self.steps < 0:
            raise ConfigError(f"additive.steps must be 0 (no additive look) or positive, not {self.steps}")
        if self.rung_steps < 0:
            raise ConfigError(f"additive.rung_steps must be 0 (from zero) or positive, not {self.rung_steps}")
        if self.rungs < 1:
            raise ConfigError(f"additive.rungs must be at least 1 (the settled bound), not {self.rungs}")
        if not (math.isfinite(self.epsilon) and 0 < self.epsilon <= 255):
            raise ConfigError(f"additive.epsilon must be in (0, 255] (raw pixels), not {self.epsilon}")
        if self.mini_batch <= 0:
            raise ConfigError(f"additive.mini_batch must be positive, not {self.mini_batch}")
        return self


@dataclass(frozen=True)
class RetryConfig:
    """The retry (scanner/retry.py): the labels with the smallest triggers and the likeliest targets reversed again
    from fresh starts, each keeping the smallest trigger any round found. The evidence rule only."""

    # fresh runs of each retried label (every start of reverse.starts, its trial too); 0: no retry. On the zoo two
    # rounds of the smallest trigger caught 4 more of 42 patch scans exactly (docs/measurements.md, "Retry")
    rounds: int = 2
    # how many of the smallest triggers are retried; 0: ceil(sqrt(labels scanned)), which on the zoo caught fewer
    # patch scans than one: the retried natural triggers widen the spread the others are judged against
    labels: int = 1
    # how many of the likeliest targets (retry.likeliest_targets: the labels with the highest mean log-probability on
    # other classes' clean images) are retried besides the smallest triggers; 0: none. On the zoo one caught the 6 px
    # patch whose target ended sixth smallest and flagged one clean scan fewer (docs/measurements.md, "Retry")
    likeliest: int = 1
    # each round's starts' masks begin uniform on [0, this] (reverse.initial_mask_max's range for the first round):
    # on the zoo small masks caught more patch scans than the reference's 1 in the retry (docs/measurements.md, "Retry")
    initial_mask_max: float = 0.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> RetryConfig:
        for name in ("rounds", "labels", "likeliest"):
            if getattr(self, name) < 0:
                raise ConfigError(f"retry.{name} must be 0 or positive, not {getattr(self, name)}")
        if not (math.isfinite(self.initial_mask_max) and 0 < self.initial_mask_max <= 1):
            raise ConfigError(f"retry.initial_mask_max must be in (0, 1], not {self.initial_mask_max}")
        return self


@dataclass(frozen=True)
class ScanConfig:
    """A scan's settings. `reverse` left out (None) takes the numbers of `preset`, so that
    `ScanConfig(preset="paper")` is a paper scan; given, it wins over the preset."""

    preset: str = "default"
    reverse: ReverseConfig | None = None
    # evidence: several measurements per label, a p-value per model; paper: MAD of L1 norms; empty: the preset's
    decision: str = ""
    mad_threshold: float = 2.0  # the paper rule's anomaly index threshold
    alpha: float = 0.001  # the evidence rule's family-wise p-value below which a label is flagged
    # evidence rule: an unflagged model whose p-value lies below alpha times this is inconclusive (1: never)
    inconclusive_factor: float = 10.0
    # a close result (scanner/second_opinion.py) runs the scan again from up to this many more seeds (its seed + 1,
    # + 2, ...) and takes the verdict more than half of the runs reach (0: none, the close result stands)
    second_opinions: int = 2
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default
    labels: tuple[int, ...] = ()  # labels to reverse; empty = all
    max_images: int = 0  # clean images used; 0 = all
    scale: str = ""  # input scaling mode; empty = pick by accuracy when labels exist, else the default
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    min_accuracy: float = -1.0  # refuse below this clean accuracy; negative = a margin above chance
    input_name: str = ""
    output_name: str = ""
    contract: ContractOverrides = field(default_factory=ContractOverrides)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    additive: AdditiveConfig = field(default_factory=AdditiveConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {printable(self.preset)!r}; choose one of {', '.join(PRESETS)}")
        if self.reverse is None:
            object.__setattr__(self, "reverse", PRESETS[self.preset])
        if not self.decision:
            object.__setattr__(self, "decision", PRESET_DECISIONS[self.preset])
        for name in ("labels", "mean", "std"):  # lists from a file or a caller become the declared tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> ScanConfig:
        if not (math.isfinite(self.mad_threshold) and self.mad_threshold > 0):
            raise ConfigError(
                f"mad_threshold must be a positive number, not {self.mad_threshold} (no label can be flagged, or "
                "every label would be)"
            )
        if self.decision not in DECISIONS:
            raise ConfigError(f"decision must be one of {', '.join(DECISIONS)}, not {printable(self.decision)!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), not {self.alpha}")
        if not 1 <= self.inconclusive_factor < math.inf:
            raise ConfigError(f"inconclusive_factor must be 1 (no band) or above, not {self.inconclusive_factor}")
        if not 0 <= self.second_opinions <= MAX_SECOND_OPINIONS:
            raise ConfigError(f"second_opinions must be in [0, {MAX_SECOND_OPINIONS}], not {self.second_opinions}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be in [0, {SEED_MAX}], not {self.seed}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"unknown device {printable(self.device)!r} (use auto, cpu, cuda or cuda:N)")
        if self.threads < 0 or self.max_images < 0:
            raise ConfigError("threads and max_images must be 0 (default / all) or positive")
        check_label_list(self.labels)
        if self.scale and self.scale not in SCALE_NAMES:
            raise ConfigError(f"unknown scale {printable(self.scale)!r}; choose one of {', '.join(SCALE_NAMES)}")
        if not all(math.isfinite(value) for value in self.mean + self.std) or any(v <= 0 for v in self.std):
            raise ConfigError("mean must be finite numbers and std positive ones")
        if not (math.isfinite(self.min_accuracy) and self.min_accuracy <= 1):
            raise ConfigError(f"min_accuracy must be at most 1 (negative: automatic), not {self.min_accuracy}")
        check_contract(self.contract)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_contract(overrides: ContractOverrides) -> None:
    for name in ("channels", "height", "width", "num_classes", "fixed_batch"):
        value = getattr(overrides, name)
        if value is not None and value <= 0:
            raise ConfigError(f"contract.{name} must be positive, not {value}")


def check_label_list(labels: Sequence[int]) -> None:
    """ConfigError for labels that are negative or repeated (the model's range is checked once it is read)."""
    negative = [label for label in labels if label < 0]
    if negative:
        raise ConfigError(f"labels must be 0 or positive, not {negative[:10]}")
    repeated = sorted({label for label in labels if list(labels).count(label) > 1})
    if repeated:
        raise ConfigError(f"labels must be distinct; repeated: {repeated[:10]}")


def check_label_range(labels: Iterable[int], num_classes: int) -> list[int]:
    """The labels, or a ConfigError naming those outside a model with `num_classes` classes (scan and
    mitigation both check with this)."""
    chosen = list(labels)
    bad = [label for label in chosen if not 0 <= label < num_classes]
    if bad:
        raise ConfigError(f"label(s) {bad[:10]} out of range for a model with {num_classes} classes")
    return chosen


def make_config(settings: dict[str, Any]) -> ScanConfig:
    """A ScanConfig from nested plain values (a config file merged with CLI flags): top-level scan keys, with
    `reverse` and `contract` tables. `preset` picks the ReverseConfig that `reverse` settings then adjust.
    Every value's type is checked: a one-line ConfigError names the bad one."""
    if not isinstance(settings, dict):
        raise ConfigError(f"scan settings: expected a table, not {type_name(settings)}")
    for (table, old), new in RENAMED.items():
        if isinstance(settings.get(table), dict) and old in settings[table]:
            raise ConfigError(f"{table}.{old} was renamed {table}.{new}")
    if LIMITS_TABLE in settings:
        raise ConfigError("[limits] is not a scan setting: give it in the config file or with --limit")
    preset = settings.get("preset") or "default"
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {printable(preset)!r}; choose one of {', '.join(PRESETS)}")
    reverse = settings.get("reverse") or {}
    if not isinstance(reverse, dict):
        raise ConfigError(f"scan settings.reverse: expected a table, not {type_name(reverse)}")
    tuned = from_plain(ReverseConfig, {**dataclasses.asdict(PRESETS[preset]), **reverse}, "scan settings.reverse")
    top = {key: value for key, value in settings.items() if key != "reverse"}
    return dataclasses.replace(from_plain(ScanConfig, {**top, "preset": preset}, "scan settings"), reverse=tuned)


def settings_to_config(*layers: dict[str, Any]) -> ScanConfig:
    """A ScanConfig from layers of nested settings, each later one winning key by key (e.g. an audit's
    manifest [settings], a model's own entry, then the command line's flags)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_settings(merged, layer)
    return make_config(merged)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level scan keys, with [reverse], [contract] and [limits] tables."""
    return read_toml(path)


def merge_settings(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins; nested tables merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def split_limits(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the scan settings, the [limits] table) of a config file's settings."""
    rest = {key: value for key, value in settings.items() if key != LIMITS_TABLE}
    table = settings.get(LIMITS_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[limits] must be a table, not {type_name(table)}")
    return rest, table


def make_limits(table: dict[str, Any], flags: Sequence[str] = ()) -> Limits:
    """Limits from a config file's [limits] table (numbers, or text such as "4G"), then `--limit NAME=VALUE`
    flags over it."""
    items = []
    for name, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)) or re.search(r"[,=]", str(value)):
            raise ConfigError(f"limits.{printable(name)} must be a whole number or text like 4G, not {value!r}")
        items.append(f"{name}={value}")
    limits = parse_limits(",".join(items))
    for flag in flags:
        if "=" not in flag:
            raise ConfigError(f"--limit expects NAME=VALUE, not {printable(flag)!r}")
        limits = parse_limits(flag, limits)
    return limits
