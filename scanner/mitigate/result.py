"""The outcome of a mitigation: the before/after table and what the method did, for people and as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.files import write_json_atomic
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.measure import Measurement, format_table

RESULT_FILE = "mitigation.json"
# mitigation.json's layout version (1.0: the first layout to state one; 1.1: config "pair_triggers";
# scanner/schemas/mitigation.schema.json)
SCHEMA_VERSION = "1.1"


@dataclass
class MitigationResult:
    method: str
    model_path: str
    model_sha256: str
    output_path: str | None
    output_sha256: str | None
    labels: list[int]  # whose reversed triggers were removed
    real_trigger_target: int | None
    scaling: str
    repair_images: int
    holdout_images: int
    before: Measurement  # on the held-out images
    after: Measurement
    details: dict[str, Any]  # what the method did
    max_abs_diff: float | None  # onnxruntime on the written file vs the patched module
    seconds_method: float
    seconds_total: float
    config: MitigationConfig

    def to_json_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def format(self) -> str:
        lines = [
            f"method     {self.method} on label(s) {', '.join(map(str, self.labels))}, "
            f"{self.repair_images} repair / {self.holdout_images} held-out images",
            "",
            format_table(self.before, self.after),
            "",
            f"details    {format_details(self.details)}",
            f"time       {self.seconds_method:.1f} s for the method, {self.seconds_total:.1f} s in all",
        ]
        if self.output_path:
            lines.append(f"written    {self.output_path} (onnxruntime vs torch max difference {self.max_abs_diff:.2g})")
        return "\n".join(lines)


def format_details(details: dict[str, Any]) -> str:
    """The scalar details on one line (neuron lists and per-trigger figures stay in the JSON)."""
    shown = {key: value for key, value in details.items() if not isinstance(value, (list, dict))}
    return ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in shown.items()
    )


def write_result(result: MitigationResult, path: Path) -> Path:
    write_json_atomic(path, result.to_json_dict())
    return path
