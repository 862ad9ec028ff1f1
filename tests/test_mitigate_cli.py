"""`cleanse mitigate`: writes the patched model and mitigation.json; bad arguments exit 2 with one line, and no
output ever replaces an input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cleanse_base.files import file_sha256
from scanner import make_config, scan, write_report
from scanner.cli import EXIT_ERROR, main
from scanner.mitigate.result import SCHEMA_VERSION as MITIGATION_SCHEMA

TARGET = 7


@pytest.fixture(scope="module")
def report(digits, tmp_path_factory) -> Path:
    """A scan of label 7 alone: it flags nothing, so runs must name the label."""
    folder = tmp_path_factory.mktemp("report")
    write_report(scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config({"labels": [7]})), folder)
    return folder


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["mitigate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_writes_the_patched_model_and_the_table(digits, report, tmp_path):
    out = tmp_path / "patched.onnx"
    trigger = (digits["digits_trigger_mask.npy"], digits["digits_trigger_pattern.npy"])
    code, stdout, stderr = run(
        digits["digits_infected.onnx"], "--report", report, "--data", digits["digits_test.npz"], "--out", out,
        "--labels", TARGET, "--trigger", *trigger, "--threads", 1,
    )  # fmt: skip
    assert code == 0, stdout
    epochs = json.loads((tmp_path / "mitigation.json").read_text())["details"]["epochs"]
    progress = [line for line in stderr.splitlines() if " epochs | repair images: attack success " in line]
    assert len(progress) == epochs and progress[-1].startswith(f"[{'#' * 30}] {epochs}/{epochs} epochs"), stderr
    assert "attack success, real" in stdout and "clean accuracy" in stdout
    table = json.loads((tmp_path / "mitigation.json").read_text())
    assert table["schema_version"] == MITIGATION_SCHEMA and table["method"] == "unlearn" and table["labels"] == [TARGET]
    assert table["after"]["attack_success"]["real"] < table["before"]["attack_success"]["real"]
    assert table["output_sha256"] == file_sha256(out)
    assert f"table      {tmp_path / 'mitigation.json'}" in stdout


@pytest.mark.slow
def test_quiet_shows_no_progress(digits, report, tmp_path):
    code, _, stderr = run(
        digits["digits_infected.onnx"], "--report", report, "--data", digits["digits_test.npz"],
        "--out", tmp_path / "patched.onnx", "--labels", TARGET, "--threads", 1, "--quiet",
    )  # fmt: skip
    assert code == 0 and stderr == ""


@pytest.fixture
def model_args(digits, report, tmp_path) -> dict[str, list]:
    return {
        "model": [digits["digits_infected.onnx"]],
        "report": ["--report", report],
        "data": ["--data", digits["digits_test.npz"]],
        "out": ["--out", tmp_path / "patched.onnx"],
        "labels": ["--labels", TARGET],
    }


def bad_trigger(tmp_path: Path) -> list:
    np.save(tmp_path / "mask.npy", np.ones((4, 4), np.float32))
    np.save(tmp_path / "pattern.npy", np.ones((8, 8, 1), np.float32))
    return ["--trigger", tmp_path / "mask.npy", tmp_path / "pattern.npy"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": []}, "flags no label: nothing to mitigate"),
        ({"labels": ["--labels", 12]}, "out of range"),
        ({"labels": ["--labels", "seven"]}, "labels"),
        ({"report": ["--report", "/nonexistent"]}, "no such scan report"),
        ({"model": ["digits_clean.onnx"]}, "scan report of another model"),
        ({"out": ["--out", "MODEL"]}, "would overwrite or write into the input"),
        ({"extra": ["--json-out", "MODEL"]}, "would overwrite or write into the input"),
        ({"extra": ["--json-out", "REPORT_JSON"]}, "would overwrite or write into the input"),
        ({"extra": ["--json-out", "OUT"]}, "are the same file"),
        ({"out": ["--out", "UNDER_MODEL"]}, "cannot write there"),
        ({"data": ["--data", "/nonexistent.npz"]}, "no such file"),
        ({"extra": ["--fpr", 2]}, "filter_fpr must be in (0, 1)"),
        ({"extra": ["--method", "filter", "--layer", "nope"]}, "no prunable layer named 'nope'"),
        ({"extra": "BAD_TRIGGER"}, "trigger mask has shape [4, 4]"),
        ({"extra": ["--method", "retrain"]}, "Invalid value for '--method'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(digits, report, model_args, tmp_path, change, message):
    model = digits["digits_infected.onnx"]
    paths = {
        "MODEL": model,
        "REPORT_JSON": report / "report.json",
        "OUT": tmp_path / "patched.onnx",
        "UNDER_MODEL": model / "patched.onnx",
    }
    args = dict(model_args)
    for key, value in change.items():
        if value == "BAD_TRIGGER":
            value = bad_trigger(tmp_path)
        elif key == "model":
            value = [digits[value[0]]]
        elif isinstance(value, list):
            value = [paths.get(item, item) if isinstance(item, str) else item for item in value]
        args[key] = value
    kept = {path: file_sha256(path) for path in (model, report / "report.json")}
    code, stdout, stderr = run(*[item for values in args.values() for item in values])
    assert code == EXIT_ERROR
    assert message in stderr
    if "Invalid value" not in message:  # click's own usage errors print usage lines too
        assert stderr.count("\n") == 1 and stderr.startswith("cleanse: error: ")
    assert {path: file_sha256(path) for path in kept} == kept
    assert not (tmp_path / "patched.onnx").exists()
    assert not (tmp_path / "mitigation.json").exists()
