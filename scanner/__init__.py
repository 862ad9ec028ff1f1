"""Cleanse: find backdoors in image classifiers from any framework (Neural Cleanse over ONNX).

The public names load on first use (PEP 562), so that `cleanse` starts its Ctrl-C handling before torch loads.
"""

from __future__ import annotations

from cleanse_base.lazy import lazy_getattr
from cleanse_base.version import __version__

_PUBLIC = {
    "PRESETS": "scanner.config",
    "ReverseConfig": "scanner.config",
    "ScanConfig": "scanner.config",
    "make_config": "scanner.config",
    "ScanReport": "scanner.report",
    "write_report": "scanner.report",
    "scan": "scanner.run_scan",
}

__all__ = [*_PUBLIC, "__version__"]

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
