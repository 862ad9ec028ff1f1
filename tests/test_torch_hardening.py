"""Untrusted torch files stay inert: the planted attacks really work when torch loads the file unchecked,
and Cleanse refuses each of them before torch sees it, with one line; valid files still convert."""

from __future__ import annotations

import ctypes
import io
import json
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from cleanse_base.errors import ModelError
from cleanse_base.limits import ENV_VAR
from converters import torchscript_check, zip_archive
from converters.intake import convert_to_onnx
from converters.model_files import detect_kind
from converters.pt2_check import check_pt2_archive
from converters.torchscript_check import Refusal, check_source, check_torchscript_archive, operator_refusal
from converters.zip_archive import open_checked_zip, read_member
from fixtures.hostile import make_corpus
from fixtures.hostile.torch_files import (
    IMAGE,
    ReadsIntoOutput,
    TinyClassifier,
    WritesOnLoad,
    compile_marker_library,
    copy_zip,
    main_script_torchscript,
    pt2_runs_native_code,
    save_pt2,
    save_torchscript,
    write_zero_bomb,
)

SHAPE = IMAGE


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANSE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus", tmp_path / "m.onnx", tmp_path / "c.onnx", tmp_path / "d.npz")


def aotinductor_folders() -> set[Path]:
    return {*Path(tempfile.gettempdir()).glob("aotinductor_*"), *Path("/tmp").glob("aotinductor_*")}


# ---------------------------------------------------------------- .pt2: native code


def test_the_planted_library_really_runs_its_constructor_when_loaded(tmp_path):
    marker = tmp_path / "ran"
    ctypes.CDLL(str(compile_marker_library(tmp_path, marker)))
    assert marker.exists()  # so its absence below means the library was never loaded


@pytest.mark.slow
def test_pt2_with_native_code_is_refused_before_anything_is_extracted(tmp_path, corpus):
    before = aotinductor_folders()
    planted, (marker,) = pt2_runs_native_code(corpus, tmp_path)
    with pytest.raises(ModelError, match="data/aotinductor/model/planted.so"):
        convert_to_onnx(planted, tmp_path / "out.onnx")
    assert not marker.exists()
    assert aotinductor_folders() == before
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("entry", ["data/executorch/model.pte", "xl_model_weights/model_param_config", "models/b.json"])
def test_pt2_entries_outside_what_torch_export_save_writes_are_refused(tmp_path, entry):
    plain = save_pt2(TinyClassifier(), tmp_path / "plain.pt2")
    planted = tmp_path / "planted.pt2"
    with copy_zip(plain, planted) as archive:
        archive.writestr(f"plain/{entry}", b"{}")
    with pytest.raises(ModelError, match="which a plain ExportedProgram archive does not"):
        check_pt2_archive(planted)


def test_pt2_with_extra_files_is_accepted(tmp_path):
    program = torch.export.export(TinyClassifier().eval(), (torch.rand(2, *SHAPE),))
    torch.export.save(program, tmp_path / "extra.pt2", extra_files={"note.txt": "trained on digits"})
    check_pt2_archive(tmp_path / "extra.pt2")


def test_pt2_that_fails_to_load_gives_one_line_and_no_log(tmp_path, capfd):
    plain = save_pt2(TinyClassifier(), tmp_path / "plain.pt2")
    with zipfile.ZipFile(plain) as original:
        name = next(n for n in original.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(original.read(name))
    for entry in config["config"].values():
        entry["path_name"] = "weight_999"
    broken = tmp_path / "broken.pt2"
    with copy_zip(plain, broken, skip=lambda n: n == name) as archive:
        archive.writestr(name, json.dumps(config))
    capfd.readouterr()
    with pytest.raises(ModelError, match="weight_999") as error:
        convert_to_onnx(broken, tmp_path / "out.onnx")
    assert "\n" not in str(error.value)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# ---------------------------------------------------------------- zip bombs and zip tricks


def test_pt2_zip_bomb_is_refused_by_its_declared_size(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "unpacked_bytes=8M")
    plain = save_pt2(TinyClassifier(), tmp_path / "plain.pt2")
    bomb = tmp_path / "bomb.pt2"
    with copy_zip(plain, bomb, skip=lambda n: n.endswith("weight_0")) as archive:
        write_zero_bomb(archive, "plain/data/weights/weight_0", 16 << 20)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelError, match="unpacked_bytes=8388608"):
        check_pt2_archive(bomb)


def test_a_bomb_inside_the_sample_inputs_zip_is_refused(tmp_path, monkeypatch):
    plain = save_pt2(TinyClassifier(), tmp_path / "plain.pt2")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as inner:
        write_zero_bomb(inner, "model/data/0", 16 << 20)
    planted = tmp_path / "planted.pt2"
    with copy_zip(plain, planted, skip=lambda n: n.endswith("sample_inputs/model.pt")) as archive:
        archive.writestr("plain/data/sample_inputs/model.pt", nested.getvalue())
    monkeypatch.setenv(ENV_VAR, "unpacked_bytes=8M")  # the outer archive holds 50 KB; the inner one inflates
    with pytest.raises(ModelError, match="sample_inputs/model.pt: declared unpacked size"):
        check_pt2_archive(planted)


def test_torchscript_zip_bomb_is_refused_by_its_declared_size(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "unpacked_bytes=8M")
    plain = save_torchscript(TinyClassifier(), tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"
    with copy_zip(plain, bomb, skip=lambda n: n.endswith("data/0")) as archive:
        write_zero_bomb(archive, "plain/data/0", 16 << 20)
    with pytest.raises(ModelError, match="unpacked_bytes"):
        convert_to_onnx(bomb, tmp_path / "out.onnx", image_shape=SHAPE)


def test_zip_entry_count_and_names_differing_in_case_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(5):
            archive.writestr(f"m/data/{index}", b"x")
    monkeypatch.setattr(zip_archive, "MAX_ENTRIES", 4)
    with pytest.raises(ModelError, match="declares 5 entries"):
        open_checked_zip(path, "a.zip")
    with pytest.raises(ModelError, match="declares 5 entries"):
        detect_kind(path)  # before zipfile parses the central directory
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/code/__torch__.py", b"")
        archive.writestr("m/CODE/__torch__.py", b"")  # torch's reader finds either for the other
    with pytest.raises(ModelError, match="twice"):
        open_checked_zip(path, "a.zip")


def test_a_damaged_zip_is_one_line(tmp_path):
    plain = save_pt2(TinyClassifier(), tmp_path / "plain.pt2")
    data = plain.read_bytes()
    directory = data.rindex(b"PK\x01\x02")  # the last central-directory entry
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(data[:directory] + b"XX" + data[directory + 2 :])
    with pytest.raises(ModelError, match="damaged zip"):
        detect_kind(damaged)


def test_read_member_is_capped(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/models/model.json", b"{}" + b" " * 5000)
    with open_checked_zip(path, "a.zip") as archive:
        assert len(read_member(archive, "m/models/model.json", 6000, "a.zip")) == 5002
        with pytest.raises(ModelError, match="at most 100"):
            read_member(archive, "m/models/model.json", 100, "a.zip")


# ---------------------------------------------------------------- TorchScript code


def test_the_planted_torchscript_really_writes_and_reads_files_when_loaded_unchecked(tmp_path, corpus):
    marker = tmp_path / "written"
    writer = save_torchscript(WritesOnLoad(str(marker)), tmp_path / "writes.pt")
    marker.unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="left uninitialized"):  # the marker is written before this
        torch.jit.load(str(writer))
    assert marker.read_bytes() == b"PWND"

    reader = save_torchscript(ReadsIntoOutput(str(corpus.secret), len(corpus.secret_bytes)), tmp_path / "r.pt")
    module = torch.jit.load(str(reader)).eval()
    assert "aten::from_file" in str(module.graph)
    assert module(torch.zeros(2, *SHAPE)).shape == (2, 10)  # it ran, reading the secret


@pytest.mark.slow
def test_the_planted_reader_really_puts_the_secret_into_an_unchecked_onnx_export(tmp_path, corpus):
    reader = save_torchscript(ReadsIntoOutput(str(corpus.secret), len(corpus.secret_bytes)), tmp_path / "r.pt")
    module = torch.jit.load(str(reader)).eval()
    out = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(2, *SHAPE),), out, dynamo=False, opset_version=17)
    assert corpus.secret_bytes in out.getvalue()


def test_torchscript_that_writes_or_reads_files_is_refused_before_it_loads(tmp_path, corpus):
    marker = tmp_path / "written"
    writer = save_torchscript(WritesOnLoad(str(marker)), tmp_path / "writes.pt")
    marker.unlink(missing_ok=True)
    reader = save_torchscript(ReadsIntoOutput(str(corpus.secret), len(corpus.secret_bytes)), tmp_path / "r.pt")
    for planted in (writer, reader):
        with pytest.raises(ModelError, match="refusing to load this TorchScript archive"):
            convert_to_onnx(planted, tmp_path / "out.onnx", image_shape=SHAPE)
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def forward_source(body: str) -> str:
    return (
        "class M(Module):\n"
        "  __parameters__ = []\n"
        "  __buffers__ = []\n"
        "  training : bool\n"
        "  def forward(self: __torch__.M,\n"
        "    x: Tensor) -> Tensor:\n"
        f"    {body}\n"
        "    return x\n"
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("_0 = torch.from_file(self.p, True, 4, dtype=0)", "from_file"),
        ("_0 = ops.aten.from_file(self.p, True, 4)", "from_file"),
        ("_0 = torch.autograd.from_file(self.p)", "from_file"),
        ("_0 = torch.save(x, self.p)", "save"),
        ("_0 = x.save(self.p)", "save"),
        ("print(x)", "print"),
        ("_0 = ops.debugprims.load_tensor(self.p, [1], [1], 6, 0)", "load_tensor"),
        ("_0 = ops\n    _1 = _0.c10d.barrier(x)", "ops"),
        ("_0 = ops.c10d.barrier(x)", "ops"),
        ("_0 = __torch__.torch.classes.ns.Opener(self.p)", "torch.classes"),
        ("_0 = torch.nn.functional.relu(x)", "not an operator"),
        ("_0 = torch.no_such_operator(x)", "not a registered operator"),
        ("_0 = (lambda y: y)(x)", "Lambda"),
        ('_0 = getattr(x, "save")(self.p)', "save"),
        ("_0 = getattr(x, self.name)", "literal attribute name"),
        ("_0 = getattr\n    _1 = _0(x, self.name)", "getattr"),
        ('_0 = torch.format("/etc/passwd")', "file path"),
        ('_0 = torch.format("../../secret")', "file path"),
        ("_0 = torch.relu(x)  # \uff46rom_file", "ASCII"),
    ],
)
def test_torchscript_source_outside_the_allow_list_is_refused(body, why):
    with pytest.raises(Refusal, match=why):
        check_source(forward_source(body))


def test_torchscript_setstate_is_refused_even_when_it_calls_nothing():
    source = forward_source("_0 = torch.relu(x)") + (
        "  def __setstate__(self: __torch__.M,\n    state: Tuple[bool]) -> NoneType:\n"
        "    self.training = (state)[0]\n    return None\n"
    )
    with pytest.raises(Refusal, match="__setstate__"):
        check_source(source)


def test_pure_operators_pass_and_file_operators_do_not():
    for allowed in ("aten::conv2d", "aten::gelu", "aten::div", "aten::format", "prim::RaiseException"):
        assert operator_refusal(allowed) is None, allowed
    assert "outside the process" in operator_refusal("aten::from_file")
    assert "outside the process" in operator_refusal("aten::save")
    assert "outside" in operator_refusal("debugprims::load_tensor")


def test_a_path_taking_operator_is_refused_even_when_not_named(monkeypatch):
    monkeypatch.setattr(torchscript_check, "DENIED_OPS", set())
    operator_refusal.cache_clear()
    try:
        assert "takes a string 'filename'" in operator_refusal("aten::from_file")
    finally:
        operator_refusal.cache_clear()


class ManyLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding="same", groups=2), nn.GELU(), nn.Dropout2d(0.1), nn.AdaptiveAvgPool2d(2),
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Hardswish(), nn.GroupNorm(2, 8),
        )  # fmt: skip
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            y = torch.relu(block(y)) + y
        y, _ = self.attention(y, y, y)
        y, _ = self.lstm(self.encoder(y))
        return torch.nn.functional.log_softmax(self.head(self.norm(y.mean(1))), dim=-1)


@pytest.mark.slow
def test_common_layers_scripted_and_traced_pass_the_checks(tmp_path):
    model = ManyLayers().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.trace(model, torch.rand(2, *SHAPE), check_trace=False), tmp_path / "traced.pt")
    check_torchscript_archive(tmp_path / "scripted.pt")
    check_torchscript_archive(tmp_path / "traced.pt")


def test_torchscript_entries_outside_what_torch_jit_save_writes_are_refused(tmp_path):
    plain = save_torchscript(TinyClassifier(), tmp_path / "plain.pt")
    planted = tmp_path / "planted.pt"
    with copy_zip(plain, planted) as archive:
        archive.writestr("plain/CODE/__torch__/evil.py", b"")
    with pytest.raises(ModelError, match="which torch.jit.save does not write"):
        check_torchscript_archive(planted)


# ---------------------------------------------------------------- a false refusal, fixed


@pytest.mark.slow
def test_torchscript_saved_from_a_main_script_converts_and_matches(tmp_path):
    model = main_script_torchscript(tmp_path / "main.pt")
    with zipfile.ZipFile(model) as archive:
        assert any(name.endswith("code/__torch__.py") for name in archive.namelist())  # class Net of __main__
    record = convert_to_onnx(model, tmp_path / "main.onnx", image_shape=SHAPE)
    assert record.max_abs_diff_vs_source < 1e-4 and (tmp_path / "main.onnx").exists()
