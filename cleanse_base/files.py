"""File utilities every layer shares: content hashes, atomic writes, output paths that never replace an
input, and TOML reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError

HASH_BLOCK = 1 << 20
MAX_TOML_BYTES = 1 << 20  # config files and manifests are hand-written; more is not one


def bytes_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """sha256 over a folder's regular files: relative names and contents (symlinks are not followed)."""
    digest = hashlib.sha256()
    for item in sorted(folder.rglob("*")):
        if item.is_symlink() or not item.is_file():
            continue
        digest.update(f"{item.relative_to(folder).as_posix()}\0{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (a SavedModel, an image folder)."""
    return tree_sha256(path) if path.is_dir() else file_sha256(path)


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path in `path`'s folder: write and verify it inside the block; it replaces `path` when the
    block ends without an error and is removed when it raises, so `path` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(payload)


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _inside(child: Path, folder: Path) -> bool:
    return child == folder or folder in child.parents


def refuse_overlap(inputs: Iterable[str | Path | None], outputs: Iterable[str | Path | None]) -> None:
    """ConfigError when an output resolves (through symlinks or hard links) to an input or to another output,
    or lies inside an input folder: no command may replace what it reads, or write one output over another."""
    input_paths = [Path(p) for p in inputs if p]
    output_paths = [Path(p) for p in outputs if p]
    resolved_inputs = [(p, p.resolve(), _identity(p)) for p in input_paths]
    seen: list[tuple[Path, Path, tuple[int, int] | None]] = []
    for out in output_paths:
        resolved, identity = out.resolve(), _identity(out)
        for original, target, target_identity in resolved_inputs:
            same_file = identity is not None and identity == target_identity
            if same_file or resolved == target or (target.is_dir() and _inside(resolved, target)):
                raise ConfigError(f"output {out} would overwrite or write into the input {original}")
        for other, other_resolved, other_identity in seen:
            if resolved == other_resolved or (identity is not None and identity == other_identity):
                raise ConfigError(f"outputs {other} and {out} are the same file")
        seen.append((out, resolved, identity))


def check_writable_file(path: str | Path) -> None:
    """ConfigError unless `path` can become a file: not a folder, its folder creatable and writable. Checked
    before long work so that a bad output path fails in a second, not after the whole scan."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a file name")
    _check_writable_folder(path.parent, str(path))


def check_writable_folder(path: str | Path) -> None:
    """ConfigError unless `path` is, or can be created as, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder")
    _check_writable_folder(path, str(path))


def _check_writable_folder(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write there ({existing} is not a writable folder)")


def is_regular_file(path: Path) -> bool:
    """A regular file, not a FIFO, device or socket (reading those can block forever or never end)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's table, with one-line ConfigErrors for every way it can be unreadable."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}")
    if not is_regular_file(path):
        raise ConfigError(f"{path}: the {what} must be a regular file")
    if path.stat().st_size > MAX_TOML_BYTES:
        raise ConfigError(f"{path}: the {what} is larger than {MAX_TOML_BYTES} bytes")
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__})") from None
