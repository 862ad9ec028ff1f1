"""Shared fixtures: the digits models are built once per test session (seconds) into a temporary folder."""

from __future__ import annotations

import os

# One torch thread everywhere, subprocesses included: training and scans then give the same numbers on any
# core count, and parallel audit workers do not oversubscribe a small CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from pathlib import Path

import pytest

from fixtures.paths import shared_data_dir


def fixture_folder(tmp_path_factory, name: str) -> Path:
    """Where a session's built models go: the cache folder CLEANSE_TEST_FIXTURES names (kept between runs; a
    subfolder per pytest-xdist worker, so that two workers never write one file), else a fresh temporary one."""
    cache = os.environ.get("CLEANSE_TEST_FIXTURES")
    if not cache:
        return tmp_path_factory.mktemp(name)
    return Path(cache) / os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def schema_problems():
    """(a JSON Schema file of scanner/schemas, a document) -> the document's violations of it, one line each."""
    import json

    import jsonschema

    def problems(schema_file: Path, document: object) -> list[str]:
        schema = json.loads(schema_file.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        errors = jsonschema.Draft202012Validator(schema).iter_errors(document)
        return [f"{list(error.absolute_path)}: {error.message}" for error in errors]

    return problems


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """{file name: path} of the digits fixtures (infected target 7, clean, variants, test data, trigger)."""
    from fixtures.digits import build_digits

    return build_digits(fixture_folder(tmp_path_factory, "digits"))


@pytest.fixture(scope="session")
def digits_label_specific(tmp_path_factory) -> Path:
    """A digits model with a label-specific backdoor (a white pixel sends class 3, only, to 5)."""
    from fixtures.digits import build_digits_label_specific

    return build_digits_label_specific(fixture_folder(tmp_path_factory, "digits_label_specific"))


@pytest.fixture(scope="session")
def digits_all_to_all(tmp_path_factory) -> Path:
    """A digits model with an all-to-all backdoor (a white 2x2 patch sends digit y to y + 1)."""
    from fixtures.digits import build_digits_all_to_all

    return build_digits_all_to_all(fixture_folder(tmp_path_factory, "digits_all_to_all"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not (folder / "gtsrb_test.npz").exists():
        pytest.skip(f"real datasets not found at {folder} (set CLEANSE_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def digits_blended(tmp_path_factory) -> Path:
    """A digits model with a blended backdoor (a noise image at alpha 0.2 sends any digit to 4)."""
    from fixtures.digits import build_digits_blended

    return build_digits_blended(fixture_folder(tmp_path_factory, "digits_blended"))
