"""Outputs never replace inputs: overlap refusals through symlinks and hard links, private copies that are the
bytes they hash, atomic conversions that leave nothing behind when refused, report folders with planted links,
and a conversion cache that serves only the bytes it recorded."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from cleanse_base.errors import ConfigError, InputError, ModelError
from cleanse_base.files import (
    file_sha256,
    private_copy,
    real_folder,
    refuse_overlap,
    tree_sha256,
    write_json_atomic,
)
from scanner.report import TRIGGER_FOLDER, check_report_folder, trigger_paths, write_trigger
from scanner.reverse import LabelTrigger


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "inputs" / "model.pt2"
    path.parent.mkdir()
    path.write_bytes(b"model bytes")
    return path


# ---------------------------------------------------------------- JSON outputs


def test_json_outputs_are_strict_json_with_null_where_a_float_is_not_finite(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json_atomic(path, {"index": float("inf"), "nested": [float("nan"), (1.5, -float("inf"))], "n": 3})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"index": None, "nested": [None, [1.5, None]], "n": 3}


# ---------------------------------------------------------------- refuse_overlap


def test_an_output_that_is_the_input_however_spelled_is_refused(source: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.onnx"
    link.symlink_to(source)
    hard = tmp_path / "hard.onnx"
    os.link(source, hard)
    folder_link = tmp_path / "folder_link"
    folder_link.symlink_to(source.parent, target_is_directory=True)
    for output in (source, link, hard, folder_link / "model.pt2", source.parent / ".." / "inputs" / "model.pt2"):
        with pytest.raises(ConfigError, match="input"):
            refuse_overlap([source], [output])
    refuse_overlap([source], [tmp_path / "model.onnx"])  # a different file is fine


def test_outputs_inside_an_input_folder_and_folders_holding_an_input_are_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input"):
        refuse_overlap([source.parent], [source.parent / "sub" / "report.json"])
    with pytest.raises(ConfigError, match="holds the input"):
        refuse_overlap([source], [], [tmp_path])
    refuse_overlap([source], [tmp_path / "report.json"])  # a file beside the input is fine


def test_two_outputs_that_are_one_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(ConfigError, match="same file"):
        refuse_overlap([], [tmp_path / "a.json", tmp_path / "b.json"])


def test_a_symlink_loop_is_no_crash(tmp_path: Path, source: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refuse_overlap([source], [tmp_path / "loop"])


def test_real_folder_refuses_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "triggers").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="symlink"):
        real_folder(tmp_path / "triggers")
    assert real_folder(tmp_path / "new" / "folder").is_dir()


# ---------------------------------------------------------------- private copies


def test_a_private_copy_holds_the_bytes_it_hashes_and_only_its_owner_reads_it(source: Path, tmp_path: Path) -> None:
    (tmp_path / "private").mkdir()
    copy, digest = private_copy(source, tmp_path / "private")
    source.write_bytes(b"swapped afterwards")
    assert copy.read_bytes() == b"model bytes" and digest == file_sha256(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_a_private_copy_refuses_a_link_it_may_not_follow_and_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "x.onnx"
    os.mkfifo(fifo)
    link = tmp_path / "link.onnx"
    link.symlink_to(fifo)
    (tmp_path / "private").mkdir()
    finished = threading.Event()

    def attempt() -> None:
        with pytest.raises(ModelError, match="symlink"):
            private_copy(link, tmp_path / "private", follow_symlinks=False, error=ModelError)
        with pytest.raises(ModelError, match="not a regular file"):
            private_copy(fifo, tmp_path / "private", error=ModelError)
        finished.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert finished.is_set(), "reading a FIFO blocked"


def test_a_private_copy_of_a_folder_skips_links_and_hashes_like_tree_sha256(tmp_path: Path) -> None:
    model = tmp_path / "saved_model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.data").write_bytes(b"weights")
    (tmp_path / "secret").write_bytes(b"secret")
    (model / "variables" / "leak").symlink_to(tmp_path / "secret")
    (tmp_path / "private").mkdir()
    copy, digest = private_copy(model, tmp_path / "private")
    assert digest == tree_sha256(model) == tree_sha256(copy)
    assert not (copy / "variables" / "leak").exists()
    assert (copy / "variables" / "variables.data").read_bytes() == b"weights"


# ---------------------------------------------------------------- report folders


def test_a_report_folder_refuses_links_and_inputs_before_the_scan(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / TRIGGER_FOLDER).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="symlink"):
        check_report_folder(out, [source])
    with pytest.raises(ConfigError, match="input"):
        check_report_folder(source.parent, [source.parent])  # --out is the data folder
    with pytest.raises(ConfigError, match="input"):
        check_report_folder(tmp_path / "models", [tmp_path / "models" / "report.html"])
    given_trigger = tmp_path / "earlier" / TRIGGER_FOLDER / "label_007_mask.npy"  # mitigate --trigger from a report
    given_trigger.parent.mkdir(parents=True)
    given_trigger.write_bytes(b"mask")
    with pytest.raises(ConfigError, match="holds the input"):
        check_report_folder(tmp_path / "earlier", [given_trigger])
    with pytest.raises(ConfigError, match="not a folder"):
        check_report_folder(source, [])
    check_report_folder(tmp_path / "fresh", [source])


def test_trigger_files_replace_planted_links_and_hard_links_without_writing_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious.npy"
    precious.write_bytes(b"the user's file")
    paths = trigger_paths(tmp_path / "report", 3)
    paths["mask"].parent.mkdir(parents=True)
    Path(f"{paths['mask']}.npy").symlink_to(precious)
    os.link(precious, f"{paths['pattern']}.npy")
    trigger = LabelTrigger(3, np.full((4, 4), 0.5), np.zeros((1, 4, 4)), 8.0, 1.0, True, 1, 0.1, 0.0)
    write_trigger(tmp_path / "report", trigger)
    assert precious.read_bytes() == b"the user's file"
    assert np.load(f"{paths['mask']}.npy").shape == (4, 4) and not Path(f"{paths['mask']}.npy").is_symlink()


# ---------------------------------------------------------------- convert and the intake cache


@pytest.fixture(scope="module")
def pt2_model(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(module, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLEANSE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "intake"


def test_convert_refuses_its_own_source_and_a_folder_before_loading_anything(pt2_model: Path, tmp_path: Path) -> None:
    from converters.intake import convert_to_onnx

    before = pt2_model.read_bytes()
    with pytest.raises(ConfigError, match="input"):
        convert_to_onnx(pt2_model, pt2_model)
    with pytest.raises(ConfigError, match="folder"):
        convert_to_onnx(pt2_model, tmp_path)
    assert pt2_model.read_bytes() == before
    record = convert_to_onnx(pt2_model, tmp_path / "out.onnx")
    assert record.source_sha256 == file_sha256(pt2_model) and (tmp_path / "out.onnx").exists()
    assert [item.name for item in tmp_path.iterdir()] == ["out.onnx"]  # no temporary file left


@pytest.mark.slow
def test_a_tampered_or_linked_cache_entry_is_never_served(pt2_model: Path, private_cache: Path, tmp_path: Path) -> None:
    from converters.intake import intake_model

    first = intake_model(pt2_model)
    converted = first.onnx_path.read_bytes()
    record = json.loads(first.onnx_path.with_suffix(".json").read_text())
    assert record["onnx_sha256"] == file_sha256(first.onnx_path)

    first.onnx_path.write_bytes(converted[:-1] + bytes([converted[-1] ^ 1]))  # other bytes, same name
    again = intake_model(pt2_model)
    assert again.onnx_path.read_bytes() == converted

    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model")
    first.onnx_path.unlink()
    first.onnx_path.symlink_to(other)
    third = intake_model(pt2_model)
    assert not third.onnx_path.is_symlink() and third.onnx_path.read_bytes() == converted
    assert other.read_bytes() == b"another model"


def test_an_error_type_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        private_copy(tmp_path / "missing.onnx", tmp_path)
