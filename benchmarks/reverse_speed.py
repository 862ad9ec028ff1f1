"""Time reverse-engineering mini-batches (forward + backward to the trigger) under variants, as ratios.

    python -m benchmarks.reverse_speed [--model M.onnx] [--archs paper,cnn,bn,resnet] [--batches 40]

Without --model it exports random-weight models (speed does not depend on the weights): the paper's GTSRB CNN
(32x32, 43 classes) and the zoo's plain CNN, BatchNorm CNN (32x32, 43 classes) and ResNet (64x64, 200
classes, as on Tiny-ImageNet). Prints milliseconds per image for each variant: precision (float32 or bfloat16
autocast), labels stacked per forward pass, memory format and threads, each against the first variant; and two
reversals at once, one core each, in two threads of one process or in two processes (their images over the wall
time of both: what splitting a scan's labels between the cores would give, against one reversal on both cores).
The variants run in turn, twice, and each keeps its faster round. Run it on an otherwise idle machine: the load
average is printed with the figures because a second busy process changes them several-fold.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import numpy as np
import torch
from torch import nn

from converters.onnx_to_torch import load_onnx_classifier
from fixtures.export import export_legacy
from fixtures.zoo import ARCHITECTURES
from scanner.config import ReverseConfig
from scanner.model import ScoringModel
from scanner.preprocess import make_scaling
from scanner.reverse import TriggerReverser, cpu_has_native_bfloat16

MINI_BATCH = 16  # the default preset's


def paper_gtsrb_cnn(channels: int = 3, size: int = 32, classes: int = 43) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *block(channels, 32),
        *block(32, 64),
        *block(64, 128),
        nn.Flatten(),
        nn.Linear(128 * (size // 8) ** 2, 512),
        nn.ReLU(),
        nn.Linear(512, classes),
    )


MODELS: dict[str, tuple[Callable[[int, int, int], nn.Module], int, int]] = {
    "paper": (paper_gtsrb_cnn, 32, 43),
    "cnn": (ARCHITECTURES["cnn"], 32, 43),
    "bn": (ARCHITECTURES["bn"], 32, 43),
    "resnet": (ARCHITECTURES["resnet"], 64, 200),
}


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "float32"
    labels: int = 1
    channels_last: bool = True
    threads: int = 2
    workers: int = 1  # reversals timed at once, `threads` threads each
    processes: bool = False  # the workers in processes of their own, else threads of this one


VARIANTS = [
    Variant("float32, 1 label"),
    Variant("float32, 4 labels stacked", labels=4),
    Variant("float32, contiguous", channels_last=False),
    Variant("float32, 1 thread", threads=1),
    Variant("bfloat16, 1 label", precision="bfloat16"),
    Variant("bfloat16, 2 labels stacked", precision="bfloat16", labels=2),
    Variant("bfloat16, 4 labels stacked", precision="bfloat16", labels=4),
    Variant("bfloat16, 8 labels stacked", precision="bfloat16", labels=8),
    Variant("bfloat16, 4 labels, 2 threads x 1", precision="bfloat16", labels=4, threads=1, workers=2),
    Variant("bfloat16, 4 labels, 2 procs x 1", precision="bfloat16", labels=4, threads=1, workers=2, processes=True),
]


def export_random(arch: str, folder: Path) -> Path:
    make, size, classes = MODELS[arch]
    torch.manual_seed(0)
    return export_legacy(make(3, size, classes), folder / f"{arch}_random.onnx", (1, 3, size, size))


def prepared_reversal(model_path: Path, variant: Variant, batches: int) -> Callable[[], None]:
    """One reversal of `variant.labels` labels for one step of `batches` mini-batches, warmed up once."""
    torch.set_num_threads(variant.threads)
    converted = load_onnx_classifier(model_path)
    contract = converted.contract
    scaling = make_scaling("unit", contract.channels)
    model = ScoringModel(converted.module, contract, scaling, variant.channels_last)
    config = ReverseConfig(
        images_per_step=MINI_BATCH * batches,
        mini_batch=MINI_BATCH,
        max_steps=1,
        early_stop=False,
        labels_per_batch=variant.labels,
        precision=variant.precision,
    )
    images = np.random.default_rng(0).uniform(0, 255, (512, *contract.image_shape)).astype(np.float32)
    reverser = TriggerReverser(model, config, torch.device("cpu"))

    def run() -> None:
        reverser.reverse(images, list(range(variant.labels)))

    run()  # warm-up
    return run


def timed_reversal(
    model_path: Path, variant: Variant, batches: int, ready: threading.Barrier | ProcessBarrier | None = None
) -> float:
    """Seconds of one prepared reversal, started once every worker is `ready`."""
    run = prepared_reversal(model_path, variant, batches)
    if ready is not None:
        ready.wait()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def process_worker(model_path: Path, variant: Variant, batches: int, ready: ProcessBarrier, results: Queue) -> None:
    results.put(timed_reversal(model_path, variant, batches, ready))


def worker_seconds(model_path: Path, variant: Variant, batches: int) -> list[float]:
    """Each worker's seconds, the workers timed from one start (threads, or processes spawned afresh: torch's
    OpenMP threads do not survive a fork)."""
    if variant.workers == 1:
        return [timed_reversal(model_path, variant, batches)]
    if not variant.processes:
        ready = threading.Barrier(variant.workers)
        with ThreadPoolExecutor(variant.workers) as pool:
            jobs = [pool.submit(timed_reversal, model_path, variant, batches, ready) for _ in range(variant.workers)]
            return [job.result() for job in jobs]
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(variant.workers), context.Queue()
    workers = [
        context.Process(target=process_worker, args=(model_path, variant, batches, ready, results))
        for _ in range(variant.workers)
    ]
    for worker in workers:
        worker.start()
    seconds: list[float] = []
    while len(seconds) < len(workers):
        try:
            seconds.append(results.get(timeout=1))
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                for worker in workers:
                    worker.kill()
                raise RuntimeError("a timing process failed (its traceback is above)") from None
    for worker in workers:
        worker.join()
    return seconds


def ms_per_image(model_path: Path, variant: Variant, batches: int) -> float:
    """Milliseconds per image over every worker's images: the slowest worker's time, all of them running at once."""
    images = MINI_BATCH * batches * variant.labels * variant.workers
    return max(worker_seconds(model_path, variant, batches)) * 1000 / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an ONNX classifier (instead of the random-weight ones)")
    parser.add_argument("--archs", default="paper,cnn,bn,resnet", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--batches", type=int, default=40, help="mini-batches of 16 timed per variant")
    args = parser.parse_args()
    print(
        f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, "
        f"native bfloat16: {cpu_has_native_bfloat16()}, torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        paths = [args.model] if args.model else [export_random(a, Path(folder)) for a in args.archs.split(",")]
        for path in paths:
            print(f"\n{path.stem}: ms per image, mini-batch {MINI_BATCH}")
            rounds = [[ms_per_image(path, v, args.batches) for v in VARIANTS] for _ in range(2)]
            best = [min(times) for times in zip(*rounds, strict=True)]
            for variant, ms in zip(VARIANTS, best, strict=True):
                print(f"  {variant.name:<30} {ms:7.3f}   speed {best[0] / ms:4.2f}x")


if __name__ == "__main__":
    main()
