"""Keras (`.keras`, `.h5`) and TensorFlow SavedModel folders as SourceModels, converted by tf2onnx.

TensorFlow, Keras and tf2onnx come with the optional extra `pip install .[keras]`; without it these files
get a ModelError naming the extra.

- Keras files load with `safe_mode=True` and `compile=False`: a `Lambda` layer's serialized Python code is
  refused rather than deserialized, and classes are only resolved among Keras' own saveable layers (Keras
  3.15's `_retrieve_class_or_fn`), so no code from the file runs; what loads is a stack of built-in layers.
- A SavedModel holds TensorFlow graphs, no Python, but `tf.saved_model.load` runs some of them while it
  loads (TF2 resource initializers; a TF1 model's main_op and restore op), and graph ops can write files
  (WriteFile, SaveV2), read them (ReadFile, ImmutableConst) or call back into Python (PyFunc). So before
  TensorFlow loads anything, saved_model.pb is parsed with the protobuf classes alone and every node of the
  meta graph and every function of its library is checked against an allow-list of pure tensor ops
  (`saved_model_check`); assets, links and files outside the usual layout are refused, and so are TF1
  SavedModels (no object graph), whose loader runs graph ops of its own choosing.
- A `.keras` file is a zip: its declared uncompressed sizes are checked against the limits before Keras
  opens it (a few MB can inflate to gigabytes). Keras itself refuses HDF5 datasets with external storage.

tf2onnx keeps the Keras NHWC input (it adds Transposes around convolutions).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cleanse_base.errors import ModelError
from cleanse_base.limits import check_limit
from cleanse_base.text import one_line
from converters.saved_model_check import EXTRA_HINT, check_saved_model, quiet_tensorflow
from converters.source_model import SourceModel
from converters.zip_archive import open_checked_zip

TF2ONNX_OPSET = 17
SAMPLE_BATCH = 2
INPUT_NAME = "input"
SERVING_SIGNATURE = "serving_default"


def import_tensorflow() -> tuple[Any, Any]:
    """(tensorflow, tf2onnx), quiet, or ModelError naming the extra."""
    quiet_tensorflow()
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise ModelError(EXTRA_HINT) from None
    return tf, tf2onnx


def erfc_as_one_minus_erf(graph: Any, node: Any, name: str, args: list) -> None:
    """tf2onnx handler for TensorFlow's Erfc, which it lacks and Keras' exact `gelu` uses: 1 - Erf(x)."""
    from tf2onnx import utils

    erf = graph.make_node("Erf", [node.input[0]])
    one = graph.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=np.float32))
    graph.replace_inputs(node, [one.output[0], erf.output[0]])
    node.type = "Sub"


TF2ONNX_HANDLERS = {"Erfc": (erfc_as_one_minus_erf, [])}
# Keras compiles a grouped Conv2D into an XLA function call, which tf2onnx 1.17 leaves unconverted.
GROUPED_CONV_HINT = " (Keras writes a grouped Conv2D, groups > 1, as such a call)"


def leftover_tf_ops(model: Any) -> list[str]:
    """Op types tf2onnx left as TensorFlow ops (it logs them and writes them into the graph anyway)."""
    import onnx

    return sorted({node.op_type for node in model.graph.node if not node.domain and not onnx.defs.has(node.op_type)})


def tf2onnx_export(tf2onnx: Any, function: Any, spec: Any) -> Callable[[Path, int], None]:
    def export(out: Path, opset: int) -> None:
        # tf2onnx logs each op it cannot convert on stderr; the one-line refusal below names them instead
        logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
        try:
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=(spec,), opset=opset, custom_op_handlers=dict(TF2ONNX_HANDLERS)
            )
        except Exception as exc:
            raise ModelError(f"tf2onnx cannot convert the model ({one_line(exc)})") from None
        if leftover := leftover_tf_ops(model):
            hint = GROUPED_CONV_HINT if "StatefulPartitionedCall" in leftover else ""
            raise ModelError(
                f"tf2onnx {tf2onnx.__version__} cannot convert TensorFlow op(s) {', '.join(leftover)}{hint}"
            )
        out.write_bytes(model.SerializeToString())

    return export


def numpy_run(function: Any) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(function(batch), dtype=np.float64)

    return run


def single_image_input(path: Path, shape: Any) -> tuple[int | None, ...]:
    dims = tuple(None if d is None else int(d) for d in shape)
    if len(dims) not in (2, 3, 4) or any(d is None for d in dims[1:]):
        raise ModelError(f"{path}: input shape {list(dims)} is not an image batch with known size")
    return dims


def check_keras_file_sizes(path: Path) -> None:
    """The file against model_bytes and, for a `.keras` zip, its members' declared sizes against the limits."""
    if zipfile.is_zipfile(path):
        open_checked_zip(path, str(path)).close()
    else:
        check_limit(f"{path}: model file size", path.stat().st_size, "model_bytes", ModelError)


def load_keras(path: Path) -> SourceModel:
    check_keras_file_sizes(path)
    tf, tf2onnx = import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelError(f"{path}: Keras cannot load it in safe mode ({one_line(exc)})") from None
    if len(model.inputs) != 1:
        raise ModelError(f"{path}: the model takes {len(model.inputs)} inputs; an image classifier takes one")
    dims = single_image_input(path, model.inputs[0].shape)
    spec = tf.TensorSpec((None, *dims[1:]), tf.float32, name=INPUT_NAME)
    forward = tf.function(lambda images: model(images, training=False), input_signature=(spec,), autograph=False)
    return SourceModel(
        converter=f"tf2onnx {tf2onnx.__version__} of the Keras {keras.__version__} model (loaded in safe mode)",
        sample_shape=(SAMPLE_BATCH, *dims[1:]),
        run=numpy_run(forward),
        export=tf2onnx_export(tf2onnx, forward, spec),
        default_opset=TF2ONNX_OPSET,
    )


def load_saved_model(path: Path) -> SourceModel:
    check_saved_model(path)
    tf, tf2onnx = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: TensorFlow cannot load the SavedModel ({one_line(exc)})") from None
    signature = loaded.signatures.get(SERVING_SIGNATURE)
    if signature is None:
        raise ModelError(f"{path}: no {SERVING_SIGNATURE!r} signature (found: {', '.join(loaded.signatures)})")
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelError(f"{path}: the serving signature takes {len(inputs)} inputs; an image classifier takes one")
    ((input_key, input_spec),) = inputs.items()
    dims = single_image_input(path, input_spec.shape)
    spec = tf.TensorSpec((None, *dims[1:]), tf.float32, name=INPUT_NAME)

    def first_output(images: Any) -> Any:
        outputs = loaded.signatures[SERVING_SIGNATURE](**{input_key: images})  # `loaded` owns the variables
        return outputs[sorted(outputs)[0]] if isinstance(outputs, dict) else outputs

    forward = tf.function(first_output, input_signature=(spec,), autograph=False)
    return SourceModel(
        converter=f"tf2onnx {tf2onnx.__version__} of the SavedModel's {SERVING_SIGNATURE!r} signature",
        sample_shape=(SAMPLE_BATCH, *dims[1:]),
        run=numpy_run(forward),
        export=tf2onnx_export(tf2onnx, forward, spec),
        default_opset=TF2ONNX_OPSET,
    )
