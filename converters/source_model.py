"""A model loaded in its own framework: how to run it, and how to write it as ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SourceModel:
    converter: str  # the exporter that writes the ONNX file, as the report names it
    sample_shape: tuple[int, ...]  # an input shape the model runs at, in its own layout
    run: Callable[[np.ndarray], np.ndarray]  # the framework's own forward pass on a float32 batch
    export: Callable[[Path, int], None]  # writes the ONNX file at the given opset
    default_opset: int
    notes: tuple[str, ...] = ()
