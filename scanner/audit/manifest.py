"""What an audit scans: models from the command line or a TOML manifest, each with its data and settings.

A manifest names the data and settings shared by every model, and lets each model override them:

    data = "clean.npz"                 # default clean data for every model
    [settings]                         # the keys of a `cleanse scan --config` file
    preset = "default"
    [settings.reverse]
    max_steps = 300

    [[models]]
    path = "models/"                   # a file, or a folder searched for *.onnx
    [[models]]
    path = "vendor/nhwc_model.onnx"
    data = "vendor/clean_rgb.npz"      # this model's own data
    scale = "inception"                # any scan setting
    [models.contract]
    layout = "NHWC"

Relative paths are taken from the manifest's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError
from cleanse_base.files import read_toml
from scanner.config import merge_settings

MODEL_SUFFIX = ".onnx"
ENTRY_KEYS = ("path", "data")  # the rest of a [[models]] entry is scan settings


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    data: Path | None  # None: the audit's default data
    settings: dict[str, Any] = field(default_factory=dict)  # make_config's nested form


@dataclass(frozen=True)
class Manifest:
    data: Path | None
    settings: dict[str, Any]
    models: list[ModelEntry]


def expand_models(path: Path) -> list[Path]:
    """A folder becomes the ONNX files under it, sorted; anything else stays as given (a missing or
    unreadable file becomes an error row, not a failed audit)."""
    if path.is_dir():
        return sorted(found for found in path.rglob(f"*{MODEL_SUFFIX}") if found.is_file())
    return [path]


def entries_from_paths(paths: list[Path]) -> list[ModelEntry]:
    return [ModelEntry(model, None) for path in paths for model in expand_models(path)]


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    return parse_manifest(read_toml(path, "manifest"), path.parent)


def parse_manifest(table: dict[str, Any], base: Path) -> Manifest:
    unknown = sorted(set(table) - {"data", "settings", "models"})
    if unknown:
        raise ConfigError(f"manifest: unknown key(s) {', '.join(unknown)} (expected data, [settings], [[models]])")
    models = table.get("models", [])
    if not isinstance(models, list) or not models:
        raise ConfigError("manifest: no [[models]] entries")
    entries = []
    for number, entry in enumerate(models, start=1):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"manifest: [[models]] entry {number} has no path")
        settings = {key: value for key, value in entry.items() if key not in ENTRY_KEYS}
        data = base / entry["data"] if "data" in entry else None
        entries += [ModelEntry(model, data, settings) for model in expand_models(base / entry["path"])]
    data = base / table["data"] if "data" in table else None
    return Manifest(data, table.get("settings", {}), entries)


def entry_settings(entry: ModelEntry, shared: dict[str, Any], command_line: dict[str, Any]) -> dict[str, Any]:
    """A model's settings: the shared ones, then its own, then the command line's flags."""
    return merge_settings(merge_settings(shared, entry.settings), command_line)
