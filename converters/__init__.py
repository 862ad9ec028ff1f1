"""Model intake: any ONNX file (and, through the exporters, other frameworks) to a differentiable torch module.

The public names load on first use (PEP 562): `converters.overrides`, which the CLI reads for its flags, stays
free of torch and onnx."""

from __future__ import annotations

import importlib
from typing import Any

from cleanse_base.errors import ModelError

_PUBLIC = {"ConvertedModel": "converters.onnx_to_torch", "load_onnx_classifier": "converters.onnx_to_torch"}

__all__ = [*_PUBLIC, "ModelError"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
