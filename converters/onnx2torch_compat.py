"""Import onnx2torch on machines where torchvision is absent or broken.

onnx2torch imports torchvision at module load for two detection ops (NonMaxSuppression, RoiAlign). A
torchvision wheel built for another torch fails at import (`operator torchvision::nms does not exist`), and
an image classifier never needs those ops. When torchvision cannot be imported we register a stand-in
module whose every attribute raises a clear error if a graph actually uses one of those ops.
"""

from __future__ import annotations

import sys
import types


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.{name} is needed by this graph (a detection op) but torchvision cannot be imported "
            "here; install a torchvision build that matches your torch"
        )

    return call


class _MissingTorchvisionOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"ops.{name}")


def _install_torchvision_stand_in() -> None:
    root = types.ModuleType("torchvision")
    ops = _MissingTorchvisionOps("torchvision.ops")
    root.ops = ops  # type: ignore[attr-defined]
    root.__cleanse_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules["torchvision"] = root
    sys.modules["torchvision.ops"] = ops


def import_onnx2torch():
    """Return the onnx2torch module, importable with or without a working torchvision, with Cleanse's own
    converters (converters/ops) registered."""
    if "onnx2torch" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            _install_torchvision_stand_in()
        import onnx2torch  # noqa: F401
    from converters.ops import register_onnx2torch_converters

    register_onnx2torch_converters()
    return sys.modules["onnx2torch"]
