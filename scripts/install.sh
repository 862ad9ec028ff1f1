#!/usr/bin/env bash
# Installs Cleanse and its test tools into .venv (created if missing). Idempotent.
# torch goes in first as a pinned CPU build; the range in setup.cfg then installs nothing more.
# onnx2torch goes in without dependencies: its torchvision requirement would pull a CUDA wheel that
# fails to import beside the CPU torch, and a classifier never needs it (see converters/onnx2torch_compat.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q --no-deps "onnx2torch==1.5.15"
pip install -q -e ".[test${CLEANSE_EXTRAS:+,$CLEANSE_EXTRAS}]"
