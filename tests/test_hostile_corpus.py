"""Every hostile input of fixtures.hostile, run as a real `cleanse` process: no marker file, no secret in any
output, no traceback, exit 2 with one line on stderr (or the case's own expected exit), within its time.

The selected cases run first, as many at once as there are cores (each in its own folder and process), and each
test then checks its own case's run."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.hostile import load_all_cases, make_corpus, run_case, snapshot, violations
from fixtures.paths import REPO_ROOT

CASE_NAMES = sorted(load_all_cases())


@pytest.fixture(scope="module")
def corpus(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return make_corpus(root, digits["digits_infected.onnx"], digits["digits_clean.onnx"], digits["digits_test.npz"])


@pytest.fixture(scope="module")
def runs(corpus, request):
    """{case name: (case, inputs' bytes before, run)} for the cases this session selected."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    cases = {name: load_all_cases()[name](corpus) for name in selected}
    kept = {name: snapshot(case.keep) for name, case in cases.items()}

    def run(name: str):
        return name, run_case(cases[name], Path(REPO_ROOT))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        finished = dict(pool.map(run, selected))
    return {name: (cases[name], kept[name], finished[name]) for name in selected}


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_input_is_refused_cleanly(corpus, runs, name):
    case, kept, run = runs[name]
    assert violations(case, run, corpus, kept) == [], (run.stderr[-2000:], run.stdout[-500:])
