"""Audit planning: manifests, folders, per-model settings, and what a model's config hash depends on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cleanse_base.errors import ConfigError
from scanner.audit.jobs import config_hash, data_fingerprint, plan_config, plan_job, run_job
from scanner.audit.manifest import ModelEntry, entries_from_paths, read_manifest
from scanner.audit.store import ERROR

MANIFEST = """
data = "data/clean.npz"
[settings]
seed = 3
[settings.reverse]
max_steps = 50
[settings.pairs]
max_pairs = 0

[[models]]
path = "zoo"

[[models]]
path = "vendor/nhwc.onnx"
data = "data/rgb.npz"
scale = "inception"
[models.contract]
layout = "NHWC"
[models.reverse]
images_per_step = 64
"""


@pytest.fixture()
def audit_dir(tmp_path: Path) -> Path:
    for name in ("zoo/b.onnx", "zoo/a.onnx", "zoo/deeper/c.onnx", "zoo/notes.txt", "vendor/nhwc.onnx"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "clean.npz", x=np.zeros((2, 8, 8, 1), np.uint8))
    (tmp_path / "audit.toml").write_text(MANIFEST)
    return tmp_path


def test_a_manifest_lists_folders_and_models_with_their_own_data_and_settings(audit_dir: Path) -> None:
    manifest = read_manifest(audit_dir / "audit.toml")
    names = [entry.path.relative_to(audit_dir).as_posix() for entry in manifest.models]
    assert names == ["zoo/a.onnx", "zoo/b.onnx", "zoo/deeper/c.onnx", "vendor/nhwc.onnx"]
    assert manifest.data == audit_dir / "data" / "clean.npz"
    vendor = manifest.models[-1]
    assert vendor.data == audit_dir / "data" / "rgb.npz"
    assert vendor.settings == {"scale": "inception", "contract": {"layout": "NHWC"}, "reverse": {"images_per_step": 64}}


def test_model_settings_override_shared_ones_and_flags_override_both(audit_dir: Path) -> None:
    manifest = read_manifest(audit_dir / "audit.toml")
    entry = manifest.models[-1]
    job = plan_job(entry, manifest.data, manifest.settings, {"reverse": {"max_steps": 10}}, audit_dir / "out")
    config = job.config
    assert config is not None and job.settings_error == ""
    assert (config.seed, config.scale, config.contract.layout) == (3, "inception", "NHWC")
    assert (config.reverse.max_steps, config.reverse.images_per_step) == (10, 64)
    assert config.reverse.mini_batch == 16  # the rest of the default preset's numbers stay


@pytest.mark.parametrize(
    ("own", "message"),
    [({"seed": "three"}, "seed"), ({"contract": {"layout": "NWHC"}}, "layout"), ({"preset": "fast"}, "preset")],
)
def test_bad_settings_of_one_model_become_its_error_row_with_a_one_line_reason(
    audit_dir: Path, own: dict, message: str
) -> None:
    entry = ModelEntry(audit_dir / "zoo" / "a.onnx", None, own)
    job = plan_job(entry, audit_dir / "data" / "clean.npz", {"seed": 3}, {}, audit_dir / "out")
    assert job.config is None and message in job.settings_error and "\n" not in job.settings_error
    outcome = run_job(job)
    assert outcome.status == ERROR and message in outcome.error
    other = plan_job(
        ModelEntry(entry.path, None, {"seed": "four"}), audit_dir / "data" / "clean.npz", {}, {}, audit_dir / "out"
    )
    assert other.key.config_hash != job.key.config_hash  # other bad settings: another row


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data = 'x.npz'", "no \\[\\[models\\]\\]"),
        ("[[models]]\ndata = 'x.npz'", "entry 1 has no path"),
        ("models_typo = 1\n[[models]]\npath = 'a.onnx'", "unknown key"),
        ("[[models]\npath = 'a.onnx'", "not valid TOML"),
    ],
)
def test_a_broken_manifest_is_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "audit.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_manifest(tmp_path / "audit.toml")


def test_command_line_paths_expand_folders_and_keep_missing_files(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    entries = entries_from_paths([tmp_path, tmp_path / "gone.onnx"])
    assert [entry.path.name for entry in entries] == ["m.onnx", "gone.onnx"]


def test_the_config_hash_follows_results_not_run_settings(audit_dir: Path) -> None:
    data = str(audit_dir / "data" / "clean.npz")
    base = config_hash(plan_config({"seed": 1}), data)
    assert config_hash(plan_config({"seed": 1}, {}, {"threads": 4, "device": "cpu"}), data) == base
    assert config_hash(plan_config({}, {"seed": 1}), data) == base  # the same settings from another layer
    assert config_hash(plan_config({"seed": 1, "preset": "default"}), data) == base  # the preset's default, named
    assert config_hash(plan_config({"seed": 2}), data) != base
    assert config_hash(plan_config({"seed": 1, "reverse": {"max_steps": 5}}), data) != base
    np.savez(audit_dir / "data" / "other.npz", x=np.ones((2, 8, 8, 1), np.uint8))
    assert config_hash(plan_config({"seed": 1}), str(audit_dir / "data" / "other.npz")) != base


def test_an_image_folder_is_fingerprinted_by_its_pixels_not_its_names_and_sizes(tmp_path: Path) -> None:
    image = tmp_path / "images" / "3" / "a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG pixels: 0000")
    before = data_fingerprint(str(tmp_path / "images"))
    image.write_bytes(b"\x89PNG pixels: 1111")  # same name, same size, other pixels
    after = data_fingerprint(str(tmp_path / "images"))
    assert after != before
    assert config_hash(plan_config({"seed": 1}), str(tmp_path / "images")) != config_hash(
        plan_config({"seed": 1}), str(tmp_path / "images"), lambda path: before
    )


def test_a_planned_job_names_its_file_content_and_report_folder(audit_dir: Path) -> None:
    entry = ModelEntry(audit_dir / "zoo" / "a.onnx", None)
    job = plan_job(entry, audit_dir / "data" / "clean.npz", {}, {}, audit_dir / "out")
    assert job.key.path == str((audit_dir / "zoo" / "a.onnx").resolve())
    assert len(job.key.sha256) == 64 and job.data.endswith("clean.npz")
    assert Path(job.report_dir).parent == (audit_dir / "out" / "reports").resolve()
    missing = plan_job(ModelEntry(audit_dir / "gone.onnx", None), None, {}, {}, audit_dir / "out")
    assert missing.key.sha256 == "unreadable" and missing.data == ""
