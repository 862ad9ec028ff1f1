"""Cleanse: find backdoors in image classifiers from any framework (Neural Cleanse over ONNX)."""

from cleanse_base.version import __version__
from scanner.config import PRESETS, ReverseConfig, ScanConfig, make_config
from scanner.report import ScanReport, write_report
from scanner.run_scan import scan

__all__ = ["PRESETS", "ReverseConfig", "ScanConfig", "ScanReport", "__version__", "make_config", "scan", "write_report"]
