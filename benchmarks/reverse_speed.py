"""Time one reverse-engineering mini-batch (forward + backward to the trigger) under variants, as ratios.

    python -m benchmarks.reverse_speed [--model M.onnx] [--batches 40]

Without --model it exports the paper's GTSRB CNN with random weights (speed does not depend on the weights).
Prints milliseconds per mini-batch per label for: memory format (contiguous vs channels_last), torch threads
(1 vs 2) and labels stacked per forward pass (1, 4, 8). Run it on an otherwise idle machine: the load average
is printed with the figures because a second busy process changes them several-fold.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from converters.onnx_to_torch import load_onnx_classifier
from scanner.config import ReverseConfig
from scanner.model import ScoringModel
from scanner.preprocess import make_scaling
from scanner.reverse import TriggerReverser


def paper_gtsrb_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 64),
        *block(64, 128),
        nn.Flatten(),
        nn.Linear(128 * 16, 512),
        nn.ReLU(),
        nn.Linear(512, 43),
    ).eval()


def export_random_cnn(folder: Path) -> Path:
    path = folder / "paper_cnn_random.onnx"
    torch.onnx.export(
        paper_gtsrb_cnn(),
        torch.zeros(1, 3, 32, 32),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    return path


def ms_per_batch_per_label(
    model_path: Path, threads: int, channels_last: bool, labels_per_batch: int, batches: int
) -> float:
    torch.set_num_threads(threads)
    converted = load_onnx_classifier(model_path)
    contract = converted.contract
    model = ScoringModel(converted.module, contract, make_scaling("unit", contract.channels), channels_last)
    config = ReverseConfig(
        images_per_step=32 * batches, max_steps=1, early_stop=False, labels_per_batch=labels_per_batch
    )
    images = np.random.default_rng(0).uniform(0, 255, (512, *contract.image_shape)).astype(np.float32)
    reverser = TriggerReverser(model, config, torch.device("cpu"))
    reverser.reverse(images, [0])  # warm-up
    started = time.perf_counter()
    reverser.reverse(images, list(range(labels_per_batch)))
    return (time.perf_counter() - started) * 1000 / batches / labels_per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model or export_random_cnn(Path(folder))
        print(f"model {model_path.name}, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
        variants = [
            ("2 threads, contiguous, 1 label", 2, False, 1),
            ("2 threads, channels_last, 1 label", 2, True, 1),
            ("1 thread, channels_last, 1 label", 1, True, 1),
            ("2 threads, channels_last, 4 labels", 2, True, 4),
            ("2 threads, channels_last, 8 labels", 2, True, 8),
        ]
        baseline = None
        for name, threads, channels_last, stacked in variants:
            ms = ms_per_batch_per_label(model_path, threads, channels_last, stacked, args.batches)
            baseline = baseline or ms
            print(f"{name:<38} {ms:7.1f} ms per mini-batch of 32 per label   speed {baseline / ms:4.2f}x")


if __name__ == "__main__":
    main()
