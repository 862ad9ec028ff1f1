#!/usr/bin/env bash
# Install everything the tests need (the keras and ray extras, and Chromium for the browser test where this
# machine can install Debian packages), then run ruff and the whole suite. Tests whose tools are missing skip
# with the reason. The suite runs one pytest worker per core (pytest-xdist; a test module stays on one worker, so
# that a module's fixtures are built once): most tests scan on one thread (tests/conftest.py), so one process
# leaves the other cores idle (figures: README, "Development").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "could not install chromium: the browser test will skip" >&2
fi
CLEANSE_EXTRAS=${CLEANSE_EXTRAS-keras,ray} bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -n auto --dist loadfile --durations=25 "$@"
