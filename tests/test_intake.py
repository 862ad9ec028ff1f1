"""Model intake: untrusted files are refused without running them, other formats convert faithfully, and a
backdoored Keras or torch.export digits model is flagged when scanned straight from its own file."""

from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cleanse_base.errors import ModelError
from cleanse_base.files import file_sha256
from converters.intake import convert_to_onnx, intake_model
from converters.model_files import ModelKind, detect_kind
from converters.pickle_scan import UNKNOWN_GLOBAL, pickle_globals
from scanner import make_config, scan
from scanner.cli import EXIT_ERROR, main

TARGET = 7
E2E_CONFIG = {"seed": 0, "threads": 1, "pairs": {"max_pairs": 0}, "additive": {"steps": 0}}


def assert_flags_the_keras_target(report) -> None:
    """The Keras digits model's target flagged, its trigger far smaller than any other label's. TensorFlow trains
    that model a little differently on each CPU (its kernels' sums): on some AVX512 machines clean label 3 reaches a
    natural 5-pixel trigger (L1 about 5 against a median of 12, p 1e-5 to 1e-9) and is flagged beside the target."""
    norms = {result.label: result.l1_norm for result in report.labels}
    assert TARGET in report.flagged, report.to_json_dict()["labels"]
    assert norms[TARGET] < min(norm for label, norm in norms.items() if label != TARGET) / 3, norms


class WritesFileWhenUnpickled:
    """A planted payload: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANSE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)
    ).eval()


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory, small_cnn) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(small_cnn, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), path)
    return path


def run_cli(*args: str):
    return CliRunner().invoke(main, list(map(str, args)))


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of a zip archive with the entries ending in each key replaced."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for name in original.namelist():
            new = next((data for suffix, data in replace.items() if name.endswith(suffix)), None)
            copy.writestr(name, new if new is not None else original.read(name))
    return target


# ---------------------------------------------------------------- pickles are refused unread


def planted_files(folder: Path, marker: Path) -> list[Path]:
    payload = WritesFileWhenUnpickled(marker)
    files = []
    for name in ("model.pt", "model.pth"):
        files.append(folder / name)
        files[-1].write_bytes(pickle.dumps(payload))
    files.append(folder / "checkpoint.pt")
    torch.save({"state_dict": payload}, files[-1])  # the zip layout: archive/data.pkl
    return files


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WritesFileWhenUnpickled(marker))).close()
    assert marker.exists()  # so its absence below means the file was never unpickled


@pytest.mark.slow
@pytest.mark.parametrize("command", ["scan", "convert"])
def test_pickled_checkpoints_are_refused_without_running_them(tmp_path, command):
    marker = tmp_path / "ran"
    for path in planted_files(tmp_path, marker):
        extra = ["--data", tmp_path / "never_read.npz"] if command == "scan" else ["-o", tmp_path / "out.onnx"]
        result = run_cli(command, path, *extra)
        assert result.exit_code == EXIT_ERROR, result.output
        assert "pickled torch checkpoint" in result.output and "torch.export" in result.output
        assert "Traceback" not in result.output
        assert not marker.exists(), f"{path.name} was unpickled"


@pytest.mark.slow
def test_pt2_with_pickled_sample_inputs_is_refused(tmp_path, pt2_file):
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save(WritesFileWhenUnpickled(marker), buffer)  # torch.export.load would fall back to full unpickling
    planted = rewrite_zip(pt2_file, tmp_path / "planted.pt2", {"data/sample_inputs/model.pt": buffer.getvalue()})
    with pytest.raises(ModelError, match="sample inputs are not plain tensors"):
        convert_to_onnx(planted, tmp_path / "out.onnx")
    assert not marker.exists()


@pytest.mark.slow
def test_pt2_calling_a_python_function_is_refused(tmp_path, pt2_file):
    with zipfile.ZipFile(pt2_file) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = archive.read(name).decode()
    evil = program.replace("torch.ops.aten.relu.default", "torch.os.system")
    assert evil != program
    planted = rewrite_zip(pt2_file, tmp_path / "planted.pt2", {"models/model.json": evil.encode()})
    with pytest.raises(ModelError, match="torch.os.system"):
        convert_to_onnx(planted, tmp_path / "out.onnx")


@pytest.mark.slow
def test_pt2_with_a_pickled_weight_is_refused(tmp_path, pt2_file):
    with zipfile.ZipFile(pt2_file) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    planted = rewrite_zip(
        pt2_file, tmp_path / "planted.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ModelError, match="pickled object"):
        convert_to_onnx(planted, tmp_path / "out.onnx")


@pytest.mark.slow
def test_torchscript_archive_with_a_foreign_global_is_refused(tmp_path, small_cnn):
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(small_cnn), scripted)
    planted = rewrite_zip(
        scripted, tmp_path / "planted.pt", {"/data.pkl": pickle.dumps(WritesFileWhenUnpickled(tmp_path / "ran"))}
    )
    assert detect_kind(planted) is ModelKind.TORCHSCRIPT
    with pytest.raises(ModelError, match="imports io.open"):
        convert_to_onnx(planted, tmp_path / "out.onnx", image_shape=(1, 8, 8))
    assert not (tmp_path / "ran").exists()


def test_pickle_scan_reports_a_global_it_cannot_follow_as_unknown():
    # os, system, x, POP, STACK_GLOBAL: imports os.system, but not from the two strings just pushed
    hidden = b"\x80\x04\x8c\x02os\x8c\x06system\x8c\x01x0\x93."
    assert pickle_globals(hidden) == {UNKNOWN_GLOBAL}
    assert pickle_globals(pickle.dumps(WritesFileWhenUnpickled(Path("x")))) == {("io", "open")}


# ---------------------------------------------------------------- torch formats convert faithfully


@pytest.mark.slow
def test_pt2_and_torchscript_convert_and_match_the_source(tmp_path, pt2_file, small_cnn):
    record = convert_to_onnx(pt2_file, tmp_path / "pt2.onnx")
    assert record.source_format == ModelKind.TORCH_EXPORT.value and "dynamo" in record.converter
    assert record.opset == 18 and record.max_abs_diff_vs_source < 1e-4

    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(small_cnn), scripted)
    with pytest.raises(ModelError, match="--channels, --height and --width"):
        convert_to_onnx(scripted, tmp_path / "ts.onnx")
    record = convert_to_onnx(scripted, tmp_path / "ts.onnx", image_shape=(1, 8, 8))
    assert "legacy" in record.converter and record.max_abs_diff_vs_source < 1e-4


@pytest.mark.slow
def test_convert_command_writes_a_checked_onnx_file(tmp_path, pt2_file):
    out = tmp_path / "model.onnx"
    result = run_cli("convert", pt2_file, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output[result.output.index("{") :])
    assert record["converter"].startswith("torch.onnx.export") and record["opset"] == 18
    assert out.exists()


@pytest.mark.slow
def test_intake_passes_onnx_through_and_caches_conversions(pt2_file):
    first = intake_model(pt2_file)
    again = intake_model(pt2_file)
    assert again.onnx_path == first.onnx_path and again.record == first.record
    as_is = intake_model(first.onnx_path)
    assert as_is.onnx_path == first.onnx_path and as_is.record.converter is None


@pytest.mark.slow
def test_scan_reads_a_pt2_file_and_reports_its_conversion(tmp_path, pt2_file):
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)  # unlabelled, NHWC
    np.savez(tmp_path / "data.npz", x=images)
    one_step = {"labels": [0, 1], "reverse": {"max_steps": 1, "images_per_step": 8, "mini_batch": 8}}
    report = scan(pt2_file, tmp_path / "data.npz", make_config(one_step))
    intake = report.to_json_dict()["conversion"]["intake"]
    assert intake["source_format"] == ModelKind.TORCH_EXPORT.value and intake["opset"] == 18
    assert intake["converter"].startswith("torch.onnx.export (dynamo)") and intake["max_abs_diff_vs_source"] < 1e-4
    assert report.model_sha256 == intake["source_sha256"] == file_sha256(pt2_file)


# ---------------------------------------------------------------- clear errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a model file"),
        (b"hello, world\n", "not a model file"),
        (None, "no such file"),
    ],
)
def test_unreadable_inputs_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "model.dat"
    if content is not None:
        path.write_bytes(content)
    result = run_cli("convert", path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == EXIT_ERROR and message in result.output and "Traceback" not in result.output


def test_other_zips_and_folders_are_named_for_what_they_are_not(tmp_path):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as file:
        file.writestr("readme.txt", "hi")
    with pytest.raises(ModelError, match="not a torch.export, TorchScript or Keras model"):
        detect_kind(archive)
    with pytest.raises(ModelError, match="without saved_model.pb"):
        detect_kind(tmp_path)


@pytest.mark.slow
def test_keras_without_the_extra_names_it(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as file:
        file.writestr("config.json", "{}")
        file.writestr("model.weights.h5", b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    result = run_cli("convert", path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == EXIT_ERROR and "pip install .[keras]" in result.output


# ---------------------------------------------------------------- Keras: safe mode, formats


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason="needs the keras extra: pip install .[keras]")
    import keras

    return keras


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_layer_is_refused_and_its_code_never_runs(tmp_path, keras, suffix):
    marker = tmp_path / "ran"
    leave_mark = keras.layers.Lambda(lambda x, path=str(marker): (open(path, "w").close(), x)[1])
    model = keras.Sequential([keras.Input((8, 8, 1)), leave_mark, keras.layers.Flatten()])
    model.save(tmp_path / f"model{suffix}")
    assert marker.exists()  # building the model ran the lambda, here in the test
    marker.unlink()
    result = run_cli("convert", tmp_path / f"model{suffix}", "-o", tmp_path / "out.onnx")
    assert result.exit_code == EXIT_ERROR, result.output
    assert "safe mode" in result.output and "`Lambda` layer" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def keras_cnn(keras):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.slow
def test_keras_h5_and_saved_model_convert_and_match_the_source(tmp_path, keras):
    model = keras_cnn(keras)
    model.save(tmp_path / "model.keras")
    model.save(tmp_path / "model.h5")
    model.export(tmp_path / "saved", format="tf_saved_model", verbose=False)
    for source, kind in [
        ("model.keras", ModelKind.KERAS),
        ("model.h5", ModelKind.KERAS_H5),
        ("saved", ModelKind.TF_SAVED_MODEL),
    ]:
        record = convert_to_onnx(tmp_path / source, tmp_path / f"{source}.onnx")
        assert record.source_format == kind.value and record.converter.startswith("tf2onnx")
        assert record.sample_shape == [2, 8, 8, 1] and record.max_abs_diff_vs_source < 1e-5


@pytest.mark.slow
def test_saved_model_that_writes_files_is_refused_before_it_runs(tmp_path, keras):
    import tensorflow as tf

    marker = tmp_path / "written"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(marker), "ran")
            return tf.reshape(images, (-1, 64))[:, :10]

    module = Writer()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    assert not marker.exists()  # saving traced the function without running it
    with pytest.raises(ModelError, match="WriteFile"):
        convert_to_onnx(tmp_path / "saved", tmp_path / "out.onnx")
    assert not marker.exists()


# ---------------------------------------------------------------- end to end: backdoored models from their own files


@pytest.mark.slow
def test_infected_keras_model_is_flagged_from_its_keras_file(tmp_path_factory, keras):
    from fixtures.keras_digits import build_keras_digits

    files = build_keras_digits(tmp_path_factory.mktemp("keras_digits"))
    report = scan(files["keras_digits_infected.keras"], files["keras_digits_test.npz"], make_config(E2E_CONFIG))
    assert_flags_the_keras_target(report)
    intake = report.conversion["intake"]
    assert intake["source_format"] == ModelKind.KERAS.value and intake["converter"].startswith("tf2onnx")
    assert (report.contract.layout, report.contract.output_kind) == ("NHWC", "probabilities")


@pytest.mark.slow
def test_infected_torch_export_model_is_flagged_from_its_pt2_file(tmp_path_factory):
    from fixtures.pt2_digits import build_pt2_digits

    files = build_pt2_digits(tmp_path_factory.mktemp("pt2_digits"))
    report = scan(files["pt2_digits_infected.pt2"], files["pt2_digits_test.npz"], make_config(E2E_CONFIG))
    assert report.flagged == [TARGET], report.to_json_dict()["labels"]
    assert report.conversion["intake"]["source_format"] == ModelKind.TORCH_EXPORT.value
    assert np.isfinite(report.conversion["intake"]["max_abs_diff_vs_source"])
