"""Any supported model file to an ONNX file, with a record of how it was converted and how faithfully.

`detect_kind` tells the format from the bytes (refusing pickles); a framework loader (torch_source,
keras_source) loads it without running code from the file; its exporter writes ONNX; then onnxruntime runs
the ONNX file and the source framework runs its own model on the same seeded sample batch, and a
conversion that does not reproduce the source is refused. ONNX files pass through untouched.

Converted files are cached by content (`$CLEANSE_CACHE_DIR`, else `~/.cache/cleanse`), so scanning the same
Keras or torch file again does not load TensorFlow or re-export. A cache entry records the sha256 of the ONNX
file it wrote and is served only while the file is a regular file (not a symlink) with those bytes.

Every output is written to a temporary file beside it, verified, then renamed into place: a refused
conversion leaves nothing at `-o`, and an output that is (or links to) the input is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cleanse_base.errors import ModelError
from cleanse_base.files import (
    atomic_output,
    check_writable_file,
    file_sha256,
    path_sha256,
    refuse_overlap,
    write_json_atomic,
)
from converters.model_files import ModelKind, detect_kind
from converters.onnx_prepare import load_checked
from converters.onnx_to_torch import VERIFY_SEED, checked_difference, ort_session, run_ort
from converters.source_model import SourceModel

CACHE_ENV = "CLEANSE_CACHE_DIR"
CACHE_VERSION = 2  # bump when a converter changes what it writes (2: entries record their ONNX sha256)


@dataclass(frozen=True)
class ConversionRecord:
    """What the report's conversion section says about how the scanned ONNX graph came to be."""

    source_format: str  # a ModelKind value
    source_sha256: str
    converter: str | None = None  # None: the file was ONNX already
    opset: int | None = None
    max_abs_diff_vs_source: float | None = None  # produced ONNX in onnxruntime vs the source framework
    sample_shape: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IntakeResult:
    onnx_path: Path
    record: ConversionRecord


def load_source(path: Path, kind: ModelKind, image_shape: tuple[int, int, int] | None) -> SourceModel:
    if kind is ModelKind.TORCH_EXPORT:
        from converters.torch_source import load_exported_program

        return load_exported_program(path)
    if kind is ModelKind.TORCHSCRIPT:
        from converters.torch_source import load_torchscript

        return load_torchscript(path, image_shape)
    from converters.keras_source import load_keras, load_saved_model

    return load_saved_model(path) if kind is ModelKind.TF_SAVED_MODEL else load_keras(path)


def max_difference_vs_source(source: SourceModel, onnx_path: Path) -> float:
    """Max |onnxruntime - source| on a seeded random batch; ModelError beyond float tolerance."""
    batch = np.random.default_rng(VERIFY_SEED).random(source.sample_shape, dtype=np.float32)
    session = ort_session(load_checked(onnx_path))
    got = run_ort(session, session.get_inputs()[0].name, session.get_outputs()[0].name, batch)
    expected = source.run(batch)
    return checked_difference(got, expected, "the converted ONNX file", "the source model")


def convert_to_onnx(
    path: str | Path, out: str | Path, opset: int | None = None, image_shape: tuple[int, int, int] | None = None
) -> ConversionRecord:
    """Write `path` (any supported format) as the ONNX file `out`, checked against the source framework.

    `out` appears only once the conversion is verified; it may not be, or link to, the source.
    `image_shape` (C, H, W) is needed only for TorchScript files, which record no input shape.
    """
    path, out = Path(path), Path(out)
    check_writable_file(out)
    refuse_overlap([path], [out])
    with atomic_output(out, suffix=".onnx") as temporary:
        record = _convert_verified(path, temporary, opset, image_shape)
    return record


def _convert_verified(
    path: Path, out: Path, opset: int | None, image_shape: tuple[int, int, int] | None
) -> ConversionRecord:
    """Export `path` to `out` and measure it against the source; raises when it does not reproduce it."""
    kind = detect_kind(path)
    if kind is ModelKind.ONNX:
        raise ModelError(f"{path}: already an ONNX file")
    source_sha256 = path_sha256(path)
    source = load_source(path, kind, image_shape)
    opset = opset or source.default_opset
    source.export(out, opset)
    diff = max_difference_vs_source(source, out)
    return ConversionRecord(
        source_format=kind.value,
        source_sha256=source_sha256,
        converter=source.converter,
        opset=opset,
        max_abs_diff_vs_source=diff,
        sample_shape=list(source.sample_shape),
        notes=list(source.notes),
    )


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cleanse"
    return Path(root) / "intake"


def cached_entry(onnx_path: Path, record_path: Path, source_sha256: str) -> ConversionRecord | None:
    """The cached conversion of the source with this sha256, or None unless both files are regular files (not
    symlinks) and the ONNX file still has the bytes the entry recorded."""
    if any(item.is_symlink() or not item.is_file() for item in (onnx_path, record_path)):
        return None
    try:
        entry = json.loads(record_path.read_text())
        record = ConversionRecord(**entry["record"])
        expected_onnx = entry["onnx_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.source_sha256 != source_sha256 or file_sha256(onnx_path) != expected_onnx:
        return None
    return record


def intake_model(path: str | Path, image_shape: tuple[int, int, int] | None = None) -> IntakeResult:
    """An ONNX file for any supported model file: the file itself for ONNX, else a checked, cached conversion."""
    path = Path(path)
    kind = detect_kind(path)
    digest = path_sha256(path)
    if kind is ModelKind.ONNX:
        return IntakeResult(path, ConversionRecord(source_format=kind.value, source_sha256=digest))
    shape_key = "x".join(map(str, image_shape)) if kind is ModelKind.TORCHSCRIPT and image_shape else ""
    key = hashlib.sha256(f"{CACHE_VERSION}:{digest}:{shape_key}".encode()).hexdigest()[:32]
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    onnx_path, record_path = folder / f"{key}.onnx", folder / f"{key}.json"
    record = cached_entry(onnx_path, record_path, digest)
    if record is not None:
        return IntakeResult(onnx_path, record)
    with atomic_output(onnx_path, suffix=".onnx") as temporary:  # replaces a planted symlink, never writes through it
        record = _convert_verified(path, temporary, None, image_shape)
        onnx_sha256 = file_sha256(temporary)
    if record.source_sha256 != digest:
        raise ModelError(f"{path}: the file changed while it was being converted; scan it again")
    write_json_atomic(record_path, {"record": record.to_dict(), "onnx_sha256": onnx_sha256})
    return IntakeResult(onnx_path, record)
