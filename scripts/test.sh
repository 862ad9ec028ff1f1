#!/usr/bin/env bash
# Install everything the tests need (the keras and ray extras, and Chromium for the browser test where this
# machine can install Debian packages), then run ruff and the whole suite. Tests whose tools are missing skip
# with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "could not install chromium: the browser test will skip" >&2
fi
CLEANSE_EXTRAS=${CLEANSE_EXTRAS-keras,ray} bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
