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

Relative paths are taken from the manifest's folder. A folder's symlinks are never followed: a link named
`*.onnx` inside a listed folder becomes an error row naming the link (a model named directly may be a link).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError
from cleanse_base.files import read_toml
from cleanse_base.plain import type_name

MODEL_SUFFIX = ".onnx"
ENTRY_KEYS = ("path", "data")  # the rest of a [[models]] entry is scan settings


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    data: Path | None  # None: the audit's default data
    settings: dict[str, Any] = field(default_factory=dict)  # this model's own layer of settings_to_config
    from_folder: bool = False  # found by searching a folder: a symlink is refused, not followed


@dataclass(frozen=True)
class Manifest:
    data: Path | None
    settings: dict[str, Any]
    models: list[ModelEntry]


def expand_models(path: Path) -> list[Path]:
    """A folder becomes the ONNX files under it, sorted, symlinks included as they are (never descended into
    or read through: the scan refuses them by name); anything else stays as given (a missing or unreadable file
    becomes an error row, not a failed audit)."""
    if path.is_dir():
        found = path.rglob(f"*{MODEL_SUFFIX}")  # rglob does not descend into symlinked folders
        return sorted(item for item in found if item.is_symlink() or item.is_file())
    return [path]


def entries_for(path: Path, data: Path | None, settings: dict[str, Any]) -> list[ModelEntry]:
    from_folder = path.is_dir()
    return [ModelEntry(model, data, settings, from_folder) for model in expand_models(path)]


def entries_from_paths(paths: list[Path]) -> list[ModelEntry]:
    return [entry for path in paths for entry in entries_for(path, None, {})]


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
        entries += entries_for(base / entry["path"], data, settings)
    settings = table.get("settings", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"manifest: [settings] must be a table, not {type_name(settings)}")
    data = base / table["data"] if "data" in table else None
    return Manifest(data, settings, entries)
