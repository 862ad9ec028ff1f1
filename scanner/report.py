"""The scan report: one dataclass, written as report.json plus trigger images a person can look at."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cleanse_base.errors import InputError
from cleanse_base.files import write_json_atomic
from converters.contract import ModelContract
from scanner.config import ScanConfig
from scanner.mad import MadResult
from scanner.reverse import LabelTrigger

SCHEMA_VERSION = "1.1"  # 1.1: top-level "precision"
TRIGGER_FOLDER = "triggers"


@dataclass
class LabelResult:
    label: int
    l1_norm: float
    attack_success: float
    found: bool  # a mask reached the attack success threshold
    steps: int
    seconds: float
    anomaly_index: float
    flagged: bool


@dataclass
class ScalingChoice:
    name: str  # as Scaling.describe()
    chosen_by: str  # "user", "accuracy" or "default"
    accuracy: float | None  # clean accuracy under this scaling (labelled data only)
    trials: dict[str, float] = field(default_factory=dict)  # accuracy of each candidate tried


@dataclass
class ScanReport:
    tool_version: str
    model_path: str
    model_sha256: str
    contract: ModelContract
    conversion: dict[str, Any]
    data: dict[str, Any]
    scaling: ScalingChoice
    config: ScanConfig
    labels: list[LabelResult]
    mad: MadResult
    device: str
    threads: int
    precision: str  # what the model ran in while reversing: float32 or bfloat16
    seconds_total: float
    started_at: str
    triggers: list[LabelTrigger] = field(default_factory=list, repr=False)  # not in the JSON

    @property
    def verdict(self) -> str:
        return "infected" if self.mad.infected else "clean"

    @property
    def flagged(self) -> list[int]:
        return list(self.mad.flagged)

    def to_json_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                "tool": {"name": "cleanse", "version": self.tool_version},
                "model": {"path": self.model_path, "sha256": self.model_sha256},
                "contract": dataclasses.asdict(self.contract),
                "conversion": self.conversion,
                "data": self.data,
                "scaling": dataclasses.asdict(self.scaling),
                "config": self.config.to_dict(),
                "labels": [dataclasses.asdict(label) for label in self.labels],
                "median": self.mad.median,
                "mad": self.mad.mad,
                "anomaly_index": self.mad.anomaly_index,
                "mad_threshold": self.mad.threshold,
                "flagged_labels": self.flagged,
                "verdict": self.verdict,
                "device": self.device,
                "threads": self.threads,
                "precision": self.precision,
                "seconds_total": self.seconds_total,
                "started_at": self.started_at,
            }
        )


def _finite(value: Any) -> Any:
    """JSON has no infinity: an infinite anomaly index (MAD of 0) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value




# ---------------------------------------------------------------- trigger images and arrays


def trigger_paths(folder: Path, label: int) -> dict[str, Path]:
    stem = folder / TRIGGER_FOLDER / f"label_{label:03d}"
    return {kind: Path(f"{stem}_{kind}") for kind in ("mask", "pattern", "fusion")}


def _to_image(array_hwc: np.ndarray):
    from PIL import Image

    pixels = np.clip(np.rint(array_hwc), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def write_trigger(folder: Path, trigger: LabelTrigger) -> None:
    """Mask, pattern and fusion (mask * pattern) PNGs as the reference wrote them, and .npy arrays:
    mask (H, W) in [0, 1] and pattern (H, W, C) in raw pixels, the format `--trigger` reads."""
    paths = trigger_paths(folder, trigger.label)
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)
    pattern_hwc = trigger.pattern.transpose(1, 2, 0)
    mask_hw1 = trigger.mask[..., None]
    _to_image(mask_hw1 * 255).save(f"{paths['mask']}.png")
    _to_image(pattern_hwc).save(f"{paths['pattern']}.png")
    _to_image(mask_hw1 * pattern_hwc).save(f"{paths['fusion']}.png")
    np.save(f"{paths['mask']}.npy", trigger.mask.astype(np.float32))
    np.save(f"{paths['pattern']}.npy", pattern_hwc.astype(np.float32))


def read_trigger(folder: str | Path, label: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W), pattern (H, W, C)) of a label from a report folder."""
    paths = trigger_paths(Path(folder), label)
    try:
        return np.load(f"{paths['mask']}.npy"), np.load(f"{paths['pattern']}.npy")
    except FileNotFoundError:
        raise InputError(f"{folder}: no reversed trigger for label {label}") from None


def write_report(report: ScanReport, folder: str | Path) -> Path:
    """report.json and the trigger files into `folder`; returns the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for trigger in report.triggers:
        write_trigger(folder, trigger)
    path = folder / "report.json"
    write_json_atomic(path, report.to_json_dict())
    return path


# ---------------------------------------------------------------- text for people


def format_label_table(report: ScanReport) -> str:
    rows = [f"{'label':>5}  {'L1 norm':>9}  {'success':>7}  {'anomaly':>7}  {'steps':>5}  {'seconds':>7}"]
    for result in sorted(report.labels, key=lambda r: r.l1_norm):
        index = "inf" if math.isinf(result.anomaly_index) else f"{result.anomaly_index:.2f}"
        mark = "  <- flagged" if result.flagged else ""
        if not result.found:
            mark += "  (no trigger reached the success threshold)"
        rows.append(
            f"{result.label:>5}  {result.l1_norm:>9.2f}  {result.attack_success:>7.3f}  {index:>7}  "
            f"{result.steps:>5}  {result.seconds:>7.1f}{mark}"
        )
    return "\n".join(rows)


def format_summary(report: ScanReport) -> str:
    scaling = report.scaling
    accuracy = f", clean accuracy {scaling.accuracy:.3f}" if scaling.accuracy is not None else ""
    lines = [
        f"model      {report.model_path}",
        f"contract   {report.contract.layout} {report.contract.channels}x{report.contract.height}x"
        f"{report.contract.width}, {report.contract.num_classes} classes, {report.contract.output_kind}"
        + (f", fixed batch {report.contract.batch_size}" if report.contract.batch_size else ""),
        f"scaling    {scaling.name} ({scaling.chosen_by}{accuracy})",
        f"data       {report.data['images']} images from {report.data['source']}",
        "",
        format_label_table(report),
        "",
        f"median L1 {report.mad.median:.2f}, MAD {report.mad.mad:.2f}, anomaly index {report.mad.anomaly_index:.2f} "
        f"(threshold {report.mad.threshold:g})",
        f"verdict    {report.verdict.upper()}"
        + (f": flagged label(s) {', '.join(map(str, report.flagged))}" if report.flagged else ""),
        f"time       {report.seconds_total:.1f} s on {report.device} ({report.precision})",
    ]
    return "\n".join(lines)
