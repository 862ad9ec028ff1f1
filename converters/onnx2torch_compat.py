"""Import onnx2torch on machines where torchvision is absent or broken.

onnx2torch imports torchvision at module load for two detection ops (NonMaxSuppression, RoiAlign), and pip
installs the torchvision it declares: from PyPI that is a CUDA build, which beside a CPU torch fails at import
(`operator torchvision::nms does not exist`). An image classifier never needs those ops. So before onnx2torch
loads we try exactly what it will use from torchvision; if any of it raises (missing, failing at import after
half its submodules loaded, or failing at attribute access), we drop whatever torchvision left in sys.modules
and register a stand-in whose every attribute raises a clear error if a graph does use one of those ops.
"""

from __future__ import annotations

import sys
import types

from cleanse_base.text import one_line

# what onnx2torch 1.5.15 takes from torchvision (node_converters/nms.py and roialign.py)
TORCHVISION_OPS_USED = ("nms", "box_convert", "roi_align")


class _Unavailable(types.ModuleType):
    """A module whose public attributes are functions that raise, naming why torchvision is missing."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__cleanse_stand_in__ = True
        self._reason = reason

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _raiser(f"{self.__name__}.{attribute}", self._reason)


def _raiser(name: str, reason: str):
    def call(*args, **kwargs):
        raise RuntimeError(
            f"{name} is needed by this graph (a detection op) but torchvision cannot be used here ({reason}); "
            "install a torchvision build that matches your torch"
        )

    return call


def torchvision_problem() -> str | None:
    """Why torchvision cannot serve onnx2torch here (one line), or None when it can."""
    try:
        import torchvision.ops

        for name in TORCHVISION_OPS_USED:
            getattr(torchvision.ops, name)
    except Exception as exc:  # ImportError, or RuntimeError/AttributeError from a build for another torch
        return one_line(exc)
    return None


def _forget(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def install_torchvision_stand_in(reason: str) -> None:
    """Put a stand-in torchvision (and torchvision.ops) in sys.modules in place of whatever is there."""
    _forget("torchvision")
    root = _Unavailable("torchvision", reason)
    ops = _Unavailable("torchvision.ops", reason)
    root.ops = ops
    sys.modules["torchvision"] = root
    sys.modules["torchvision.ops"] = ops


def import_onnx2torch():
    """Return the onnx2torch module, importable with or without a working torchvision, with Cleanse's own
    converters (converters/ops) registered."""
    if "onnx2torch" not in sys.modules:
        problem = torchvision_problem()
        if problem is not None:
            install_torchvision_stand_in(problem)
        import onnx2torch  # noqa: F401
    from converters.ops import register_onnx2torch_converters

    register_onnx2torch_converters()
    return sys.modules["onnx2torch"]
