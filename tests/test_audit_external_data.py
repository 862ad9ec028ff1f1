"""An audit scans a private copy of each model: an ONNX model's external data files travel with it, checked as
onnx checks them (relative, no `..`, no links, regular files), and hashed into the recorded sha256."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest

from cleanse_base.files import file_sha256
from scanner.audit.external_data import REFUSED, combined_sha256, external_locations
from scanner.audit.jobs import plan_job, run_job
from scanner.audit.manifest import ModelEntry
from scanner.audit.store import DONE, ERROR

CHEAP = {
    "labels": [0, 1, 2, 7],
    "threads": 1,
    "reverse": {"max_steps": 5, "images_per_step": 16},
    "additive": {"steps": 0},
}
DATA_NAME = "weights.bin"


def save_with_external_data(source: Path, target: Path, location: str = DATA_NAME) -> None:
    """The ONNX model at `source` saved to `target` with every initializer in the file `location` names."""
    model = onnx.load(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(target), save_as_external_data=True, location=location, size_threshold=0)


def point_external_data_at(model_path: Path, location: str) -> None:
    """Rewrite every external data reference of the model file to `location` (what a hostile file holds)."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model_path.write_bytes(model.SerializeToString())


@pytest.mark.slow
def test_a_model_with_external_data_is_scanned_with_its_data_in_the_recorded_hash(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "zoo" / "model.onnx"
    save_with_external_data(digits["digits_infected.onnx"], model)
    assert external_locations(model.read_bytes()) == [DATA_NAME]
    job = plan_job(ModelEntry(model, None), digits["digits_test.npz"], {}, CHEAP, tmp_path / "out")
    expected = combined_sha256(file_sha256(model), {DATA_NAME: file_sha256(model.parent / DATA_NAME)})
    assert job.key.sha256 == expected != file_sha256(model)

    outcome = run_job(job)
    assert outcome.status == DONE, outcome.error
    assert outcome.sha256 == job.key.sha256  # a rerun finds this row and skips the model
    report = json.loads((Path(outcome.report_dir) / "report.json").read_text())
    assert report["model"] == {"path": job.model, "sha256": file_sha256(model)}
    assert not list((tmp_path / "out" / "work").iterdir())  # the private copies are gone

    (model.parent / DATA_NAME).write_bytes((model.parent / DATA_NAME).read_bytes()[:-4] + b"\0\0\0\0")
    changed = plan_job(ModelEntry(model, None), digits["digits_test.npz"], {}, CHEAP, tmp_path / "out")
    assert changed.key.sha256 != job.key.sha256  # other weights: another model


@pytest.mark.parametrize("hostile", ["parent", "absolute", "symlink", "fifo"])
def test_an_external_data_location_outside_the_rules_becomes_an_error_row(
    digits: dict[str, Path], tmp_path: Path, hostile: str
) -> None:
    secret = tmp_path / "secret.bin"
    zoo = tmp_path / "zoo"
    save_with_external_data(digits["digits_clean.onnx"], zoo / "model.onnx")
    shutil.copyfile(zoo / DATA_NAME, secret)  # the secret holds weights that would load: only the rules refuse it
    if hostile == "parent":
        location = "../secret.bin"
    elif hostile == "absolute":
        location = str(secret)
    elif hostile == "symlink":
        location = "link.bin"
        (zoo / location).symlink_to(secret)
    else:
        location = "pipe.bin"
        os.mkfifo(zoo / location)  # reading it would block the audit
    point_external_data_at(zoo / "model.onnx", location)

    job = plan_job(ModelEntry(zoo / "model.onnx", None), digits["digits_test.npz"], {}, CHEAP, tmp_path / "out")
    assert job.key.sha256 == combined_sha256(file_sha256(zoo / "model.onnx"), {location: REFUSED})
    outcome = run_job(job)
    assert outcome.status == ERROR and "external data" in outcome.error and "\n" not in outcome.error
    assert job.model in outcome.error and "scan-" not in outcome.error  # names the model, not its private copy
    assert outcome.sha256 == job.key.sha256
    assert not list((tmp_path / "out" / "work").iterdir())
