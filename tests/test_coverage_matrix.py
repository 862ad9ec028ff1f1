"""The coverage matrix: architecture families x exporters x opsets x output heads (docs/coverage.md).

Each cell exports a small random-weight classifier, then checks what a scan needs: it converts
(load_onnx_classifier, which also checks the torch module against onnxruntime), gradients reach the input,
and one trigger-reversal step runs. The matrix is not a full product: every family meets every exporter,
every head meets every family, and every opset meets the plain CNN and the ViT (the family with the most
opset-dependent ops: LayerNormalization from 17, Gelu from 20).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.contract import ContractOverrides
from converters.onnx_to_torch import RELATIVE_TOLERANCE, load_onnx_classifier
from fixtures.export import export_dynamo, export_legacy
from fixtures.families import CHANNELS, CLASSES, FAMILIES, HEADS, SIZE, keras_classifier, torch_classifier
from scanner.config import ReverseConfig
from scanner.model import ScoringModel
from scanner.preprocess import make_scaling
from scanner.reverse import TriggerReverser

FIXED_BATCH = 4
ONE_STEP = ReverseConfig(mini_batch=FIXED_BATCH, images_per_step=FIXED_BATCH, max_steps=1)
LEGACY_OPSETS = range(11, 18)
DYNAMO_OPSETS = (18, 19, 20)
OPSET_FAMILIES = ("plain_cnn", "vit")
DYNAMO_EXPORTERS = ("dynamo", "dynamo-static")


@dataclass(frozen=True)
class Cell:
    family: str
    exporter: str  # "legacy", "dynamo" (dynamic batch), "dynamo-static" (batch baked in) or "keras"
    opset: int
    head: str

    @property
    def id(self) -> str:
        return f"{self.family}-{self.exporter}-opset{self.opset}-{self.head}"


def matrix() -> list[Cell]:
    cells = {
        # every family with every exporter
        *(Cell(f, "legacy", 17, "logits") for f in FAMILIES),
        *(Cell(f, exporter, 18, "logits") for f in FAMILIES for exporter in DYNAMO_EXPORTERS),
        *(Cell(f, "keras", 17, "softmax") for f in FAMILIES),
        # every head with every family, and with every exporter for the plain CNN
        *(Cell(f, "legacy", 17, head) for f in FAMILIES for head in HEADS),
        *(Cell("plain_cnn", exporter, 18, head) for exporter in DYNAMO_EXPORTERS for head in HEADS),
        *(Cell("plain_cnn", "keras", 17, head) for head in HEADS),
        # every opset with the plain CNN and the ViT
        *(Cell(f, "legacy", opset, "logits") for f in OPSET_FAMILIES for opset in LEGACY_OPSETS),
        *(Cell(f, e, opset, "logits") for f in OPSET_FAMILIES for e in DYNAMO_EXPORTERS for opset in DYNAMO_OPSETS),
        *(Cell(f, "keras", opset, "softmax") for f in OPSET_FAMILIES for opset in (13, 15)),
    }
    return sorted(cells, key=lambda cell: cell.id)


# Cells known not to work, with the reason; each runs as a strict xfail, so a fix shows up as a failure.
UNSUPPORTED: dict[str, str] = {}


def export_cell(cell: Cell, folder: Path) -> Path:
    path = folder / f"{cell.id}.onnx"
    if cell.exporter == "keras":
        from converters.intake import convert_to_onnx

        keras_path = folder / f"{cell.id}.keras"
        keras_classifier(cell.family, cell.head).save(keras_path)
        convert_to_onnx(keras_path, path, opset=cell.opset)
        return path
    module = torch_classifier(cell.family, cell.head)
    if cell.exporter == "legacy":
        export_legacy(module, path, (FIXED_BATCH, CHANNELS, SIZE, SIZE), opset=cell.opset)
    else:
        example = torch.rand(FIXED_BATCH, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        export_dynamo(module, path, example, dynamic_batch=cell.exporter == "dynamo", opset=cell.opset)
    return path


def cell_param(cell: Cell):
    marks = [pytest.mark.xfail(strict=True, reason=UNSUPPORTED[cell.id])] if cell.id in UNSUPPORTED else []
    return pytest.param(cell, id=cell.id, marks=marks)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANSE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("cell", [cell_param(cell) for cell in matrix()])
def test_cell_converts_differentiates_and_scans(cell: Cell, tmp_path: Path):
    if cell.exporter == "keras":
        pytest.importorskip("tensorflow", reason="needs the keras extra: pip install .[keras]")
    path = export_cell(cell, tmp_path)

    converted = load_onnx_classifier(path, ContractOverrides())
    contract = converted.contract
    assert contract.image_shape == (CHANNELS, SIZE, SIZE) and contract.num_classes == CLASSES
    assert contract.layout == ("NHWC" if cell.exporter == "keras" else "NCHW")
    expected_kind = {"logits": "logits", "softmax": "probabilities", "log_softmax": "log_probabilities"}[cell.head]
    assert contract.output_kind == expected_kind
    assert contract.batch_size == (FIXED_BATCH if cell.exporter == "dynamo-static" else None)
    assert converted.max_abs_diff <= RELATIVE_TOLERANCE

    scoring = ScoringModel(converted.module, contract, make_scaling("unit", CHANNELS))
    images = torch.rand(FIXED_BATCH, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255
    images.requires_grad_(True)
    scoring(images).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0

    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 255, (2 * FIXED_BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    (trigger,) = TriggerReverser(scoring, ONE_STEP, torch.device("cpu"), seed=0).reverse(clean, [0])
    assert trigger.steps == 1 and np.isfinite(trigger.norm) and trigger.mask.shape == (SIZE, SIZE)


@pytest.mark.slow
def test_keras_grouped_convolution_is_unsupported_with_the_op_named(tmp_path: Path):
    """Unsupported cell: Keras' Conv2D(groups>1) reaches tf2onnx as an XLA call it cannot convert."""
    pytest.importorskip("tensorflow", reason="needs the keras extra: pip install .[keras]")
    import keras

    from cleanse_base.errors import ModelError
    from converters.intake import convert_to_onnx

    inputs = keras.Input((SIZE, SIZE, 8))
    model = keras.Model(
        inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(keras.layers.Conv2D(8, 1, groups=2)(inputs)))
    )
    model.save(tmp_path / "grouped.keras")
    with pytest.raises(ModelError, match="StatefulPartitionedCall.*grouped Conv2D"):
        convert_to_onnx(tmp_path / "grouped.keras", tmp_path / "grouped.onnx")
