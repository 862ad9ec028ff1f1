"""`mitigate(model, report_folder, data, config, out)`: patch an infected ONNX model with the triggers its scan
reversed, measure it before and after on held-out images, and write the patched model and mitigation.json."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cleanse_base.errors import ConfigError, ModelError
from cleanse_base.files import check_writable_file, file_sha256, refuse_overlap
from converters.onnx_to_torch import ConvertedModel, load_onnx_classifier
from scanner.data import CleanData, load_clean_data
from scanner.decision.additive import flagged_looks
from scanner.decision.pairs import PairJudgement
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.measure import likely_target, measure
from scanner.mitigate.methods import method_named
from scanner.mitigate.report_folder import read_scan_report, report_json, report_scaling
from scanner.mitigate.result import RESULT_FILE, MitigationResult, write_result
from scanner.mitigate.triggers import (
    AnyTrigger,
    Trigger,
    additive_trigger_file,
    load_trigger_files,
    require_labels,
    reversed_additive_trigger,
    reversed_trigger,
    reversed_trigger_files,
    split_holdout,
)
from scanner.mitigate.workbench import MethodProgress, Workbench, no_progress
from scanner.mitigate.writeback import build_weight_map, write_patched
from scanner.model import ScoringModel
from scanner.report import ScanReport
from scanner.run_scan import scoring_model
from scanner.runtime import prepare_runtime

TriggerFiles = tuple[str | Path, str | Path]


def check_outputs(
    model: Path,
    report_folder: Path,
    report: ScanReport,
    data: str | Path | CleanData,
    config: MitigationConfig,
    trigger: TriggerFiles | None,
    out: Path,
    json_out: Path,
) -> None:
    """Before any work: no output may resolve to an input (model, report files, data, trigger files) or to the
    other output, and both must be writable."""
    labels = list(config.labels) or report.flagged
    report_files = [report_json(report_folder)]
    report_files += [path for label in labels for path in reversed_trigger_files(report_folder, label)]
    pairs = flagging_pairs(report.judged.pairs, labels) if config.pair_triggers else []
    report_files += [path for pair in pairs for path in reversed_trigger_files(report_folder, *pair)]
    report_files += [additive_trigger_file(report_folder, label) for label in additive_bounds(report, labels)]
    data_path = None if isinstance(data, CleanData) else data
    refuse_overlap([model, *report_files, data_path, *(trigger or ())], [out, json_out])
    for path in (out, json_out):
        check_writable_file(path)


def additive_bounds(report: ScanReport, labels: list[int]) -> dict[int, float]:
    """Label -> the bound of its most suspicious flagged additive look, for the `labels` the scan's additive look
    flagged: the report folder keeps that perturbation (scanner.decision.additive.kept_looks) since schema 1.14,
    whose reports name the bounds judged (older ones kept none: their labels are removed through their masks
    alone)."""
    if not report.additive_stage.epsilons:
        return {}
    return {label: look.epsilon for label, look in flagged_looks(report.judged.additive).items() if label in labels}


def flagging_pairs(pairs: list[PairJudgement], labels: list[int]) -> list[tuple[int, int]]:
    """(target, source) of each pair that flags one of `labels`, in the pairs' order: a report folder keeps the
    flagged pairs' triggers (run_scan.shown_pairs). A label-specific patch moves only its source's images and an
    all-to-all patch each class to a label of its own, so the label's own reversal, over every class, may not be
    the trigger at all; the pair's is what found it."""
    wanted = set(labels)
    return [(pair.target, pair.source) for pair in pairs if wanted & set(pair.flags)]


def scan_triggers(
    report: ScanReport,
    report_folder: Path,
    labels: list[int],
    image_shape: tuple[int, int, int],
    pair_triggers: bool = True,
) -> list[AnyTrigger]:
    """What the scan found for each label: its reversed mask and pattern, where its additive look flagged it that
    perturbation too, and with `pair_triggers` the triggers of the pairs that flagged it."""
    additive = additive_bounds(report, labels)
    triggers: list[AnyTrigger] = []
    for label in labels:
        triggers.append(reversed_trigger(report_folder, label, image_shape))
        if label in additive:
            triggers.append(reversed_additive_trigger(report_folder, label, additive[label], image_shape))
    pairs = flagging_pairs(report.judged.pairs, labels) if pair_triggers else []
    triggers += [reversed_trigger(report_folder, target, image_shape, source) for target, source in pairs]
    return triggers


def load_model(model_path: Path, report: ScanReport, report_folder: Path) -> ConvertedModel:
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such file")
    if report.model_sha256 != file_sha256(model_path):
        raise ConfigError(
            f"{report_folder} is the scan report of another model (sha256 differs): scan {model_path} first"
        )
    contract = report.contract
    return load_onnx_classifier(model_path, report.config.contract, contract.input_name, contract.output_name)


def load_data(data: str | Path | CleanData, converted: ConvertedModel, config: MitigationConfig) -> CleanData:
    if isinstance(data, CleanData):
        return data
    contract = converted.contract
    return load_clean_data(data, *contract.image_shape, contract.num_classes, config.max_images or None, config.seed)


def real_trigger_of(
    files: TriggerFiles, target: int | None, model: ScoringModel, images: np.ndarray, device: torch.device
) -> Trigger:
    contract = model.contract
    mask, pattern = load_trigger_files(Path(files[0]), Path(files[1]), contract.image_shape)
    if target is None:
        target = likely_target(model, images, mask, pattern, device)
    elif not 0 <= target < contract.num_classes:
        raise ConfigError(f"trigger target {target} out of range for {contract.num_classes} classes")
    return Trigger("real", mask, pattern, target)


def mitigate(
    model: str | Path,
    report_folder: str | Path,
    data: str | Path | CleanData,
    config: MitigationConfig,
    out: str | Path,
    trigger: TriggerFiles | None = None,
    trigger_target: int | None = None,
    json_out: str | Path | None = None,
    progress: MethodProgress = no_progress,
) -> tuple[MitigationResult, Path]:
    """Patch `model` against the triggers its scan report (in `report_folder`) reversed; write the patched ONNX
    file to `out` and the result to `json_out` (default: mitigation.json beside `out`); returns the result and
    the JSON path. `progress` hears of the method's rounds (unlearning's epochs, pruning's steps) as they finish.

    `data`: labelled clean images (a path or CleanData), split into repair and held-out parts. `trigger`:
    (mask.npy, pattern.npy) of the real trigger, used only to measure; its target is `trigger_target`, else the
    label the original model gives most held-out images carrying it. Every input is checked, and no output may
    replace an input, before any work.
    """
    started = time.perf_counter()
    config = config.validate()
    method = method_named(config.method)
    model, report_folder, out = Path(model), Path(report_folder), Path(out)
    json_out = Path(json_out) if json_out is not None else out.parent / RESULT_FILE
    report = read_scan_report(report_folder)
    check_outputs(model, report_folder, report, data, config, trigger, out, json_out)
    device = prepare_runtime(config.device, config.threads, config.seed)

    converted = load_model(model, report, report_folder)
    contract = converted.contract
    labels = require_labels(config.labels, report.flagged, contract.num_classes)
    triggers = scan_triggers(report, report_folder, labels, contract.image_shape, config.pair_triggers)
    repair, holdout = split_holdout(load_data(data, converted, config), config.holdout_fraction, config.seed)
    scaling = report_scaling(report, contract.channels)
    converted.module.to(device)
    scoring = scoring_model(converted, scaling, device)  # trains through the logits of a final Softmax
    weight_map = build_weight_map(converted.module, converted.prepared)
    bench = Workbench(converted, scoring, weight_map, repair, holdout, triggers, config, device, progress)
    measured: list[AnyTrigger] = list(triggers)
    if trigger is not None:
        measured.append(real_trigger_of(trigger, trigger_target, scoring, holdout.images, device))
    before = measure(scoring, holdout.images, holdout.labels, measured, device)

    method_started = time.perf_counter()
    outcome = method.apply(bench)
    seconds_method = time.perf_counter() - method_started
    after = measure(scoring, holdout.images, holdout.labels, measured, device, outcome.screen)

    max_abs_diff, output_sha256 = write_patched(outcome.graph, converted.module, contract, out, outcome.check)
    result = MitigationResult(
        method=config.method,
        model_path=str(model),
        model_sha256=report.model_sha256,
        output_path=str(out),
        output_sha256=output_sha256,
        labels=labels,
        real_trigger_target=measured[-1].target if trigger is not None else None,
        scaling=scaling.describe(),
        repair_images=len(repair),
        holdout_images=len(holdout),
        before=before,
        after=after,
        details=outcome.details_dict(),
        max_abs_diff=max_abs_diff,
        seconds_method=seconds_method,
        seconds_total=time.perf_counter() - started,
        config=config,
    )
    return result, write_result(result, json_out)
