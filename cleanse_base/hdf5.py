"""HDF5 files that hold their own bytes. An HDF5 file can name other files: a dataset with external storage
reads raw bytes from any path, a virtual dataset (VDS) maps other HDF5 files, and an external link opens
another file. Through any of them an untrusted data or model file reads what the user can read, and those
bytes then reach outputs and error messages. `check_self_contained` refuses all three before a dataset is read.
"""

from __future__ import annotations

from typing import Any

from cleanse_base.errors import InputError
from cleanse_base.text import printable


def foreign_reference(file: Any) -> str | None:
    """What in the open h5py `file` reads another file (e.g. "'Y_test' uses external storage"), or None.
    Every link is visited without being followed; only hard links are opened, to inspect their datasets."""
    import h5py

    found: list[str] = []

    def visit(name: str) -> bool | None:
        link = file.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            found.append(f"{name!r} is an external link")
        elif isinstance(link, h5py.SoftLink):
            return None  # a path inside this file; its target is visited as the hard link it is
        elif not isinstance(link, h5py.HardLink):
            found.append(f"{name!r} is a link of a kind HDF5 resolves through plugins")
        else:
            found.extend(dataset_storage_problems(name, file[name]))
        return True if found else None

    file.visit_links(visit)
    return printable(found[0]) if found else None


def dataset_storage_problems(name: str, item: Any) -> list[str]:
    import h5py

    if not isinstance(item, h5py.Dataset):
        return []
    if item.is_virtual:
        return [f"{name!r} is a virtual dataset"]
    if item.id.get_create_plist().get_external_count() > 0:
        return [f"{name!r} uses external storage"]
    return []


def check_self_contained(file: Any, what: str, error: type[InputError]) -> None:
    """Raise `error` (one line naming `what`) when the open h5py `file` reads any other file."""
    problem = foreign_reference(file)
    if problem:
        raise error(f"{printable(what)}: {problem}, which reads another file; only self-contained HDF5 is read")
