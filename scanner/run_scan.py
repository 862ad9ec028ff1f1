"""`scan(model_path, data, config) -> ScanReport`: the whole detection pipeline, under the CLI."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cleanse_base.errors import ConfigError, DataError
from cleanse_base.version import __version__
from converters.intake import IntakeResult, intake_model
from converters.onnx_to_torch import ConvertedModel, load_onnx_classifier, softmax_bypassed
from scanner.additive import AdditiveProbe, AdditiveProgress, AdditiveSearch, probe_labels
from scanner.config import SEED_MAX, AdditiveConfig, ScanConfig, check_label_range
from scanner.data import CleanData, load_clean_data
from scanner.decision.additive import kept_looks
from scanner.decision.evidence import EvidenceMeter, LabelEvidence
from scanner.decision.rules import Decision, DecisionResult, make_decision, norms_of
from scanner.mad import MIN_LABELS, mad_outliers
from scanner.model import ScoringModel, accuracy, log_probabilities
from scanner.pairs import PairProgress, PairSearch, PairTrigger, reverse_pairs
from scanner.preprocess import DEFAULT_SCALE, Scaling, candidate_scalings, make_scaling
from scanner.report import AdditiveStage, LabelResult, PairStage, RetryStage, ScalingChoice, ScanReport
from scanner.retry import (
    first_likeliest,
    likeliest_targets,
    retried_labels,
    retry_candidates,
    retry_labels,
    split_sure,
)
from scanner.reverse import LabelTrigger, ReverseSession, TriggerReverser
from scanner.runtime import prepare_runtime
from scanner.schedule import LabelScheduler
from scanner.second_opinion import RunVerdict, SecondOpinion, close_result, gather_runs, shown_run

ACCURACY_SAMPLE = 1000  # labelled images (a seeded random subset) used to measure accuracy per scaling
# refuse a scan when clean accuracy is within this fraction of the way above chance, and under this multiple of
# chance (the multiple decides for many classes: a 200-class model trained on 150 images per class measured 18%)
CHANCE_MARGIN = 0.2
CHANCE_MULTIPLE = 10


def scoring_model(converted: ConvertedModel, scaling: Scaling, device: torch.device) -> ScoringModel:
    """The model the scan optimizes against: a final Softmax is bypassed (same classifier, exact log-probabilities
    from its logits)."""
    module, contract = converted.module, converted.contract
    logits = softmax_bypassed(module) if contract.output_kind == "probabilities" else None
    if logits is not None:
        module, contract = logits, dataclasses.replace(contract, output_kind="logits")
    # channels_last measured 1.3-1.6x faster for convolutions on CPU (benchmarks/reverse_speed.py)
    return ScoringModel(module, contract, scaling, channels_last=device.type == "cpu")


def minimum_accuracy(config: ScanConfig, num_classes: int) -> float:
    if config.min_accuracy >= 0:
        return config.min_accuracy
    chance = 1.0 / num_classes
    return min(chance + CHANCE_MARGIN * (1 - chance), CHANCE_MULTIPLE * chance)


def choose_scaling(
    converted: ConvertedModel, data: CleanData, config: ScanConfig, device: torch.device
) -> tuple[Scaling, ScalingChoice]:
    """The user's scaling, else the candidate with the best clean accuracy, else the default; refuses
    (DataError) when labelled data shows accuracy near chance, the sign of a preprocessing mismatch."""
    channels = converted.contract.channels
    if config.scale:
        candidates = [make_scaling(config.scale, channels, config.mean or None, config.std or None)]
        chosen_by = "user"
    elif data.labels is None:
        candidates, chosen_by = [make_scaling(DEFAULT_SCALE, channels)], "default"
    else:
        candidates, chosen_by = candidate_scalings(channels), "accuracy"
    if data.labels is None:
        return candidates[0], ScalingChoice(candidates[0].describe(), chosen_by, None)

    sample = data.subset(np.random.default_rng(config.seed).permutation(len(data))[:ACCURACY_SAMPLE])
    trials = {
        scaling: accuracy(scoring_model(converted, scaling, device), sample.images, sample.labels, device)
        for scaling in candidates
    }
    best = max(trials, key=trials.get)
    floor = minimum_accuracy(config, converted.contract.num_classes)
    if trials[best] < floor:
        tried = ", ".join(f"{scaling.describe()}: {acc:.3f}" for scaling, acc in trials.items())
        raise DataError(
            f"clean accuracy stays near chance ({tried}; need >= {floor:.3f}): the data or its scaling does not "
            "match the model; pass --scale (or --mean/--std) and check the data's labels and layout"
        )
    named_trials = {scaling.describe(): acc for scaling, acc in trials.items()}
    return best, ScalingChoice(best.describe(), chosen_by, trials[best], named_trials)


def scan_labels(config: ScanConfig, num_classes: int, require_verdict: bool = False) -> list[int]:
    """The labels to reverse: the config's, else all. `require_verdict`: ConfigError when they are fewer than
    MAD needs to flag one, so that no scan runs whose verdict could only be inconclusive."""
    labels = check_label_range(config.labels or range(num_classes), num_classes)
    if require_verdict and len(labels) < MIN_LABELS:
        raise ConfigError(
            f"{len(labels)} label(s) to scan: MAD needs at least {MIN_LABELS} to flag one "
            f"(the model has {num_classes} classes; --labels chooses them)"
        )
    return labels


@dataclass(frozen=True)
class ScanInputs:
    """What a scan reverses against, read and checked: the model (converted, scaled) and the clean data."""

    device: torch.device
    intake: IntakeResult
    converted: ConvertedModel
    labels: list[int]
    data: CleanData
    scaling_choice: ScalingChoice
    model: ScoringModel

    @functools.cached_property
    def log_probabilities(self) -> np.ndarray:
        """The model's log-probabilities of every clean image, (images, classes): the likeliest targets, the pairs'
        sources and the additive look's victims all read them (one pass over the data, not three)."""
        return log_probabilities(self.model, self.data.images, self.device)

    @property
    def predictions(self) -> np.ndarray:
        """The model's class for every clean image."""
        return self.log_probabilities.argmax(axis=1)


def scan_inputs(
    model_path: str | Path, data: str | Path | CleanData, config: ScanConfig, require_verdict: bool = False
) -> ScanInputs:
    """Read the model and the clean data as `config` says, choose the scaling, and build the scoring model."""
    device = prepare_runtime(config.device, config.threads, config.seed)
    overrides = config.contract
    intake = intake_model(model_path, (overrides.channels, overrides.height, overrides.width))
    converted = load_onnx_classifier(
        intake.onnx_path, config.contract, config.input_name or None, config.output_name or None
    )
    contract = converted.contract
    labels = scan_labels(config, contract.num_classes, require_verdict)
    if not isinstance(data, CleanData):
        data = load_clean_data(
            data,
            contract.channels,
            contract.height,
            contract.width,
            contract.num_classes,
            config.max_images or None,
            config.seed,
        )
    converted.module.to(device)
    scaling, scaling_choice = choose_scaling(converted, data, config, device)
    model = scoring_model(converted, scaling, device)
    return ScanInputs(device, intake, converted, labels, data, scaling_choice, model)


def label_reversal(inputs: ScanInputs, config: ScanConfig) -> tuple[ReverseSession, EvidenceMeter]:
    """The label stage's reversal session over the scan's labels, and the meter of its triggers' evidence, both
    seeded as a scan seeds them (benchmarks rerun a stage of a saved scan from the same)."""
    reverser = TriggerReverser(inputs.model, config.reverse, inputs.device, config.seed)
    session = reverser.session(inputs.data.images, len(inputs.labels))
    return session, EvidenceMeter(inputs.model, inputs.data.images, inputs.device, config.seed, reverser.bfloat16)


def likeliest_labels(inputs: ScanInputs) -> list[int]:
    """Every class, likeliest target first, ranked on the scan's clean images (retry.likeliest_targets)."""
    return likeliest_targets(inputs.log_probabilities)


def scan(
    model_path: str | Path,
    data: str | Path | CleanData,
    config: ScanConfig = ScanConfig(),
    progress: Callable[[LabelTrigger, int, int], None] | None = None,
    require_verdict: bool = False,
    pair_progress: PairProgress | None = None,
    additive_progress: AdditiveProgress | None = None,
    retry_progress: Callable[[LabelTrigger, int, int], None] | None = None,
    screen_progress: Callable[[LabelTrigger, int, int], None] | None = None,
    opinion_progress: Callable[[int, int, int], None] | None = None,
) -> ScanReport:
    """Scan an ONNX image classifier for backdoors with Neural Cleanse.

    `data` is a path (.npz, .npy, .h5 or a folder of class subfolders) or a CleanData. `progress`, when
    given, is called as each label finishes with (result, labels done, labels total), `pair_progress` as each
    source-specific pair does with (pairs done, pairs total), `additive_progress` as each label's additive probe does
    (scanner/additive.py), `retry_progress` as each retry round of a label does (result, rounds done, rounds total),
    `screen_progress` as each label's screen ends under the screened schedule (its trigger so far, labels screened,
    labels total: the screen runs before any label runs to its end, minutes at 200 classes on a CPU).
    With fewer than 3 labels scanned the report's verdict is "inconclusive"; `require_verdict` refuses such a scan
    before it runs. A close result runs the scan again from up to `config.second_opinions` more seeds
    (scanner/second_opinion.py), each run calling the callbacks above from the start; `opinion_progress` is called
    as each of those runs begins with (its seed, its run number from 2, the runs planned).
    """

    callbacks = ScanCallbacks(progress, pair_progress, additive_progress, retry_progress, screen_progress)

    def run(run_config: ScanConfig) -> ScanReport:
        return scan_once(model_path, data, run_config, callbacks, require_verdict)

    planned = 1 + config.second_opinions
    reports = {config.seed: run(config)}

    def opinion(seed: int) -> RunVerdict:
        if opinion_progress:
            opinion_progress(seed, len(reports) + 1, planned)
        reports[seed] = run(dataclasses.replace(config, seed=seed))
        return run_verdict(reports[seed])

    runs = gather_runs(run_verdict(reports[config.seed]), config.second_opinions, SEED_MAX, opinion)
    if len(runs) == 1:
        return reports[config.seed]
    return with_second_opinion(reports, runs, planned)


def run_verdict(report: ScanReport) -> RunVerdict:
    return RunVerdict(
        report.config.seed, report.verdict, report.flagged, report.judged.score, close_result(report.judged),
        report.seconds_total,
    )  # fmt: skip


def with_second_opinion(reports: dict[int, ScanReport], runs: list[RunVerdict], planned: int) -> ScanReport:
    """The report (by seed) of the run that holds the verdict most runs reach (else the first run's), every run listed
    in its `second_opinion`, its time the whole of theirs."""
    shown = shown_run(runs, planned).seed
    return dataclasses.replace(
        reports[shown],
        second_opinion=SecondOpinion(runs, planned, shown),
        seconds_total=sum(run.seconds for run in runs),
        started_at=reports[runs[0].seed].started_at,
    )


@dataclass(frozen=True)
class ScanCallbacks:
    """The progress callbacks of one run (`scan` says when each is called)."""

    progress: Callable[[LabelTrigger, int, int], None] | None = None
    pair_progress: PairProgress | None = None
    additive_progress: AdditiveProgress | None = None
    retry_progress: Callable[[LabelTrigger, int, int], None] | None = None
    screen_progress: Callable[[LabelTrigger, int, int], None] | None = None


def scan_once(
    model_path: str | Path,
    data: str | Path | CleanData,
    config: ScanConfig = ScanConfig(),
    callbacks: ScanCallbacks = ScanCallbacks(),
    require_verdict: bool = False,
) -> ScanReport:
    """One run of the scan from `config.seed`: `scan` without a second opinion."""
    progress, pair_progress = callbacks.progress, callbacks.pair_progress
    additive_progress, retry_progress, screen_progress = (
        callbacks.additive_progress, callbacks.retry_progress, callbacks.screen_progress
    )  # fmt: skip
    started, started_at = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    inputs = scan_inputs(model_path, data, config, require_verdict)
    device, converted, labels, data = inputs.device, inputs.converted, inputs.labels, inputs.data
    contract = converted.contract

    on_label = counted(progress, len(labels))
    decision = make_decision(config.decision, config.mad_threshold, config.alpha, config.inconclusive_factor)
    session, meter = label_reversal(inputs, config)
    likely = likeliest_labels(inputs) if retry_wanted(config) and config.retry.likeliest else []
    finish = first_likeliest(likely, set(labels), config.retry.likeliest)  # the retry takes final labels only
    schedule = config.schedule.for_scan(len(labels), config.decision)
    on_screened = counted(screen_progress, len(labels))
    scheduler = LabelScheduler(session, schedule, decision, meter.measure, config.seed, on_label, on_screened)
    outcome = scheduler.run(labels, finish)
    runs, evidence = outcome.runs, outcome.evidence
    triggers = [session.result(runs[label]) for label in labels]
    for trigger in triggers:
        if not runs[trigger.label].finished:  # stopped by the scheduler: done all the same
            on_label(trigger)
    final = {label for label in labels if runs[label].finished}
    triggers, retry_stage = retry_suspects(
        config, session, meter, triggers, evidence, final, likely, decision, retry_progress
    )
    estimates = norms_of(evidence)
    mad = mad_outliers(estimates, config.mad_threshold)
    pair_started = time.perf_counter()
    search = source_specific_pairs(inputs, config, pair_progress)
    pairs = search.triggers
    pair_stage = PairStage(len(pairs), sum(p.images for p in pairs), time.perf_counter() - pair_started, search.needed)
    additive_started = time.perf_counter()
    # as many images a pass as the reversal's width held (on a GPU, fitted to its memory)
    additive_width = max(1, session.width * config.reverse.mini_batch // config.additive.mini_batch)
    look = schedule.look(config.additive)  # a screened scan runs a share of the look's steps
    additive = additive_look(inputs, config, look, meter, additive_width, additive_progress)
    additive_stage = AdditiveStage(
        len({p.label for p in additive.probes}),
        additive.epsilon,
        additive.images,
        time.perf_counter() - additive_started,
        list(additive.epsilons),
        look.steps if additive.probes else 0,
        look.rung_steps if len(additive.epsilons) > 1 else 0,
    )
    judged = decision.judge(
        evidence,
        {(p.source, p.target): p.norm for p in pairs},
        additive.looks(),
        {(p.source, p.target): p.carried for p in pairs if p.carried},
    )
    label_results = [
        LabelResult(
            label=t.label,
            l1_norm=t.norm,
            attack_success=t.attack_success,
            found=t.found,
            steps=t.steps,
            seconds=t.seconds,
            anomaly_index=mad.anomaly_indices[t.label],
            flagged=t.label in judged.flagged,
            final=runs[t.label].finished,
            estimated_norm=estimates[t.label],
            evidence=evidence[t.label].measurements(),
        )
        for t in triggers
    ]
    return ScanReport(
        tool_version=__version__,
        model_path=str(model_path),
        model_sha256=inputs.intake.record.source_sha256,
        contract=contract,
        conversion={
            "converter": "onnx2torch",
            "source_opset": converted.source_opset,
            "converted_opset": converted.converted_opset,
            "max_abs_diff_vs_onnxruntime": converted.max_abs_diff,
            "notes": converted.notes,
            "intake": inputs.intake.record.to_dict(),
        },
        data={
            "source": data.source,
            "images": len(data),
            "labelled": data.labels is not None,
            "notes": data.notes,
        },
        scaling=inputs.scaling_choice,
        config=config,
        labels=label_results,
        mad=mad,
        device=str(device),
        threads=torch.get_num_threads(),
        precision="bfloat16" if session.reverser.bfloat16 else "float32",
        seconds_total=time.perf_counter() - started,
        started_at=started_at,
        schedule=outcome.summary.to_dict(),
        decision=judged,
        triggers=triggers,
        pair_stage=pair_stage,
        pair_triggers=shown_pairs(pairs, judged),
        additive_triggers=shown_additive(additive.probes, judged),
        additive_stage=additive_stage,
        retry_stage=retry_stage,
    )


def counted(progress: Callable[[LabelTrigger, int, int], None] | None, total: int) -> Callable[[LabelTrigger], None]:
    """A callback for each finished run that calls `progress` with (result, runs done, `total`)."""
    done = 0

    def on_run(result: LabelTrigger) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(result, done, total)

    return on_run


def retry_wanted(config: ScanConfig) -> bool:
    return config.decision == "evidence" and config.retry.rounds > 0


def retry_suspects(
    config: ScanConfig,
    session: ReverseSession,
    meter: EvidenceMeter,
    triggers: list[LabelTrigger],
    evidence: dict[int, LabelEvidence],
    final: set[int],
    likely: list[int],
    decision: Decision | None = None,
    progress: Callable[[LabelTrigger, int, int], None] | None = None,
) -> tuple[list[LabelTrigger], RetryStage]:
    """The evidence rule's retry (scanner/retry.py), where wanted: the labels with the smallest triggers and the
    likeliest targets (`likely`, likeliest first) reversed again, each keeping its smallest trigger; `evidence` is
    measured again where a round's trigger replaced the first. A chosen label `decision` flags surely already
    (Decision.sure_flags) is left as it is: the retry looks for triggers a start missed, and a smaller one could only
    flag it more surely. The triggers the scan keeps, and what the retry did."""
    if not retry_wanted(config):
        return triggers, RetryStage()
    started = time.perf_counter()
    retry = config.retry
    candidates = retry_candidates(norms_of(evidence), final, retry.labels, likely, retry.likeliest)
    chosen, left = split_sure(candidates, decision.sure_flags(evidence) if decision else frozenset())
    by_label = {trigger.label: trigger for trigger in triggers}
    first = {label: by_label[label] for label in chosen}
    on_round = counted(progress, len(chosen) * retry.rounds)
    kept, retries = retry_labels(session, first, retry.rounds, retry.initial_mask_max, on_round, chosen)
    for label in retried_labels(retries):
        evidence[label] = meter.measure(label, kept[label].mask, kept[label].pattern)
    stage = RetryStage(retry.rounds, retries, sum(r.images for r in retries), time.perf_counter() - started, left)
    return [kept.get(trigger.label, trigger) for trigger in triggers], stage


def shown_pairs(pairs: list[PairTrigger], judged: DecisionResult) -> list[PairTrigger]:
    """The pair triggers a report keeps: the flagged pairs' and the most suspicious pair's."""
    kept = {(j.source, j.target) for j in judged.pairs[:1] + [j for j in judged.pairs if j.flagged]}
    return [p for p in pairs if (p.source, p.target) in kept]


def shown_additive(probes: list[AdditiveProbe], judged: DecisionResult) -> list[AdditiveProbe]:
    """The additive perturbations a report keeps, for mitigation to remove and people to see (kept_looks)."""
    kept = kept_looks(judged.additive)
    return [probe for probe in probes if probe.label in kept and kept[probe.label].epsilon == probe.epsilon]


def pairs_wanted(config: ScanConfig) -> bool:
    """Whether the scan runs the source-specific look: the evidence rule's (the paper rule has none), unless
    `--pairs 0`."""
    return config.decision == "evidence" and config.pairs.max_pairs > 0


def source_specific_pairs(inputs: ScanInputs, config: ScanConfig, progress: PairProgress | None) -> PairSearch:
    """The evidence rule's source-specific look (scanner/pairs.py), where wanted."""
    if not pairs_wanted(config):
        return PairSearch([], 0)
    return reverse_pairs(
        inputs.model,
        inputs.data.images,
        inputs.labels,
        config.reverse,
        config.pairs,
        inputs.device,
        config.seed,
        progress,
        inputs.predictions,
    )


def additive_look(
    inputs: ScanInputs,
    config: ScanConfig,
    look: AdditiveConfig,
    meter: EvidenceMeter,
    labels_per_batch: int = 0,
    progress: AdditiveProgress | None = None,
) -> AdditiveSearch:
    """The evidence rule's additive look (scanner/additive.py) with the settings `look`, unless its steps are 0: the
    paper rule has none."""
    if config.decision != "evidence":
        return AdditiveSearch([], (), 0)
    images, labels = inputs.data.images, inputs.labels
    # the least likely targets first: on the GTSRB replica a label's success at a bound ranks with its likeliness
    # (Spearman 0.56), so a bound that falls short is left after fewer labels
    least_likely = likeliest_labels(inputs)[::-1]
    return probe_labels(
        inputs.model, images, labels, look, meter, config.seed, labels_per_batch, progress, inputs.predictions,
        least_likely,
    )  # fmt: skip
