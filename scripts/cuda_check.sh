#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (CI has none): the CUDA tests, a CLI scan of the digits fixture, a
# profile of the GTSRB replica's full CLI scan, and both schedules timed at the automatic width on the GTSRB
# replica and the two Tiny-ImageNet models (benchmarks.schedule_bench timed). Each stage has its own time limit;
# name stages to run only those. The models are built first where the shared data is (python -m fixtures.build
# gtsrb; python -m fixtures.build zoo --only tiny-badnets-8px-random-br-resnet,tiny-clean-resnet-s0).
#   PYTHON=python3 OUT=folder bash scripts/cuda_check.sh [tests] [digits] [profile] [gtsrb] [tiny]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-.cache/cuda-check}
THREADS=${THREADS:-8}
STAGES=${*:-tests digits profile gtsrb tiny}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
GTSRB=.cache/fixtures/gtsrb_infected.onnx
GTSRB_DATA=${CLEANSE_DATA_DIR:-../shared/data}/gtsrb_test.npz

stage() {  # stage NAME SECONDS COMMAND...: run it if named, with a time limit; say how long it took and how it ended
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s"
}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "torch sees no CUDA device here: nothing to check" >&2
    exit 2
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
stage tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
stage digits 60 "$PYTHON" -m scanner.cli scan .cache/fixtures/digits_infected.onnx \
    --data .cache/fixtures/digits_test.npz --device cuda --threads "$THREADS" --out "$OUT/digits-scan" --quiet
stage profile 90 "$PYTHON" - scan "$GTSRB" --data "$GTSRB_DATA" --max-images 1000 --seed 0 --device cuda \
    --threads "$THREADS" --schedule full --out "$OUT/gtsrb-scan" --quiet <<'PY'
import cProfile, pstats, sys
from scanner.cli import main
profile = cProfile.Profile()
profile.enable()
try:
    main(sys.argv[1:])
except SystemExit:
    pass
profile.disable()
pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
pstats.Stats(profile).sort_stats("tottime").print_stats(20)
PY
stage gtsrb 120 "$PYTHON" -m benchmarks.schedule_bench timed --device cuda --threads "$THREADS" --models gtsrb
stage tiny 200 "$PYTHON" -m benchmarks.schedule_bench timed --device cuda --threads "$THREADS" \
    --models tiny-badnets-8px-random-br-resnet,tiny-clean-resnet-s0
