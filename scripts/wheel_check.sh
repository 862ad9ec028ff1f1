#!/usr/bin/env bash
# What a user gets from `pip install`: builds the wheel from the tracked (and new, unignored) files, installs it
# with plain pip into a fresh venv that has the CPU torch first (as the README says), and scans the infected
# digits model from a folder outside the source tree, so that neither `fixtures` nor the source is importable.
# The scan must flag label 7 and exit 1. Needs the dev venv (.venv, from scripts/install.sh) to build the model.
# pip's cache and the machine's local wheels make a rerun quick.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

.venv/bin/python -m fixtures.build digits >/dev/null # .cache/fixtures/digits_infected.onnx and digits_test.npz
MODEL=$ROOT/.cache/fixtures/digits_infected.onnx
DATA=$ROOT/.cache/fixtures/digits_test.npz

# A copy of the source without build/ or *.egg-info left over from an earlier build: setuptools would pack them.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"
.venv/bin/pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/cleanse-*.whl)
packed=$("$PYTHON" -c 'import sys, zipfile; print(*sorted({n.split("/")[0] for n in zipfile.ZipFile(sys.argv[1]).namelist()}))' "$WHEEL")
case "$packed" in
"cleanse-"*".dist-info cleanse_base converters scanner") ;;
*) echo "wheel_check: the wheel holds $packed, not just cleanse_base converters scanner" >&2 && exit 1 ;;
esac

"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==$TORCH_VERSION"
# torch named again so that pip keeps the installed build rather than swapping in a newer one for torchvision
"$WORK/venv/bin/pip" install -q "$WHEEL" "torch==$TORCH_VERSION"

mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"
if "$WORK/venv/bin/python" -c "import fixtures" 2>/dev/null; then
    echo "wheel_check: fixtures is importable from the installed venv: the check would not be from outside" >&2
    exit 1
fi
status=0
"$WORK/venv/bin/cleanse" scan "$MODEL" --data "$DATA" --out report --max-steps 200 --seed 1 --quiet >/dev/null || status=$?
flagged=$("$WORK/venv/bin/python" -c 'import json; print(json.load(open("report/report.json"))["flagged_labels"])')
if [ "$status" -ne 1 ] || [ "$flagged" != "[7]" ]; then
    echo "wheel_check: installed wheel: exit $status, flagged $flagged; expected exit 1, flagged [7]" >&2
    exit 1
fi
schemas=$("$WORK/venv/bin/python" -c 'from scanner import schemas as s; print(all(f.is_file() for f in (s.REPORT, s.MITIGATION, s.AUDIT)))')
if [ "$schemas" != "True" ]; then
    echo "wheel_check: the installed wheel lacks the JSON Schemas in scanner/schemas/" >&2
    exit 1
fi
echo "wheel_check: installed wheel flags label 7, exits 1 and ships the JSON Schemas (torch $TORCH_VERSION, from $PWD)"
