#!/usr/bin/env bash
# Installs Cleanse and its test tools into .venv (created if missing). Idempotent.
# torch goes in first as a pinned CPU build, and is named again beside Cleanse: onnx2torch requires torchvision,
# and pip's newest torchvision requires a newer torch, which pip would otherwise install over the CPU build (a
# CUDA torch with several GB of NVIDIA libraries). Pinned, pip takes the torchvision made for this torch: PyPI's
# is a CUDA build that fails to import beside the CPU torch, which converters/onnx2torch_compat.py makes
# harmless (a classifier never needs its detection ops).
# Optional extras, comma-separated: CLEANSE_EXTRAS=keras bash scripts/install.sh adds TensorFlow, Keras and
# tf2onnx for .keras/.h5/SavedModel intake. They install with their declared dependencies: tf2onnx 1.17.0 pins
# nothing stale (protobuf>=3.20, numpy>=1.23.5, onnx>=1.14), so onnx 1.23 and numpy 2.x stay; tensorflow-cpu
# 2.21.0 moves h5py to 3.14 (its cap, <3.15) and needs protobuf<8.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
TORCH="torch==${TORCH_VERSION:-2.13.0}"
pip install -q "$TORCH"
pip install -q -e ".[test${CLEANSE_EXTRAS:+,$CLEANSE_EXTRAS}]" "$TORCH"
