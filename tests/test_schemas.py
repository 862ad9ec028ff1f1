"""The JSON Schemas of scanner/schemas against what Cleanse writes: each is a valid schema pinning the version its
writer declares; every report a scan writes validates (the evidence rule with stopped labels, pairs, the additive
look and the retry; the paper rule), while a report that drifts from it does not. mitigation.json and audit.json are
validated where their tests write them (tests/test_mitigate.py, tests/test_audit.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from scanner import make_config, scan, schemas, write_report
from scanner.audit.summary import SCHEMA_VERSION as AUDIT_VERSION
from scanner.mitigate.result import SCHEMA_VERSION as MITIGATION_VERSION
from scanner.report import SCHEMA_VERSION as REPORT_VERSION

# a small budget: the report's layout does not depend on how far labels run
SMALL = {"max_images": 300, "seed": 0, "threads": 1, "reverse": {"max_steps": 30}, "additive": {"steps": 6}}


@pytest.mark.parametrize(
    "schema_file, version",
    [(schemas.REPORT, REPORT_VERSION), (schemas.MITIGATION, MITIGATION_VERSION), (schemas.AUDIT, AUDIT_VERSION)],
)
def test_each_schema_is_valid_and_pins_the_version_its_writer_declares(schema_file, version, schema_problems):
    schema = json.loads(schema_file.read_text())
    assert schema_problems(schema_file, {}) != []  # checks the schema itself, and an empty document fails it
    described = schema["properties"]["schema_version"]["const"]
    assert described == version, f"the layout moved to {version}: describe it in {schema_file.name}"
    assert schema["$id"].endswith(f":{version}")


@pytest.fixture(scope="module")
def evidence_report(digits, tmp_path_factory) -> dict:
    """The evidence rule's whole pipeline on the infected digits model, screened so that some labels stop early."""
    settings = {**SMALL, "schedule": {"mode": "screened"}}
    report = scan(digits["digits_infected.onnx"], digits["digits_test.npz"], make_config(settings))
    assert any(not label.final for label in report.labels) and report.pair_stage.pairs > 0
    return json.loads(write_report(report, tmp_path_factory.mktemp("evidence")).read_text())


@pytest.mark.slow
def test_an_evidence_scan_report_validates(evidence_report, schema_problems):
    assert schema_problems(schemas.REPORT, evidence_report) == []
    assert evidence_report["decision"]["pairs"] and evidence_report["decision"]["additive"]
    assert evidence_report["retry_stage"]["rounds"] > 0


@pytest.mark.slow
def test_a_paper_rule_report_validates(digits, tmp_path: Path, schema_problems):
    settings = {**SMALL, "preset": "paper", "labels": [0, 7, 9]}
    report = scan(digits["digits_clean.onnx"], digits["digits_test.npz"], make_config(settings))
    written = json.loads(write_report(report, tmp_path).read_text())
    assert written["decision"]["rule"] == "paper"
    assert schema_problems(schemas.REPORT, written) == []


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
def test_a_report_that_drifts_from_the_schema_does_not_validate(evidence_report, schema_problems, change, expected):
    drifted = copy.deepcopy(evidence_report)
    change(drifted)
    found = schema_problems(schemas.REPORT, drifted)
    assert len(found) == 1 and expected in found[0], found
