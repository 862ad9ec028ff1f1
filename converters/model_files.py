"""What kind of model a file or folder holds, told from its bytes and layout, never by loading it.

The suffix is only a hint: a `.pt` may be a TorchScript archive, an ExportedProgram or a plain pickle, so
zip archives are told apart by the entries they hold:

- torch.export (`.pt2`): `<root>/archive_format` reading `pt2` and `<root>/models/*.json`.
- TorchScript (`torch.jit.save`): `<root>/code/` (the model's TorchScript source) beside `<root>/data.pkl`.
- a plain `torch.save` checkpoint: `<root>/data.pkl` and no `code/`; legacy ones are a bare pickle stream.
- Keras v3 (`.keras`): `config.json` and `model.weights.h5` at the top of the zip.

Plain checkpoints are refused here, before anything unpickles them: unpickling runs whatever callables the
stream names, so loading an untrusted checkpoint can run arbitrary code (`torch.load(weights_only=True)`
narrows that, but a checkpoint also holds no architecture to rebuild the model from).
"""

from __future__ import annotations

import zipfile
from enum import Enum
from pathlib import Path

from cleanse_base.errors import ModelError
from cleanse_base.text import one_line
from converters.pickle_scan import is_pickle
from converters.zip_archive import check_entry_count

ONNX_MAGIC_FIELD = b"\x08"  # an ONNX ModelProto starts with field 1 (ir_version, varint)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


class ModelKind(Enum):
    ONNX = "onnx"
    TORCH_EXPORT = "torch.export ExportedProgram"
    TORCHSCRIPT = "TorchScript"
    KERAS = "Keras v3 (.keras)"
    KERAS_H5 = "Keras HDF5 (.h5)"
    TF_SAVED_MODEL = "TensorFlow SavedModel"


def refusal_for_pickle(path: Path) -> ModelError:
    return ModelError(
        f"{path}: a pickled torch checkpoint; refusing to load it, because unpickling an untrusted file can "
        "run arbitrary code, and a checkpoint holds weights without the architecture. Export the model "
        "instead, where it was trained: torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), "
        "or torch.onnx.export(model, (example,), 'model.onnx'), then scan that file"
    )


def zip_root(names: list[str]) -> str:
    """The single top folder torch writes every archive entry under ('' when there is none)."""
    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    return f"{roots.pop()}/" if len(roots) == 1 else ""


def zip_kind(path: Path, names: list[str]) -> ModelKind:
    root = zip_root(names)
    entries = set(names)
    if "config.json" in entries and "model.weights.h5" in entries:
        return ModelKind.KERAS
    if f"{root}archive_format" in entries or any(name.startswith(f"{root}models/") for name in names):
        return ModelKind.TORCH_EXPORT
    has_code = any(name.startswith(f"{root}code/") for name in names)
    if has_code and f"{root}data.pkl" in entries:
        return ModelKind.TORCHSCRIPT
    if f"{root}data.pkl" in entries:
        raise refusal_for_pickle(path)
    raise ModelError(f"{path}: a zip archive that is not a torch.export, TorchScript or Keras model")


def detect_kind(path: str | Path) -> ModelKind:
    """The kind of model at `path`, or ModelError (refusing pickles, naming what is supported)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return ModelKind.TF_SAVED_MODEL
        raise ModelError(f"{path}: a folder without saved_model.pb, so not a TensorFlow SavedModel")
    with open(path, "rb") as file:
        head = file.read(16)
    if zipfile.is_zipfile(path):
        check_entry_count(path, str(path))
        try:
            with zipfile.ZipFile(path) as archive:
                return zip_kind(path, archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ModelError(f"{path}: a damaged zip archive ({one_line(exc)})") from None
    if head.startswith(HDF5_MAGIC):
        return ModelKind.KERAS_H5
    if is_pickle(head) or path.suffix.lower() in PICKLE_SUFFIXES:
        raise refusal_for_pickle(path)
    if head.startswith(ONNX_MAGIC_FIELD) or path.suffix.lower() == ".onnx":
        return ModelKind.ONNX
    raise ModelError(
        f"{path}: not a model file Cleanse reads (supported: .onnx, torch.export .pt2, TorchScript, "
        ".keras, .h5, TensorFlow SavedModel folders)"
    )
