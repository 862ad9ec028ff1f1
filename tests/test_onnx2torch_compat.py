"""onnx2torch loads and converts a classifier whatever state torchvision is in: missing, failing at import after
half its submodules loaded (PyPI's CUDA torchvision beside a CPU torch), failing at attribute access, or working.

Each case runs in a fresh interpreter with a real torchvision package planted first on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.paths import REPO_ROOT

BROKEN = "operator torchvision::nms does not exist"

# {case: {file under the planted folder: text}}; "missing" plants nothing and blocks the import instead
PLANTED = {
    "missing": {},
    "fails-after-half-import": {
        "torchvision/__init__.py": f"from torchvision import extension\nraise RuntimeError({BROKEN!r})\n",
        "torchvision/extension.py": "LOADED = True\n",
    },
    "fails-at-attribute-access": {
        "torchvision/__init__.py": "from torchvision import ops\n",
        "torchvision/ops/__init__.py": f"def __getattr__(name):\n    raise RuntimeError({BROKEN!r})\n",
    },
    "working": {
        "torchvision/__init__.py": "from torchvision import ops\n",
        "torchvision/ops/__init__.py": "def nms(*a):\n    return 'real nms'\n\nbox_convert = roi_align = nms\n",
    },
}

# Converts and runs a Gemm+Relu classifier, then reports what torchvision became and what nms does.
PROBE = """
import json, sys
if sys.argv[1] == "missing":
    sys.modules["torchvision"] = None  # import torchvision now raises ImportError, installed or not
import numpy as np, torch
from onnx import TensorProto, helper, numpy_helper
from converters.onnx2torch_compat import import_onnx2torch

weight = np.array([[1.0, -1.0], [2.0, 0.5], [-3.0, 1.0]], dtype=np.float32)
graph = helper.make_graph(
    [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])],
    "classifier",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    [numpy_helper.from_array(weight, "w")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
module = import_onnx2torch().convert(model)
logits = module(torch.tensor([[1.0, 2.0]])).tolist()
import torchvision.ops
try:
    nms = str(torchvision.ops.nms())
except RuntimeError as exc:
    nms = "raised: " + str(exc)
print(json.dumps({
    "logits": logits,
    "stand_in": getattr(torchvision, "__cleanse_stand_in__", False),
    "nms": nms,
    "left_behind": sorted(m for m in sys.modules if m.startswith("torchvision.") and m != "torchvision.ops"),
}))
"""


def run_probe(case: str, folder: Path) -> dict:
    for name, text in PLANTED[case].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, case], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "case",
    [
        "fails-after-half-import",
        pytest.param("missing", marks=pytest.mark.slow),
        pytest.param("fails-at-attribute-access", marks=pytest.mark.slow),
    ],
)
def test_broken_torchvision_gives_a_stand_in_and_the_classifier_converts(case, tmp_path):
    result = run_probe(case, tmp_path)
    assert result["logits"] == [[0.0, 3.0, 0.0]]  # relu([1-2, 2+1, -3+2])
    assert result["stand_in"] is True
    assert result["left_behind"] == []  # nothing of the half-imported package survives beside the stand-in
    assert result["nms"].startswith("raised: torchvision.ops.nms is needed by this graph")
    assert "install a torchvision build that matches your torch" in result["nms"]


@pytest.mark.slow
def test_working_torchvision_is_left_alone(tmp_path):
    result = run_probe("working", tmp_path)
    assert result["logits"] == [[0.0, 3.0, 0.0]]
    assert result["stand_in"] is False
    assert result["nms"] == "real nms"
