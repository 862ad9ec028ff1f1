"""`mitigate(model_path, report_folder, data, config) -> MitigationResult`: patch an infected ONNX model with
the triggers a scan reversed, measure it before and after on held-out images, and write it back as ONNX."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from cleanse_base.errors import ConfigError, ModelError
from cleanse_base.files import file_sha256
from converters.onnx_to_torch import ConvertedModel, load_onnx_classifier
from scanner.data import CleanData, load_clean_data
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.filter import (
    FilterOutcome,
    add_filter_outputs,
    calibrate_filter,
    check_filter_outputs,
    output_names,
)
from scanner.mitigate.layer_choice import LayerChoice, choose_working_layer
from scanner.mitigate.layers import find_layers
from scanner.mitigate.measure import Screen, likely_target, measure
from scanner.mitigate.prune import prune
from scanner.mitigate.result import MitigationResult
from scanner.mitigate.scan_facts import ScanFacts, read_scan_facts
from scanner.mitigate.triggers import Trigger, load_trigger_files, require_labels, reversed_trigger, split_holdout
from scanner.mitigate.unlearn import unlearn
from scanner.mitigate.writeback import (
    WeightMap,
    build_weight_map,
    onnx2torch_nodes,
    patched_copy,
    refuse_overwrite,
    tensor_at,
    tie_shared_buffers,
    write_patched,
)
from scanner.model import ScoringModel
from scanner.run_scan import resolve_device, scoring_model

CHECK_IMAGES = 64  # held-out images on which a filtered file's added outputs are checked in onnxruntime


@dataclass
class Workbench:
    """The loaded model, its weight links and the data a method works on."""

    converted: ConvertedModel
    model: ScoringModel  # raw NCHW pixels -> log-probabilities, around converted.module
    weight_map: WeightMap
    repair: CleanData
    holdout: CleanData
    triggers: list[Trigger]  # the reversed ones being removed
    config: MitigationConfig
    device: torch.device

    @property
    def module(self) -> torch.nn.Module:
        return self.converted.module

    def layer(self) -> LayerChoice:
        layers = find_layers(self.module, onnx2torch_nodes(self.converted.prepared.convertible))
        return choose_working_layer(
            self.model, self.module, layers, self.repair, self.triggers, self.config, self.device
        )


@dataclass
class Patch:
    graph: onnx.ModelProto  # the original graph, patched
    outcome: Any  # the method's outcome dataclass
    layer: LayerChoice | None = None  # the layer worked on (prune, filter)
    screen: Screen | None = None  # rejects inputs (filter)
    check: Callable[[onnx.ModelProto], None] | None = None  # checks added outputs before writing


def run_unlearn(bench: Workbench) -> Patch:
    links = bench.weight_map.require(bench.weight_map.trainable)
    tie_shared_buffers(bench.module, links)
    weights = [tensor_at(bench.module, link.tensor) for link in links]
    outcome = unlearn(bench.model, weights, bench.repair, bench.triggers, bench.config, bench.device)
    return Patch(patched_copy(bench.converted.prepared.original, bench.module, links), outcome)


def run_prune(bench: Workbench) -> Patch:
    choice = bench.layer()
    links = bench.weight_map.require([choice.layer.weight])
    outcome = prune(bench.model, bench.module, choice.layer, bench.repair, bench.triggers, bench.config, bench.device)
    return Patch(patched_copy(bench.converted.prepared.original, bench.module, links), outcome, choice)


def run_filter(bench: Workbench) -> Patch:
    choice = bench.layer()
    layer = choice.layer
    model, module, device = bench.model, bench.module, bench.device
    backdoor_filter, false_positive_rate = calibrate_filter(
        model, module, layer, bench.repair, bench.triggers, bench.config, device
    )
    graph = add_filter_outputs(bench.converted.prepared.original, backdoor_filter)
    neurons = [group.tolist() for group in backdoor_filter.groups]
    outcome = FilterOutcome(layer.node, neurons, backdoor_filter.threshold, false_positive_rate, *output_names(graph))

    def screen(images: np.ndarray) -> np.ndarray:
        return backdoor_filter.scores(model, module, images, device) > backdoor_filter.threshold

    def check(filtered: onnx.ModelProto) -> None:
        sample = bench.holdout.images[:CHECK_IMAGES]
        check_filter_outputs(filtered, backdoor_filter, model, module, bench.converted.contract, sample, device)

    return Patch(graph, outcome, choice, screen, check)


METHOD_RUNNERS: dict[str, Callable[[Workbench], Patch]] = {
    "unlearn": run_unlearn,
    "prune": run_prune,
    "filter": run_filter,
}


def method_details(patch: Patch) -> dict[str, Any]:
    details = dataclasses.asdict(patch.outcome)
    if patch.layer is not None:
        details["layer_chosen_by"] = patch.layer.chosen_by
        details["layer_separation"] = patch.layer.separation
    return details


def load_model(model_path: Path, folder: Path) -> tuple[ConvertedModel, ScanFacts]:
    facts = read_scan_facts(folder)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such file")
    if facts.model_sha256 != file_sha256(model_path):
        raise ConfigError(f"{folder} is the scan report of another model (sha256 differs): scan {model_path} first")
    converted = load_onnx_classifier(model_path, facts.overrides, facts.input_name, facts.output_name)
    return converted, facts


def load_data(data: str | Path | CleanData, converted: ConvertedModel, config: MitigationConfig) -> CleanData:
    if isinstance(data, CleanData):
        return data
    contract = converted.contract
    return load_clean_data(data, *contract.image_shape, contract.num_classes, config.max_images or None, config.seed)


def real_trigger_of(
    files: tuple[str | Path, str | Path], target: int | None, model: ScoringModel, images: np.ndarray, device
) -> Trigger:
    contract = model.contract
    mask, pattern = load_trigger_files(Path(files[0]), Path(files[1]), contract.image_shape)
    if target is None:
        target = likely_target(model, images, mask, pattern, device)
    elif not 0 <= target < contract.num_classes:
        raise ConfigError(f"trigger target {target} out of range for {contract.num_classes} classes")
    return Trigger("real", mask, pattern, target)


def mitigate(
    model_path: str | Path,
    report_folder: str | Path,
    data: str | Path | CleanData,
    config: MitigationConfig | None = None,
    out_path: str | Path | None = None,
    real_trigger: tuple[str | Path, str | Path] | None = None,
    real_target: int | None = None,
) -> MitigationResult:
    """Patch the model at `model_path` against the triggers its scan report (`report_folder`) reversed.

    `data`: labelled clean images (a path or CleanData), split into repair and held-out parts. `out_path`:
    where the patched ONNX file goes (nothing is written when None). `real_trigger`: (mask.npy,
    pattern.npy) of the real trigger, used only to measure; its target is `real_target`, else the label the
    original model gives most held-out images carrying it.
    """
    started = time.perf_counter()
    config = (config or MitigationConfig()).validate()
    model_path, report_folder = Path(model_path), Path(report_folder)
    if out_path is not None:
        out_path = Path(out_path)
        refuse_overwrite(model_path, out_path)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    converted, facts = load_model(model_path, report_folder)
    contract = converted.contract
    labels = require_labels(config.labels, facts.flagged, contract.num_classes)
    repair, holdout = split_holdout(load_data(data, converted, config), config.holdout_fraction, config.seed)
    scaling = facts.scaling(contract.channels)
    converted.module.to(device)
    model = scoring_model(converted, scaling, device)  # trains through the logits of a final Softmax
    triggers = [reversed_trigger(report_folder, label) for label in labels]
    bench = Workbench(
        converted,
        model,
        build_weight_map(converted.module, converted.prepared),
        repair,
        holdout,
        triggers,
        config,
        device,
    )
    measured = list(triggers)
    if real_trigger is not None:
        measured.append(real_trigger_of(real_trigger, real_target, model, holdout.images, device))
    before = measure(model, holdout.images, holdout.labels, measured, device)

    method_started = time.perf_counter()
    patch = METHOD_RUNNERS[config.method](bench)
    seconds_method = time.perf_counter() - method_started
    after = measure(model, holdout.images, holdout.labels, measured, device, patch.screen)

    max_abs_diff = output_sha256 = None
    if out_path is not None:
        max_abs_diff = write_patched(patch.graph, converted.module, contract, out_path, patch.check)
        output_sha256 = file_sha256(out_path)
    return MitigationResult(
        method=config.method,
        model_path=str(model_path),
        model_sha256=facts.model_sha256,
        output_path=None if out_path is None else str(out_path),
        output_sha256=output_sha256,
        labels=labels,
        real_trigger_target=measured[-1].target if real_trigger is not None else None,
        scaling=scaling.describe(),
        repair_images=len(repair),
        holdout_images=len(holdout),
        before=before,
        after=after,
        details=method_details(patch),
        max_abs_diff=max_abs_diff,
        seconds_method=seconds_method,
        seconds_total=time.perf_counter() - started,
        config=config,
    )
