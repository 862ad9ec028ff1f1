"""Cleanse: find backdoors in image classifiers from any framework (Neural Cleanse over ONNX)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cleanse")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from scanner.api import scan  # noqa: E402
from scanner.config import PRESETS, ReverseConfig, ScanConfig, make_config  # noqa: E402
from scanner.report import ScanReport, write_report  # noqa: E402

__all__ = ["PRESETS", "ReverseConfig", "ScanConfig", "ScanReport", "__version__", "make_config", "scan", "write_report"]
