"""What mitigation needs from a scan report folder: flagged labels, scaling and the model's contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cleanse_base.errors import ConfigError
from converters.contract import ContractOverrides
from scanner.preprocess import Scaling, make_scaling


@dataclass(frozen=True)
class ScanFacts:
    flagged: list[int]
    scale: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_name: str
    output_name: str
    overrides: ContractOverrides
    model_sha256: str

    def scaling(self, channels: int) -> Scaling:
        return make_scaling(self.scale, channels, self.mean or None, self.std or None)


def read_scan_facts(folder: Path) -> ScanFacts:
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no report.json (run `cleanse scan MODEL --out {folder}` first)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable scan report ({type(exc).__name__})") from None
    try:
        config, contract = report["config"], report["contract"]
        return ScanFacts(
            flagged=list(report["flagged_labels"]),
            scale=config["scale"] or report["scaling"]["name"],
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            input_name=contract["input_name"],
            output_name=contract["output_name"],
            overrides=ContractOverrides(**config["contract"]),
            model_sha256=report["model"]["sha256"],
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a cleanse scan report ({type(exc).__name__}: {exc})") from None
