"""The scan and the mitigation on a CUDA device. Skipped where torch sees none (CI has no GPU); the README says
where and how these ran on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner import make_config, scan, write_report
from scanner.mitigate import MitigationConfig, mitigate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]

TARGET = 7
FEATURES_LAYER = "/core/core.6/Gemm"  # the digits net's flattened conv features (tests/test_mitigate.py)


def test_scan_on_cuda_flags_the_target_and_the_clean_model_is_clean(digits):
    infected = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config({"device": "cuda"}))
    clean = scan(digits["digits_clean.onnx"], digits["digits_test.npz"], make_config({"device": "cuda"}))
    assert infected.device.startswith("cuda") and infected.precision == "bfloat16"
    assert infected.flagged == [TARGET]
    assert clean.flagged == []


def test_cuda_reversal_follows_the_cpu_one_in_float32(digits):
    """The same steps on both devices in float32: triggers that differ by round-off only (the reversal
    amplifies round-off, so a few steps, not a whole run)."""
    settings = {
        "labels": [TARGET, 2],
        "seed": 3,
        "reverse": {"precision": "float32", "max_steps": 4, "labels_per_batch": 2, "early_stop": False},
        "pairs": {"max_pairs": 0},
        "additive": {"steps": 0},
    }
    model, data = digits["digits_infected.onnx"], digits["digits_test.npz"]
    reports = {device: scan(model, data, make_config({**settings, "device": device})) for device in ("cpu", "cuda")}
    for on_cpu, on_cuda in zip(reports["cpu"].labels, reports["cuda"].labels, strict=True):
        assert on_cpu.label == on_cuda.label and on_cpu.steps == on_cuda.steps
        assert on_cuda.l1_norm == pytest.approx(on_cpu.l1_norm, rel=0.02)


@pytest.fixture(scope="module")
def cuda_report(digits, tmp_path_factory) -> Path:
    """A CUDA scan of the target alone (the mitigation names its label)."""
    folder = tmp_path_factory.mktemp("report")
    config = make_config({"labels": [TARGET], "device": "cuda", "pairs": {"max_pairs": 0}, "additive": {"steps": 0}})
    write_report(scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config), folder)
    return folder


@pytest.mark.parametrize("method", ["unlearn", "prune", "filter"])
def test_mitigation_on_cuda_writes_a_model_that_resists_the_trigger(digits, cuda_report, tmp_path, method):
    """Each method repairs on the GPU and writes a file that onnxruntime (on the CPU) checks against the module."""
    out = tmp_path / "patched.onnx"
    layer = "" if method == "unlearn" else FEATURES_LAYER
    config = MitigationConfig(method=method, labels=(TARGET,), device="cuda", layer=layer)
    trigger = (digits["digits_trigger_mask.npy"], digits["digits_trigger_pattern.npy"])
    result, _ = mitigate(digits["digits_infected.onnx"], cuda_report, digits["digits_test.npz"], config, out, trigger)
    assert result.before.attack_success["real"] > 0.9
    assert result.after.attack_success["real"] <= 0.15
    assert result.max_abs_diff < 1e-4
    assert out.is_file()
