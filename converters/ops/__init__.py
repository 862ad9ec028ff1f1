"""Ops that Cleanse makes convertible where onnx2torch or ONNX's version converter stops short.

Graph rewrites (gelu) run in converters.onnx_prepare; converters for onnx2torch's registry are registered
by `register_onnx2torch_converters`, which converters.onnx2torch_compat.import_onnx2torch calls.
"""


def register_onnx2torch_converters() -> None:
    """Register Cleanse's onnx2torch converters (importing the modules does it, once)."""
    from converters.ops import global_average_pool  # noqa: F401
