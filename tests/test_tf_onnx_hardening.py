"""TensorFlow, Keras and ONNX files that would touch files or allocate gigabytes are refused before loading.

The whole attacks (a SavedModel writing a marker, ImmutableConst reading the secret, the 3.9 GB zip bomb, the
200k-node graph...) run as real `cleanse` processes in tests/test_hostile_corpus.py (cases `tfonnx-*`); here
are the checks themselves, on small real files and protos, with limits lowered where a real bomb would be slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cleanse_base.errors import ModelError
from cleanse_base.limits import ENV_VAR
from converters.onnx_prepare import count_nodes, load_checked
from converters.saved_model_check import quiet_tensorflow
from fixtures.hostile.tf_onnx_files import external_tensor, write_zip

# ---------------------------------------------------------------- ONNX


def image(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers)),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, path)
    return path


def int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def linear(path: Path, extra_nodes=(), extra: str | None = None, initializers=(), input_shape=("n", 1, 8, 8)):
    """An 8x8 -> 10 linear classifier; `extra` (a scalar tensor made by extra_nodes) is added to its scores."""
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits" if extra else "scores"]),
        *extra_nodes,
    ]
    if extra:
        nodes.append(helper.make_node("Add", ["logits", extra], ["scores"]))
    weights = [numpy_helper.from_array(np.ones((64, 10), np.float32), "w"), int64("flat_shape", [-1, 64])]
    return save(
        path, nodes, [image("image", list(input_shape))], [image("scores", ["n", 10])], [*weights, *initializers]
    )


def test_a_plain_classifier_passes_every_check(tmp_path):
    assert load_checked(linear(tmp_path / "m.onnx")).graph.node


def test_a_huge_declared_input_is_refused_by_image_elements(tmp_path):
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["scores"])]
    path = save(tmp_path / "m.onnx", nodes, [image("image", ["n", 3, 16000, 16000])], [image("scores", ["n", 3])])
    assert path.stat().st_size < 300
    with pytest.raises(
        ModelError, match=r"input 'image', elements per sample: 768000000 is over the limit image_elements"
    ):
        load_checked(path)


def test_a_huge_input_size_given_on_the_command_line_is_refused_before_a_sample_runs(tmp_path):
    from converters.contract import ContractOverrides
    from converters.onnx_to_torch import load_onnx_classifier

    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["scores"])]
    path = save(tmp_path / "m.onnx", nodes, [image("image", ["n", 3, "h", "w"])], [image("scores", ["n", 3])])
    with pytest.raises(ModelError, match=r"elements per image: 768000000 is over the limit image_elements"):
        load_onnx_classifier(path, ContractOverrides(height=16000, width=16000))


def test_a_constant_of_shape_sized_by_constants_is_refused_by_tensor_bytes(tmp_path):
    bomb = [
        helper.make_node("Concat", ["side", "side"], ["bomb_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]),
        helper.make_node("ReduceSum", ["bomb"], ["total"], keepdims=0),
    ]
    path = linear(tmp_path / "m.onnx", bomb, "total", [int64("side", [24000])])
    with pytest.raises(ModelError, match=r"ConstantOfShape output 'bomb' of shape \[24000, 24000\].*tensor_bytes"):
        load_checked(path)


def test_a_constant_of_shape_sized_by_the_input_pixels_is_refused_as_unbounded(tmp_path):
    bomb = [
        helper.make_node("Slice", ["flat", "zero", "two", "one_axis"], ["two_pixels"]),
        helper.make_node("Reshape", ["two_pixels", "pair"], ["pair_values"]),
        helper.make_node("Cast", ["pair_values"], ["bomb_shape"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]),
        helper.make_node("ReduceSum", ["bomb"], ["total"], keepdims=0),
    ]
    constants = [int64("zero", [0]), int64("two", [2]), int64("one_axis", [1]), int64("pair", [-1])]
    path = linear(tmp_path / "m.onnx", bomb, "total", constants)
    with pytest.raises(ModelError, match="size of ConstantOfShape output 'bomb' is set at run time"):
        load_checked(path)


def test_activations_are_sized_at_the_scan_batch(tmp_path, monkeypatch):
    path = linear(tmp_path / "m.onnx")
    monkeypatch.setenv(ENV_VAR, "tensor_bytes=4K")  # the input at batch 32: 32 * 64 * 4 = 8 KiB
    with pytest.raises(ModelError, match=r"graph input 'image' of shape \[32, 1, 8, 8\] at batch 32, bytes: 8192"):
        load_checked(path)


def test_nodes_of_subgraphs_count_toward_graph_nodes(tmp_path, monkeypatch):
    branch = helper.make_graph(
        [helper.make_node("Identity", ["logits"], [f"b{i}"]) for i in range(1)]
        + [helper.make_node("Identity", [f"b{i}"], [f"b{i + 1}"]) for i in range(29)],
        "branch",
        [],
        [image("b29", ["n", 10])],
    )
    condition = numpy_helper.from_array(np.array(True), "condition")
    nodes = [helper.make_node("If", ["condition"], ["chosen"], then_branch=branch, else_branch=branch)]
    nodes.append(helper.make_node("ReduceSum", ["chosen"], ["total"], keepdims=0))
    path = linear(tmp_path / "m.onnx", nodes, "total", [condition])
    assert count_nodes(onnx.load(path).graph) == 2 + 2 + 60 + 1
    monkeypatch.setenv(ENV_VAR, "graph_nodes=64")
    with pytest.raises(ModelError, match=r"graph nodes \(subgraphs included\): 65 is over the limit graph_nodes=64"):
        load_checked(path)


def external_weight(rows: int, location: str = "weights.bin", length: int | None = None) -> onnx.TensorProto:
    return external_tensor("w_big", [rows, 10], location, length)


def with_external_weight(path: Path, weight) -> Path:
    nodes = [helper.make_node("ReduceSum", ["w_big"], ["total"], keepdims=0)]
    return linear(path, nodes, "total", [weight])


def test_external_data_over_tensor_bytes_is_refused_before_it_is_read(tmp_path, monkeypatch):
    rows = 1 << 20  # 40 MiB, a sparse file
    with open(tmp_path / "weights.bin", "wb") as file:
        file.truncate(rows * 40)
    path = with_external_weight(tmp_path / "m.onnx", external_weight(rows, length=rows * 40))
    monkeypatch.setenv(ENV_VAR, "tensor_bytes=16M")
    with pytest.raises(ModelError, match=r"stored tensor 'w_big', bytes: 41943040 is over the limit tensor_bytes"):
        load_checked(path)


def test_external_data_without_a_length_is_sized_by_its_file(tmp_path, monkeypatch):
    with open(tmp_path / "weights.bin", "wb") as file:
        file.truncate(64 << 20)  # dims say 400 bytes; onnx would read the whole 64 MiB file
    path = with_external_weight(tmp_path / "m.onnx", external_weight(10))
    monkeypatch.setenv(ENV_VAR, "tensor_bytes=16M")
    with pytest.raises(ModelError, match=r"stored tensor 'w_big', bytes: 67108864 is over the limit tensor_bytes"):
        load_checked(path)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(400))
    (folder / "link.bin").symlink_to(outside)
    path = with_external_weight(folder / "m.onnx", external_weight(10, location))
    with pytest.raises(ModelError, match="cannot read its external data"):
        load_checked(path)


# ---------------------------------------------------------------- Keras zip


def test_a_keras_zip_declaring_more_than_unpacked_bytes_is_refused_before_keras(tmp_path, monkeypatch):
    from converters.keras_source import check_keras_file_sizes

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(8 << 20)
    bomb = compressor.compress(zeros) + compressor.flush()
    path = tmp_path / "model.keras"
    write_zip(
        path,
        [("config.json", b"{}", 0, zlib.crc32(b"{}"), 2), ("model.weights.h5", bomb, 8, zlib.crc32(zeros), len(zeros))],
    )
    assert path.stat().st_size < 64 << 10
    monkeypatch.setenv(ENV_VAR, "unpacked_bytes=4M")
    with pytest.raises(ModelError, match=r"declared unpacked size: 8388610 is over the limit unpacked_bytes"):
        check_keras_file_sizes(path)
    monkeypatch.delenv(ENV_VAR)
    check_keras_file_sizes(path)


# ---------------------------------------------------------------- SavedModel: files and graph, no TensorFlow load


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("tensorflow", reason="needs the keras extra: pip install .[keras]")
    quiet_tensorflow()
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def keras_export(tf, tmp_path_factory) -> Path:
    """A real Keras classifier exported as a SavedModel (conv, batch norm, pooling, dense, softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    folder = tmp_path_factory.mktemp("export") / "saved"
    model.export(folder, format="tf_saved_model", verbose=False)
    return folder


def copy_of(folder: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(folder, target)
    return target


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
def test_a_real_keras_export_passes_the_check(keras_export):
    from converters.saved_model_check import check_saved_model

    check_saved_model(keras_export)


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda f: (f / "assets" / "vocab.txt").write_text("x"), "asset files"),
        (lambda f: (f / "variables" / "extra.bin").write_bytes(b"x"), "unexpected file 'variables/extra.bin'"),
        (lambda f: (f / "fingerprint.pb").unlink() or (f / "fingerprint.pb").symlink_to("/etc/hostname"), "link"),
        (lambda f: (f / "saved_model.pb").rename(f / "saved_model.pbtxt"), "unexpected file 'saved_model.pbtxt'"),
    ],
    ids=["asset", "stray-variable-file", "linked-fingerprint", "pbtxt-only"],
)
def test_files_outside_the_saved_model_layout_are_refused(keras_export, tmp_path, plant, message):
    from converters.saved_model_check import check_saved_model

    folder = copy_of(keras_export, tmp_path / "saved")
    plant(folder)
    with pytest.raises(ModelError, match=message):
        check_saved_model(folder)


def parsed(folder: Path):
    from converters.saved_model_check import parse_saved_model

    return parse_saved_model(folder)


def write(folder: Path, saved_model) -> None:
    (folder / "saved_model.pb").write_bytes(saved_model.SerializeToString())


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
def test_an_op_outside_the_allow_list_is_named_wherever_it_is(keras_export, tmp_path):
    from converters.saved_model_check import check_saved_model

    folder = copy_of(keras_export, tmp_path / "saved")
    saved_model = parsed(folder)
    function = saved_model.meta_graphs[0].graph_def.library.function[0]
    planted = function.node_def.add(name="leak", op="ImmutableConst")
    planted.attr["memory_region_name"].s = b"/etc/hostname"
    write(folder, saved_model)
    with pytest.raises(ModelError, match=rf"ImmutableConst \(in function {function.signature.name}\)"):
        check_saved_model(folder)


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
def test_saver_ops_pass_only_in_functions_that_nothing_but_the_saver_calls(keras_export, tmp_path):
    from converters.saved_model_check import check_saved_model, disallowed_ops

    folder = copy_of(keras_export, tmp_path / "saved")
    saved_model = parsed(folder)
    meta_graph = saved_model.meta_graphs[0]
    saver_functions = [
        f.signature.name for f in meta_graph.graph_def.library.function if "traced_save" in f.signature.name
    ]
    assert saver_functions and disallowed_ops(meta_graph) == []  # SaveV2 sits in _traced_save, unused by loading
    # a model function now calls the saver function too: its SaveV2 would run when the model runs
    model_function = next(f for f in meta_graph.graph_def.library.function if "traced" not in f.signature.name)
    call = model_function.node_def.add(name="also_save", op="StatefulPartitionedCall")
    call.attr["f"].func.name = saver_functions[0]
    write(folder, saved_model)
    with pytest.raises(ModelError, match=r"SaveV2 \(in function .*traced_save"):
        check_saved_model(folder)


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
def test_a_tf1_saved_model_is_refused(keras_export, tmp_path):
    from converters.saved_model_check import check_saved_model

    folder = copy_of(keras_export, tmp_path / "saved")
    saved_model = parsed(folder)
    saved_model.meta_graphs[0].ClearField("object_graph_def")
    write(folder, saved_model)
    with pytest.raises(ModelError, match="TensorFlow 1 SavedModel"):
        check_saved_model(folder)


@pytest.mark.slow  # TensorFlow import and a Keras export: ~20 s once per module
def test_a_keras_h5_whose_weights_use_external_storage_is_refused(tf, tmp_path):
    """HDF5 external storage reads any file by path; Keras 3 refuses it, and the refusal must stay."""
    import h5py
    import keras

    from converters.keras_source import load_keras

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(40, dtype=np.float32).tobytes())
    keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as file:
        datasets: list[str] = []
        file.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
        kernel = next(name for name in datasets if name.endswith("kernel"))  # layer names vary within a process
        shape = file[kernel].shape
        del file[kernel]
        file.create_dataset(kernel, shape=shape, dtype="float32", external=[(str(secret), 0, secret.stat().st_size)])
    with pytest.raises(ModelError, match="external Dataset"):
        load_keras(tmp_path / "m.h5")


@pytest.mark.slow  # a TensorFlow import in a fresh process: ~10 s
def test_tensorflow_imports_without_a_line_on_stderr():
    """A refusal is one line on stderr, and TensorFlow's C++ start-up notices would add theirs."""
    pytest.importorskip("tensorflow", reason="needs the keras extra: pip install .[keras]")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    code = (
        "from converters.saved_model_check import quiet_tensorflow\n"
        "quiet_tensorflow()\n"
        "import tensorflow, tf2onnx\n"
        "from tensorflow.core.protobuf import saved_model_pb2\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
