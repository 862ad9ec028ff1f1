#!/usr/bin/env bash
# Quick start: install, build a real backdoored model from scikit-learn's bundled digits, scan it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m fixtures.build digits
status=0
.venv/bin/cleanse scan .cache/fixtures/digits_infected.onnx --data .cache/fixtures/digits_test.npz \
    --out report/digits_infected || status=$?
echo
if [ "$status" -eq 1 ]; then
    echo "Exit code 1: backdoor found, as expected for this model (target label 7). Report: report/digits_infected/"
    exit 0
fi
echo "Unexpected exit code $status for the infected example" >&2
exit 1
