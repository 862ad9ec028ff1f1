"""Zip archives from untrusted model files, opened and read within the resource limits.

A model zip (`.pt2`, TorchScript, `.keras`) can declare far more than it holds: a 3 MB member inflating to
3.4 GB, or thousands of central-directory entries that all point at the same compressed bytes. Both torch's
reader (miniz) and Python's `zipfile` allocate a member's *declared* uncompressed size and never inflate
past it, so the declared sizes bound what any reader can make of the file. They are checked, before a
member is read, against the limits `model_bytes` (the file), `unpacked_bytes` (the sum of all members) and
`MAX_ENTRIES` (read from the end record, before the central directory is parsed into Python objects).

Names are checked too: two entries whose names differ only in case are refused, because torch's reader
looks names up case-insensitively and Python's `zipfile` does not, so the two would read different bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import BinaryIO

from cleanse_base.errors import InputError, ModelError
from cleanse_base.limits import check_limit
from cleanse_base.text import one_line, printable

MAX_ENTRIES = 100_000  # a model archive holds a file per tensor plus a few records; more is not a model


def refuse(what: str, why: str, error: type[InputError]) -> InputError:
    return error(f"{printable(what)}: refusing this zip archive: {why}")


def declared_entry_count(file: BinaryIO) -> int | None:
    """The entry count the end-of-central-directory record declares (None when there is no end record)."""
    end_record = zipfile._EndRecData(file)  # parses only the last 64 KiB (and the zip64 end record)
    return None if end_record is None else int(end_record[zipfile._ECD_ENTRIES_TOTAL])


def check_names(what: str, names: list[str], error: type[InputError]) -> None:
    seen: set[str] = set()
    for name in names:
        folded = name.casefold()
        if folded in seen:
            raise refuse(what, f"it holds {name!r} twice (names compared without case)", error)
        seen.add(folded)


def check_entry_count(source: str | Path | bytes, what: str, error: type[InputError] = ModelError) -> None:
    """`error` unless the end record is there and declares at most MAX_ENTRIES entries: parsing the central
    directory builds a Python object per entry, so a large file of tiny entries is a memory bomb of its own."""
    try:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as file:
            count = declared_entry_count(file)
    except (OSError, ValueError, EOFError) as exc:
        raise refuse(what, f"not a readable zip ({one_line(exc)})", error) from None
    if count is None:
        raise refuse(what, "no zip end record", error)
    if count > MAX_ENTRIES:
        raise refuse(what, f"it declares {count} entries (at most {MAX_ENTRIES})", error)


def open_checked_zip(source: str | Path | bytes, what: str, error: type[InputError] = ModelError) -> zipfile.ZipFile:
    """A ZipFile over a file or bytes whose size, entry count and declared uncompressed sizes are within the
    limits and whose names are unique; `error` (one line, naming `what`) otherwise."""
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    check_limit(f"{printable(what)}: file size", size, "model_bytes", error)
    check_entry_count(source, what, error)
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise refuse(what, f"not a readable zip ({one_line(exc)})", error) from None
    try:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise refuse(what, f"it holds {len(infos)} entries (at most {MAX_ENTRIES})", error)
        check_names(what, [info.filename for info in infos], error)
        unpacked = sum(info.file_size for info in infos)
        check_limit(f"{printable(what)}: declared unpacked size", unpacked, "unpacked_bytes", error)
    except BaseException:
        archive.close()
        raise
    return archive


def read_member(
    archive: zipfile.ZipFile, name: str, cap: int, what: str, error: type[InputError] = ModelError
) -> bytes:
    """A member's bytes, refused beyond `cap` (by its declared size first, then by what actually inflates)."""
    info = archive.getinfo(name)
    if info.file_size > cap:
        raise refuse(what, f"{name} declares {info.file_size} bytes (at most {cap} for this entry)", error)
    try:
        with archive.open(info) as member:
            data = member.read(cap + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise refuse(what, f"{name} cannot be read ({one_line(exc)})", error) from None
    if len(data) > cap:
        raise refuse(what, f"{name} inflates past {cap} bytes", error)
    return data
