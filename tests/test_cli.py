"""The `cleanse scan` command: exit codes a CI gate branches on, the report folder, --json, config files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from scanner.cli import main
from scanner.report import SCHEMA_VERSION

# the source-specific look: tests/test_pairs.py; the additive look: tests/test_additive.py
FAST = ["--max-steps", "200", "--seed", "1", "--pairs", "0", "--additive-steps", "0"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console entry point in a real subprocess, as a CI job would call it."""
    command = [sys.executable, "-c", "from scanner.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_infected_exits_1_and_writes_the_report(digits, tmp_path):
    out = tmp_path / "report"
    result = run_cli(
        "scan", str(digits["digits_infected.onnx"]), "--data", str(digits["digits_test.npz"]), "--out", str(out), *FAST
    )
    assert result.returncode == 1, result.stderr
    assert "INFECTED" in result.stdout and "flagged label(s) 7" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] and report["verdict"] == "infected" and report["flagged_labels"] == [7]
    assert len(report["model"]["sha256"]) == 64
    assert report["contract"]["layout"] == "NCHW" and report["config"]["seed"] == 1
    assert len(report["labels"]) == 10 and report["anomaly_index"] > 2
    for kind in ("mask", "pattern", "fusion"):
        assert (out / "triggers" / f"label_007_{kind}.png").exists()
    mask = np.load(out / "triggers" / "label_007_mask.npy")
    pattern = np.load(out / "triggers" / "label_007_pattern.npy")
    assert mask.shape == (8, 8) and pattern.shape == (8, 8, 1)
    assert abs(float(mask.sum()) - report["labels"][7]["l1_norm"]) < 1e-3


@pytest.mark.slow
def test_clean_exits_0_and_json_goes_to_stdout(digits):
    result = run_cli(
        "scan", str(digits["digits_clean.onnx"]), "--data", str(digits["digits_test.npz"]), "--json", "--quiet", *FAST
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "clean" and report["flagged_labels"] == []
    assert "CLEAN" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_model, message",
    [
        (lambda folder: folder / "missing.onnx", "no such file"),
        (lambda folder: _write(folder / "text.onnx", b"this is not a model"), "not a readable ONNX model"),
    ],
)
def test_bad_model_files_exit_2_with_one_line(digits, tmp_path, make_model, message):
    result = run_cli("scan", str(make_model(tmp_path)), "--data", str(digits["digits_test.npz"]))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.slow
def test_truncated_model_exits_2(digits, tmp_path):
    data = digits["digits_infected.onnx"].read_bytes()
    truncated = _write(tmp_path / "truncated.onnx", data[: len(data) // 2])
    result = run_cli("scan", str(truncated), "--data", str(digits["digits_test.npz"]))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ONNX" in result.stderr


def test_bad_options_exit_2(digits, tmp_path):
    runner = CliRunner()
    model, data = str(digits["digits_infected.onnx"]), str(digits["digits_test.npz"])
    assert runner.invoke(main, ["scan", model, "--data", data, "--scale", "bogus"]).exit_code == 2
    result = runner.invoke(main, ["scan", model, "--data", data, "--labels", "3,4,42"])
    assert result.exit_code == 2 and "out of range" in result.output
    result = runner.invoke(main, ["scan", model, "--data", str(tmp_path / "none.npz")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(main, ["scan", model, "--data", data, "--max-steps", "0"])
    assert result.exit_code == 2 and "--max-steps" in result.output


@pytest.mark.slow
def test_config_file_sets_options_and_flags_override_it(digits, tmp_path):
    config = tmp_path / "scan.toml"
    config.write_text(
        "seed = 4\nlabels = [0, 1, 7]\n"
        "[reverse]\nmax_steps = 2\nimages_per_step = 16\nmini_batch = 16\n"
        "[limits]\nimages = 500\n"
    )
    runner = CliRunner()
    args = [
        "scan",
        str(digits["digits_infected.onnx"]),
        "--data",
        str(digits["digits_test.npz"]),
        "--config",
        str(config),
        "--json",
        "--quiet",
    ]
    result = runner.invoke(main, [*args, "--seed", "9"])
    # two steps reach no attack success: inconclusive, exit 2, the reason the one stderr line, JSON still out
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "cleanse: error: inconclusive verdict: no label's trigger reached the attack success threshold (0.99)"
    ]
    report = json.loads(result.stdout)
    assert report["verdict"] == "inconclusive" and "success threshold" in report["verdict_reason"]
    assert report["config"]["seed"] == 9
    assert report["config"]["labels"] == [0, 1, 7]
    assert report["config"]["reverse"]["max_steps"] == 2 and report["config"]["reverse"]["mini_batch"] == 16
    starts = report["config"]["reverse"]["starts"]  # a label's steps count every start's, and every retry round's
    retries = report["retry_stage"]["retries"]
    retried = {retry["label"] for retry in retries}
    rounds = report["config"]["retry"]["rounds"]
    # the smallest trigger, and the likeliest target where it is another label
    assert sorted(retry["chosen_as"] for retry in retries) in (["smallest"], ["likeliest", "smallest"])
    assert len(retried) == len(retries) and rounds == 2
    assert all(label["steps"] <= 2 * starts * (1 + rounds * (label["label"] in retried)) for label in report["labels"])
    config.write_text("sede = 4\n")
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "unknown field(s) sede" in result.output


@pytest.mark.slow
def test_inconclusive_scan_still_writes_its_report(digits, tmp_path):
    out = tmp_path / "report"
    args = ["--labels", "0,1,2", "--max-steps", "2", "--images-per-step", "16", "--quiet", "--out", str(out)]
    result = run_cli("scan", str(digits["digits_infected.onnx"]), "--data", str(digits["digits_test.npz"]), *args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cleanse: error: inconclusive verdict:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "INCONCLUSIVE" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["schema_version"] == SCHEMA_VERSION
    html = (out / "report.html").read_text()
    assert 'class="verdict inconclusive"' in html and "success threshold" in html


def test_usage_errors_are_one_line_and_exit_2(digits):
    runner = CliRunner()
    model = str(digits["digits_infected.onnx"])
    for args in (["scan", model], ["scan", model, "--data", "x.npz", "--threads", "0"], ["bogus"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("cleanse: error: ")
    assert runner.invoke(main, ["--help"]).exit_code == 0
    assert runner.invoke(main, ["--version"]).exit_code == 0


@pytest.mark.slow
def test_model_with_no_image_input_exits_2(tmp_path, digits):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["tokens"], ["scores"])],
        "text",
        [onnx.helper.make_tensor_value_info("tokens", onnx.TensorProto.FLOAT, ["n", 5, 7, 2, 3])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["n", 5, 7, 2, 3])],
    )
    path = tmp_path / "text.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    result = run_cli("scan", str(path), "--data", str(digits["digits_test.npz"]))
    assert result.returncode == 2 and "no image-like input" in result.stderr


def test_running_out_of_gpu_memory_says_what_to_lower(tmp_path, monkeypatch):
    """A CUDA out-of-memory error anywhere in a scan is one line naming the knobs, not an 'internal error'."""

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("scanner.run_scan.scan", out_of_memory)
    model, data = tmp_path / "model.onnx", tmp_path / "clean.npz"
    model.write_bytes(b"never read")
    data.write_bytes(b"never read")
    result = CliRunner().invoke(main, ["scan", str(model), "--data", str(data)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "out of GPU memory" in line and "--labels-per-batch" in line and "--device cpu" in line
    assert "internal error" not in line


def test_help_and_refused_settings_answer_without_loading_the_model_stack(tmp_path):
    """`cleanse --help` and a refusal of flags or a config file do not wait for torch and onnx to load."""
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[reverse]\nmini_batch = 0\n")
    calls = {
        "help": ["--help"],
        "mitigate help": ["mitigate", "--help"],
        "scan config": ["scan", "m.onnx", "--data", "d.npz", "--config", str(bad_config)],
        "mitigate flags": ["mitigate", "m.onnx", "--report", "r", "--data", "d.npz", "--out", "o.onnx", "--fpr", "2"],
        "audit flags": ["audit", "m.onnx", "--out", str(tmp_path / "audit"), "--steps", "0"],
        "convert limits": ["convert", "m.pt2", "-o", "o.onnx", "--limit", "no_such_limit=1"],
    }
    probe = (
        "import sys, json\n"
        "from scanner.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "heavy = sorted(name for name in ('torch', 'onnx', 'onnxruntime', 'numpy') if name in sys.modules)\n"
        "print(json.dumps([code, heavy]), file=sys.stderr)\n"
    )
    for what, args in calls.items():
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path)
        *lines, last = result.stderr.strip().splitlines()
        code, heavy = json.loads(last)
        assert heavy == [], (what, heavy)
        if what.endswith("help"):
            assert code == 0 and "Usage:" in result.stdout, what
        else:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("cleanse: error: "), (what, lines)
