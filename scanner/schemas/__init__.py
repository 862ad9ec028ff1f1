"""The JSON Schemas (draft 2020-12) of the JSON files Cleanse writes, shipped with the package for programs that read
them: `report.json` (a scan), `mitigation.json` (a mitigation) and `audit.json` (a batch audit). Each pins its file's
`schema_version`; tests/test_schemas.py keeps each in step with the version its writer declares and with what it
writes."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
REPORT = FOLDER / "report.schema.json"
MITIGATION = FOLDER / "mitigation.schema.json"
AUDIT = FOLDER / "audit.schema.json"
