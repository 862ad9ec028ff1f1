"""Mitigation: patch an infected ONNX model with the triggers a scan reversed (unlearn, prune or filter)
and write it back as ONNX with the original's inputs, outputs, layout and opset."""

from scanner.mitigate.config import METHODS, MitigationConfig
from scanner.mitigate.result import MitigationResult, write_result
from scanner.mitigate.run_mitigation import mitigate

__all__ = ["METHODS", "MitigationConfig", "MitigationResult", "mitigate", "write_result"]
