"""ABS's neuron stimulation (Liu et al., CCS 2019) on the model zoo, measured as a label-level and pair-level reading.

    python -m benchmarks.neuron_stimulation [--only NAME,...] [--seeds 0] [--per-class 3]

ABS raises one inner neuron at a time and watches the output: a neuron a backdoor planted sends every image to the
target, whatever its class. For every ReLU output with a channel axis (a convolutional stage) of each built zoo model,
each channel's whole map is set to `level` times the stage's largest activation on the clean images (levels 1, 2, 4
and 8), on `per-class` clean images of every class (the model's own predictions, the first of the sample a scan with
that seed draws; `--seeds`, 0 by default), forward passes only. Per stage and level, each label's share is the
largest share of the other classes' images that one channel sends to it; a label's score is that share averaged over
stages and levels, and a pair's (source -> target) the share of the source's images minus the mean over the other
sources, averaged the same way (a label-specific backdoor moves its source alone).

Prints per model the target's rank among the labels by score, the robust z-score of the top label and of the target,
the planted pair's rank for label-specific models, and the ROC-AUC of the top label's z-score (infected against clean
models), which is what the scan's decision would get from this reading alone. A measurement, not part of the scan.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.detection_table import roc_auc
from benchmarks.pair_scans import stage_jobs
from benchmarks.zoo_scans import add_selection_arguments
from fixtures.zoo import ZooCard, model_paths
from scanner.config import ScanConfig
from scanner.decision.statistics import robust_z
from scanner.run_scan import scan_inputs

LEVELS = (1.0, 2.0, 4.0, 8.0)  # multiples of the stage's largest clean activation a channel is raised to


def chosen_images(predictions: np.ndarray, classes: int, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images the model assigns to each class."""
    return np.concatenate([np.flatnonzero(predictions == label)[:per_class] for label in range(classes)])


@contextmanager
def raised_channel(module: nn.Module, state: dict[str, float]) -> Iterator[None]:
    """While open, `module`'s output has channel `state['channel']` set to `state['value']` everywhere."""

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, int(state["channel"])] = state["value"]
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def conv_stages(graph: nn.Module, model: nn.Module, images: torch.Tensor) -> dict[str, tuple[int, float]]:
    """Every ReLU whose output has a channel axis and a map: name -> (channels, largest activation on `images`)."""
    seen: dict[str, tuple[int, float]] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: (
                seen.__setitem__(name, (out.shape[1], float(out.max()))) if out.dim() == 4 else None
            )
        )
        for name, module in graph.named_modules()
        if isinstance(module, nn.ReLU)
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return seen


def stimulation_counts(
    model: nn.Module, graph: nn.Module, images: torch.Tensor, sources: np.ndarray, classes: int
) -> list[np.ndarray]:
    """Per stage, counts[channel, level, source, label]: images of each source class sent to each label."""
    stages = conv_stages(graph, model, images)
    modules = dict(graph.named_modules())
    tables = []
    for name, (channels, largest) in stages.items():
        counts = np.zeros((channels, len(LEVELS), classes, classes), np.int32)
        state = {"channel": 0.0, "value": 0.0}
        with raised_channel(modules[name], state), torch.no_grad():
            for channel in range(channels):
                for level, multiple in enumerate(LEVELS):
                    state["channel"], state["value"] = channel, multiple * largest
                    sent = model(images).argmax(dim=1).numpy()
                    np.add.at(counts[channel, level], (sources, sent), 1)
        tables.append(counts)
    return tables


def label_scores(tables: list[np.ndarray], sources: np.ndarray, classes: int) -> np.ndarray:
    """Each label's share of the other classes' images its best channel sends to it, averaged over stages and
    levels."""
    per_source = np.bincount(sources, minlength=classes)
    others = per_source.sum() - per_source
    shares = []
    for counts in tables:
        moved = counts.sum(axis=2) - counts[:, :, np.arange(classes), np.arange(classes)]  # channel, level, label
        shares.append((moved / np.maximum(others, 1)).max(axis=0))  # level, label
    return np.mean(np.concatenate(shares), axis=0)


def pair_scores(tables: list[np.ndarray], sources: np.ndarray, classes: int) -> np.ndarray:
    """(source, target): the share of the source's images sent to the target, less the mean share of the other
    sources (those with images, the target's own left out), at the best channel, averaged over stages and levels;
    NaN on the diagonal and where the source has no images."""
    counted = np.bincount(sources, minlength=classes)
    has = (counted > 0).astype(float)
    # for each (source, target): how many other sources the mean runs over
    others_count = has.sum() - has[:, None] - has[None, :] + np.diag(has)
    readings = []
    for counts in tables:
        rate = counts / np.maximum(counted, 1)[None, None, :, None]  # channel, level, source, target
        staying = rate[:, :, np.arange(classes), np.arange(classes)]  # the target's own images kept at it
        others_sum = rate.sum(axis=2, keepdims=True) - rate - staying[:, :, None, :]
        others_mean = others_sum / np.maximum(others_count, 1)
        readings.append((rate - others_mean).max(axis=0))  # level, source, target
    scores = np.mean(np.concatenate(readings), axis=0)
    scores[counted == 0] = np.nan
    np.fill_diagonal(scores, np.nan)
    return scores


def measure(
    model_path: Path, data: Path, seed: int, max_images: int, per_class: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(label scores, pair scores, seconds) of one model, on the clean images a scan with `seed` draws."""
    inputs = scan_inputs(model_path, data, ScanConfig(seed=seed, threads=1, max_images=max_images))
    classes = inputs.converted.contract.num_classes
    predictions = inputs.predictions
    chosen = chosen_images(predictions, classes, per_class)
    images = torch.from_numpy(np.ascontiguousarray(inputs.data.images[chosen])).to(inputs.device)
    sources = predictions[chosen]
    started = time.perf_counter()
    tables = stimulation_counts(inputs.model, inputs.model.module, images, sources, classes)
    return label_scores(tables, sources, classes), pair_scores(tables, sources, classes), time.perf_counter() - started


def rank_of(scores: np.ndarray, index: int) -> int:
    """1 for the highest score (ties share the better rank)."""
    flat = scores.ravel()
    return int(np.sum(flat[~np.isnan(flat)] > flat[index])) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.neuron_stimulation", description=__doc__.splitlines()[0]
    )
    add_selection_arguments(parser)
    parser.add_argument("--per-class", type=int, default=3, help="clean images of each class (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    infected, clean, infected_pairs, clean_pairs = [], [], [], []
    for job in stage_jobs(args, Path(os.devnull)):  # nothing is written: the jobs give each model, its data and seed
        card = ZooCard.read(model_paths(args.models, job.name)[1])
        labels, pairs, seconds = measure(job.model, job.data, job.seed, job.max_images, args.per_class)
        z = robust_z(dict(enumerate(labels.tolist())), 0.01, larger_is_suspicious=True)
        top = max(z, key=z.__getitem__)
        pair_z = robust_z({i: v for i, v in enumerate(pairs.ravel().tolist()) if not np.isnan(v)}, 0.01, True)
        top_pair = max(pair_z, key=pair_z.__getitem__)
        line = f"{job.name}: {seconds:.0f} s, top label {top} (score {labels[top]:.2f}, z {z[top]:.1f})"
        line += f", top pair {divmod(top_pair, len(labels))} (z {pair_z[top_pair]:.1f})"
        for target in card.targets:
            line += f"; target {target} rank {rank_of(labels, target)} of {len(labels)} (z {z[target]:.1f})"
        source = card.attack.get("source") if card.attack else None
        if source is not None:
            planted = int(source) * len(labels) + card.targets[0]
            line += f"; pair {source} -> {card.targets[0]} rank {rank_of(pairs, planted)} of {np.sum(~np.isnan(pairs))}"
            line += f" (z {pair_z[planted]:.1f})"
        print(line, flush=True)
        (infected if card.targets else clean).append(z[top])
        (infected_pairs if card.targets else clean_pairs).append(pair_z[top_pair])
    print(f"{len(infected)} infected against {len(clean)} clean models, ROC-AUC of the top label's z-score")
    print(f"{roc_auc(infected, clean):.3f}, of the top pair's {roc_auc(infected_pairs, clean_pairs):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
