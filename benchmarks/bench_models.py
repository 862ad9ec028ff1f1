"""The models the benchmarks name on their command lines: `digits` (the digits fixture, 10 classes), `gtsrb` (the
GTSRB replica, 43), `gtsrb-clean` (the clean replica), or a zoo model's name (`python -m fixtures.build zoo`).
The fixtures are built when missing; a zoo model must be built already."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fixtures.paths import DEFAULT_CACHE


@dataclass(frozen=True)
class BenchModel:
    model: Path  # the ONNX file
    data: Path  # its clean test images
    targets: tuple[int, ...]  # the planted target labels (empty for a clean model)


def bench_model(name: str, data_dir: Path) -> BenchModel:
    if name == "digits":
        from fixtures.digits import TARGET, build_digits

        files = build_digits(DEFAULT_CACHE)
        return BenchModel(files["digits_infected.onnx"], files["digits_test.npz"], (TARGET,))
    if name in ("gtsrb", "gtsrb-clean"):
        from fixtures.gtsrb import TARGET, build_gtsrb

        infected = name == "gtsrb"
        file = "gtsrb_infected.onnx" if infected else "gtsrb_clean.onnx"
        model = build_gtsrb(DEFAULT_CACHE, data_dir, infected=infected)[file]
        return BenchModel(model, data_dir / "gtsrb_test.npz", (TARGET,) if infected else ())
    from fixtures.zoo import DATASETS, ZooCard, model_paths

    model, card_path = model_paths(DEFAULT_CACHE, name)
    card = ZooCard.read(card_path)
    return BenchModel(
        model, DATASETS[card.dataset].folder(data_dir, DEFAULT_CACHE) / card.test_file, tuple(card.targets)
    )
