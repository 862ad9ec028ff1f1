"""Model intake: any ONNX file (and, through the exporters, other frameworks) to a differentiable torch module."""

from cleanse_base.errors import ModelError
from converters.onnx_to_torch import ConvertedModel, load_onnx_classifier

__all__ = ["ConvertedModel", "ModelError", "load_onnx_classifier"]
