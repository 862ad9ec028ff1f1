"""Mitigation: patch an infected ONNX model with the triggers a scan reversed (one of the methods in
scanner/mitigate/methods/: unlearn, prune or filter) and write it back as ONNX with the original's inputs,
outputs, layout and opset."""

from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.methods import MethodOutcome, MitigationMethod, method_names
from scanner.mitigate.result import MitigationResult, write_result
from scanner.mitigate.run_mitigation import mitigate
from scanner.mitigate.workbench import Workbench

METHODS = method_names()

__all__ = [
    "METHODS",
    "MethodOutcome",
    "MitigationConfig",
    "MitigationMethod",
    "MitigationResult",
    "Workbench",
    "method_names",
    "mitigate",
    "write_result",
]
