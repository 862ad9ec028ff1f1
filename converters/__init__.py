"""Model intake: any ONNX file (and, through the exporters, other frameworks) to a differentiable torch module.

The public names load on first use (PEP 562): `converters.overrides`, which the CLI reads for its flags, stays
free of torch and onnx."""

from __future__ import annotations

from cleanse_base.errors import ModelError
from cleanse_base.lazy import lazy_getattr

_PUBLIC = {"ConvertedModel": "converters.onnx_to_torch", "load_onnx_classifier": "converters.onnx_to_torch"}

__all__ = [*_PUBLIC, "ModelError"]

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
