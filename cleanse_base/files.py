"""File utilities every layer shares: content hashes, atomic writes, output paths that never replace an
input, and TOML reading."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError, InputError
from cleanse_base.limits import check_limit

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


def _tree_digest(files: Iterable[tuple[Path, str]]) -> str:
    """One sha256 over (relative name, content sha256) pairs, in name order."""
    digest = hashlib.sha256()
    for relative, content in sorted(files):
        digest.update(f"{relative.as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """sha256 over a folder's regular files: relative names and contents (symlinks, FIFOs and devices are
    skipped, never followed or read)."""
    files = [item for item in folder.rglob("*") if not item.is_symlink() and is_regular_file(item)]
    return _tree_digest((item.relative_to(folder), file_sha256(item)) for item in files)


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


def json_safe(value: Any) -> Any:
    """`value` with every float that is not finite as None: JSON has no infinity or NaN (Python's json would write
    `Infinity` and `NaN`, which strict parsers refuse), so an infinite anomaly index (a MAD of 0) reads as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def json_text(payload: Any) -> str:
    """Indented, strictly valid JSON (json_safe)."""
    return json.dumps(json_safe(payload), indent=2, allow_nan=False)


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json_text(payload) + "\n").encode())


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names through symlinks: equal for hard links and bind mounts."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino)


def _real(path: Path) -> Path:
    """`path` with every symlink resolved, the part that does not exist yet kept as written (never raises on
    a symlink loop, unlike Path.resolve in Python 3.11)."""
    return Path(os.path.realpath(path))


def _inside(child: Path, folder: Path) -> bool:
    return child == folder or folder in child.parents


@dataclass(frozen=True)
class _Place:
    given: Path
    real: Path
    identity: tuple[int, int] | None

    @staticmethod
    def of(path: str | Path) -> _Place:
        return _Place(Path(path), _real(Path(path)), _identity(Path(path)))

    def same_as(self, other: _Place) -> bool:
        return self.real == other.real or (self.identity is not None and self.identity == other.identity)

    def within(self, folder: _Place) -> bool:
        """Inside `folder` (or `folder` itself), however either is spelled."""
        if self.same_as(folder):
            return True
        if not os.path.isdir(folder.real):
            return False
        if _inside(self.real, folder.real):
            return True
        # a hard-linked or bind-mounted spelling of the folder: compare the identities of our ancestors
        return folder.identity is not None and any(_identity(parent) == folder.identity for parent in self.real.parents)


def refuse_overlap(
    inputs: Iterable[str | Path | None],
    outputs: Iterable[str | Path | None],
    output_folders: Iterable[str | Path | None] = (),
) -> None:
    """ConfigError when an output resolves (through symlinks, hard links or bind mounts) to an input or to another
    output, or lies inside an input folder: no command may replace what it reads, or write one output over
    another. `output_folders` are folders the command fills (anything inside may be replaced): they must not hold
    an input either."""
    input_places = [_Place.of(p) for p in inputs if p]
    output_places = [_Place.of(p) for p in outputs if p]
    folder_places = [_Place.of(p) for p in output_folders if p]
    seen: list[_Place] = []
    for out in [*output_places, *folder_places]:
        for source in input_places:
            if out.within(source):
                raise ConfigError(f"output {out.given} would overwrite or write into the input {source.given}")
        for other in seen:
            if out.same_as(other):
                raise ConfigError(f"outputs {other.given} and {out.given} are the same file")
        seen.append(out)
    for folder in folder_places:
        for source in input_places:
            if source.within(folder):
                raise ConfigError(f"output folder {folder.given} holds the input {source.given}; choose another")


def real_folder(path: str | Path) -> Path:
    """`path` as a folder that exists and is not a symlink (a link planted there would send what is written
    into it elsewhere); ConfigError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the folder ({exc.strerror or type(exc).__name__})") from None
    if path.is_symlink() or not path.is_dir():
        raise ConfigError(f"{path}: is a symlink or not a folder; refusing to write through it")
    return path


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


def _read_regular(path: Path, follow_symlinks: bool, error: type[InputError]) -> bytes:
    """A regular file's bytes, read once through one descriptor (a FIFO or device is refused unopened-for-reading,
    a symlink too unless `follow_symlinks`), within the model size limit."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        handle = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: is a symlink; refusing to follow it") from None
        raise error(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: not a regular file")
        check_limit(str(path), info.st_size, "model_bytes", error)
        return file.read()


def _write_private(path: Path, payload: bytes) -> None:
    """A new file only this user can read (0600), never written through an existing name or link."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(handle, "wb") as file:
        file.write(payload)


def private_copy(
    source: str | Path, folder: str | Path, follow_symlinks: bool = True, error: type[InputError] = InputError
) -> tuple[Path, str]:
    """Copy a model file (or a folder's regular files) into `folder`, reading each byte once, and return the
    copy and the sha256 of exactly those bytes (the same value `path_sha256` gives for unchanged files).

    Scanning the copy means the verdict and the hash are of the same bytes, however the source changes
    meanwhile. Symlinks inside a folder are skipped; `source` itself is refused when it is a symlink and not
    `follow_symlinks`."""
    source, folder = Path(source), Path(folder)
    target = folder / source.name
    if source.is_dir() and (follow_symlinks or not source.is_symlink()):
        return target, _copy_tree(source, target, error)
    payload = _read_regular(source, follow_symlinks, error)
    _write_private(target, payload)
    return target, bytes_sha256(payload)


def _copy_tree(source: Path, target: Path, error: type[InputError]) -> str:
    copied: list[tuple[Path, str]] = []
    total = 0
    for root, folders, names in os.walk(source):  # os.walk does not descend into symlinked folders
        relative_root = Path(root).relative_to(source)
        (target / relative_root).mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in names:
            item = Path(root) / name
            if item.is_symlink() or not is_regular_file(item):
                continue
            payload = _read_regular(item, False, error)
            total += len(payload)
            check_limit(str(source), total, "model_bytes", error)
            _write_private(target / relative_root / name, payload)
            copied.append((relative_root / name, bytes_sha256(payload)))
        folders[:] = [name for name in folders if not (Path(root) / name).is_symlink()]
    return _tree_digest(copied)


def is_regular_file(path: Path) -> bool:
    """A regular file, not a FIFO, device or socket (reading those can block forever or never end)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def read_small_file(path: str | Path, what: str, max_bytes: int, missing_hint: str = "") -> bytes:
    """The bytes of a small hand-made or tool-written file (a config, a manifest, a scan report): one-line
    ConfigErrors when it is missing, not a regular file (a FIFO would block) or larger than `max_bytes`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}{missing_hint}")
    if not is_regular_file(path):
        raise ConfigError(f"{path}: the {what} must be a regular file")
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path}: the {what} is larger than {max_bytes} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__})") from None


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's table, with one-line ConfigErrors for every way it can be unreadable."""
    payload = read_small_file(path, what, MAX_TOML_BYTES)
    try:
        return tomllib.loads(payload.decode())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None
