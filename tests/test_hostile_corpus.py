"""Every hostile input of fixtures.hostile, run as a real `cleanse` process: no marker file, no secret in any
output, no traceback, exit 2 with one line on stderr (or the case's own expected exit), within its time."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.hostile import load_all_cases, make_corpus, run_case, snapshot, violations
from fixtures.paths import REPO_ROOT

CASE_NAMES = sorted(load_all_cases())


@pytest.fixture(scope="module")
def corpus(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return make_corpus(root, digits["digits_infected.onnx"], digits["digits_clean.onnx"], digits["digits_test.npz"])


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_input_is_refused_cleanly(corpus, name):
    case = load_all_cases()[name](corpus)
    kept = snapshot(case.keep)
    run = run_case(case, Path(REPO_ROOT))
    assert violations(case, run, corpus, kept) == [], (run.stderr[-2000:], run.stdout[-500:])
