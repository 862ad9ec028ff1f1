"""`cleanse mitigate` flags to a MitigationConfig, and the run the command does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError
from scanner.mitigate.config import MitigationConfig
from scanner.mitigate.result import RESULT_FILE, MitigationResult, write_result
from scanner.mitigate.run_mitigation import mitigate

# CLI flag (click's parameter name) -> MitigationConfig field
FLAG_FIELDS = {
    "method": "method",
    "holdout": "holdout_fraction",
    "fraction": "unlearn_fraction",
    "epochs": "epochs",
    "lr": "learning_rate",
    "layer": "layer",
    "prune_target": "prune_target",
    "max_accuracy_drop": "prune_max_accuracy_drop",
    "reattack_norm": "prune_reattack_norm",
    "fpr": "filter_fpr",
    "top_neurons": "filter_top_fraction",
    "max_images": "max_images",
    "device": "device",
    "threads": "threads",
    "seed": "seed",
}


def parse_labels(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"--labels expects comma-separated integers, not {text!r}") from None


def config_from_options(options: dict[str, Any]) -> MitigationConfig:
    given = {field: options[flag] for flag, field in FLAG_FIELDS.items() if options.get(flag) is not None}
    return dataclasses.replace(MitigationConfig(labels=parse_labels(options.get("labels"))), **given).validate()


def run_from_options(
    model: Path,
    report_folder: Path,
    data: Path,
    out: Path,
    trigger: tuple[Path, Path] | None,
    trigger_target: int | None,
    json_out: Path | None,
    options: dict[str, Any],
) -> tuple[MitigationResult, Path]:
    """Mitigate as the flags say; writes the patched model and mitigation.json (returned with the result)."""
    config = config_from_options(options)
    json_path = json_out or out.parent / RESULT_FILE
    if not json_path.parent.is_dir():
        raise ConfigError(f"--json-out {json_path}: folder {json_path.parent} does not exist")
    result = mitigate(model, report_folder, data, config, out, trigger or None, trigger_target)
    return result, write_result(result, json_path)
