"""Mitigation: patch an infected ONNX model with the triggers a scan reversed (one of the methods in
scanner/mitigate/methods/: unlearn, prune or filter) and write it back as ONNX with the original's inputs,
outputs, layout and opset.

The public names load on first use (PEP 562), so that the CLI reads `scanner.mitigate.config` without torch."""

from __future__ import annotations

from cleanse_base.lazy import lazy_getattr
from scanner.mitigate.config import MitigationConfig, method_names

METHODS = method_names()

_PUBLIC = {
    "MethodOutcome": "scanner.mitigate.methods",
    "MitigationMethod": "scanner.mitigate.methods",
    "MitigationResult": "scanner.mitigate.result",
    "write_result": "scanner.mitigate.result",
    "mitigate": "scanner.mitigate.run_mitigation",
    "Workbench": "scanner.mitigate.workbench",
}

__all__ = [*_PUBLIC, "METHODS", "MitigationConfig", "method_names"]

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
