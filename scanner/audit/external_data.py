"""An ONNX model's external data files, for the audit's private copy: the files its initializers name, checked
as onnx checks them when it loads them (a relative path inside the model's folder, no `..`, no link on the way,
a regular file), hashed with the model's own bytes so that the recorded sha256 covers every byte scanned.

A model without external data keeps its plain file sha256.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import onnx
from onnx import external_data_helper

from cleanse_base.errors import ModelError
from cleanse_base.files import bytes_sha256, file_sha256, is_regular_file, private_copy
from cleanse_base.limits import check_limit, current_limits
from cleanse_base.text import one_line, printable
from converters.onnx_prepare import stored_tensors

REFUSED = "refused"  # the digest part of a data file that cannot be read safely


def external_locations(payload: bytes) -> list[str]:
    """The distinct external data locations an ONNX model's tensors name; none for bytes that are not ONNX
    (the scan reports those)."""
    try:
        model = onnx.load_model_from_string(payload)
    except Exception:  # protobuf raises DecodeError, onnx its own types: not ours to report here
        return []
    found = {
        external_data_helper.ExternalDataInfo(tensor).location
        for tensor in stored_tensors(model)
        if external_data_helper.uses_external_data(tensor)
    }
    return sorted(found)


def checked_location(base: Path, location: str, model: str) -> Path:
    """The data file `location` names beside the model in `base`; ModelError for an absolute path, `..`, a link
    anywhere on the way, or anything but a regular file."""
    relative = PurePosixPath(location)
    shown = printable(location)
    if not location or relative.is_absolute() or ".." in relative.parts or location.startswith("\\"):
        raise ModelError(f"{model}: external data location {shown!r} must be a relative path inside its folder")
    path = base
    for part in relative.parts:
        path = path / part
        if path.is_symlink():
            raise ModelError(f"{model}: external data location {shown!r} passes through a symlink")
    if not is_regular_file(path):
        raise ModelError(f"{model}: external data {shown!r} is missing or not a regular file")
    return path


def combined_sha256(model_sha256: str, data_sha256: dict[str, str]) -> str:
    """The model's sha256 alone, or one sha256 over it and each external data file's."""
    if not data_sha256:
        return model_sha256
    payload = json.dumps({"model": model_sha256, "external_data": data_sha256}, sort_keys=True)
    return bytes_sha256(payload.encode())


def planned_sha256(path: Path, model_sha256: str) -> str:
    """The sha256 an audit plans for an ONNX file (its data files hashed in place), the same value
    `copy_external_data` gives for unchanged files; a data file that would be refused counts as REFUSED."""
    try:
        if path.stat().st_size > current_limits().model_bytes:
            return model_sha256  # the scan refuses it before reading its data
        locations = external_locations(path.read_bytes())
    except OSError:
        return model_sha256
    digests = {}
    for location in locations:
        try:
            digests[location] = file_sha256(checked_location(path.parent, location, str(path)))
        except (ModelError, OSError):
            digests[location] = REFUSED
    return combined_sha256(model_sha256, digests)


def copy_external_data(model: str, copy: Path, model_sha256: str) -> str:
    """Copy the data files the private `copy` of `model` names from the model's folder into the copy's folder
    (each read once, at the same relative place); the sha256 over the model and those files. Raises
    ModelError(message, sha256) for a location that is refused, after hashing the rest, so the error row is
    recorded under the same sha256 as planned."""
    base, private = Path(model).parent, copy.parent
    digests: dict[str, str] = {}
    refused = ""
    total = copy.stat().st_size
    for location in external_locations(copy.read_bytes()):
        try:
            source = checked_location(base, location, model)
            target_folder = private / PurePosixPath(location).parent
            target_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            copied, digests[location] = private_copy(source, target_folder, False, ModelError)
            total += copied.stat().st_size
            check_limit(f"{model}: model and external data", total, "model_bytes", ModelError)
        except (ModelError, OSError) as exc:
            digests[location] = REFUSED
            refused = refused or (str(exc) if isinstance(exc, ModelError) else f"{model}: {one_line(exc)}")
    digest = combined_sha256(model_sha256, digests)
    if refused:
        raise ExternalDataRefused(refused, digest)
    return digest


class ExternalDataRefused(ModelError):
    """A data file the model names that the audit will not copy; `sha256` is the row's key."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
