"""report.json against its JSON Schema (scanner/report.schema.json): the schema is valid, names the version the
scanner writes, and every report a scan writes validates (the evidence rule with stopped labels, pairs, the additive
look and the retry; the paper rule), while a report that drifts from it does not."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from scanner import make_config, scan, write_report
from scanner.report import REPORT_SCHEMA_FILE, SCHEMA_VERSION

# a small budget: the report's layout does not depend on how far labels run
SMALL = {"max_images": 300, "seed": 0, "threads": 1, "reverse": {"max_steps": 30}, "additive": {"steps": 6}}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(REPORT_SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def written(report, folder: Path) -> dict:
    return json.loads(write_report(report, folder).read_text())


def problems(validator: jsonschema.Draft202012Validator, document: dict) -> list[str]:
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)]


def test_the_schema_is_valid_and_names_the_version_scans_write(validator):
    described = validator.schema["properties"]["schema_version"]["const"]
    assert described == SCHEMA_VERSION, "SCHEMA_VERSION moved: describe the new layout in scanner/report.schema.json"


@pytest.fixture(scope="module")
def evidence_report(digits, tmp_path_factory) -> dict:
    """The evidence rule's whole pipeline on the infected digits model, screened so that some labels stop early."""
    settings = {**SMALL, "schedule": {"mode": "screened"}}
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config(settings))
    assert any(not label.final for label in report.labels) and report.pair_stage.pairs > 0
    return written(report, tmp_path_factory.mktemp("evidence"))


@pytest.mark.slow
def test_an_evidence_scan_report_validates(validator, evidence_report):
    assert problems(validator, evidence_report) == []
    assert evidence_report["decision"]["pairs"] and evidence_report["decision"]["additive"]
    assert evidence_report["retry_stage"]["rounds"] > 0


@pytest.mark.slow
def test_a_paper_rule_report_validates(validator, digits, tmp_path):
    settings = {**SMALL, "preset": "paper", "labels": [0, 7, 9]}
    report = written(scan(digits["digits_clean.onnx"], digits["digits_test.npz"], make_config(settings)), tmp_path)
    assert report["decision"]["rule"] == "paper"
    assert problems(validator, report) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r.update(surprise=1), "Additional properties are not allowed ('surprise' was unexpected)"),
        (lambda r: r["labels"][0].pop("final"), "'final' is a required property"),
        (lambda r: r.update(verdict="probably fine"), "'probably fine' is not one of"),
        (lambda r: r["decision"]["pairs"][0].update(p_value=1.5), "1.5 is greater than the maximum of 1"),
        (lambda r: r["model"].update(sha256="abc"), "'abc' does not match"),
        (lambda r: r["config"]["reverse"].update(mini_batch="16"), "'16' is not of type 'integer'"),
    ],
)
def test_a_report_that_drifts_from_the_schema_does_not_validate(validator, evidence_report, change, expected):
    drifted = copy.deepcopy(evidence_report)
    change(drifted)
    found = problems(validator, drifted)
    assert len(found) == 1 and expected in found[0], found
