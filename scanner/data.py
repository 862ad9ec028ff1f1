"""Clean data in: .npz, .npy, .h5 (X_test/Y_test as in the reference code), or a folder of class subfolders.

Whatever the source, images come out as float32 NCHW in the raw pixel domain (0-255), the domain in which
triggers are stamped; labels as int64 or None.

Data files are untrusted. Every array is first known by what its file declares (shape and dtype, from the
.npy header, the zip entry or the HDF5 dataset); the declaration is checked against the model and the limits
(`data_bytes`, `unpacked_bytes`, `image_elements`, `images`) before a byte of it is read, and only the arrays
used (and, with `max_images`, only the rows drawn) are read. Messages name files (made printable) and sizes,
never data values.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cleanse_base.errors import ConfigError, DataError
from cleanse_base.files import is_regular_file
from cleanse_base.hdf5 import check_self_contained
from cleanse_base.limits import check_limit
from cleanse_base.text import one_line, printable

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
# PIL formats the suffixes stand for: a file is decoded only as one of these, whatever its content claims to be
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
IMAGE_KEYS = ("x", "X_test", "x_test", "images", "X")
LABEL_KEYS = ("y", "Y_test", "y_test", "labels", "Y")
IMAGE_KINDS = "uif"  # unsigned, signed, float
LABEL_KINDS = "buif"
FLOAT_BYTES = 4  # images are held as float32

Rows = np.ndarray | None  # sorted row indices to read, or None for all


@dataclass
class CleanData:
    images: np.ndarray  # float32 (N, C, H, W), raw pixels 0-255
    labels: np.ndarray | None  # int64 (N,) or None
    source: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> CleanData:
        labels = None if self.labels is None else self.labels[indices]
        return CleanData(self.images[indices], labels, self.source, list(self.notes))


@dataclass(frozen=True)
class StoredArray:
    """An array as its file declares it; `read(rows)` reads it (or only those rows) once the declaration passed."""

    name: str  # printable, for messages: "FILE: KEY"
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[Rows], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def stored_array(
    name: str, shape: tuple[int, ...], dtype: np.dtype, read: Callable[[Rows], np.ndarray], available: int | None
) -> StoredArray:
    """A StoredArray, refused when it holds Python objects (loading those unpickles), declares more than
    `data_bytes`, or more than the `available` bytes its file holds."""
    array = StoredArray(name, tuple(int(n) for n in shape), np.dtype(dtype), read)
    if array.dtype.hasobject:
        raise DataError(f"{name}: holds Python objects (dtype object), which are never loaded")
    check_limit(f"{name}: declared size in bytes", array.nbytes, "data_bytes", DataError)
    if available is not None and array.nbytes > available:
        raise DataError(f"{name}: declares {array.nbytes} bytes of data but holds {max(available, 0)}")
    return array


def draw_rows(count: int, max_images: int | None, seed: int) -> Rows:
    """The sorted rows a seeded draw of `max_images` keeps, or None when all `count` are used."""
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be a positive number, not {max_images}")
    if max_images is None or count <= max_images:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, max_images, replace=False))


# ---- arrays: .npy, .npz and .h5


def npy_declaration(stream: BinaryIO, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from an .npy header, leaving `stream` at the first data byte."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise DataError(f"{name}: .npy format version {version[0]}.{version[1]} is not supported")


def from_bytes(payload: bytes, array: StoredArray, fortran: bool, rows: Rows) -> np.ndarray:
    if len(payload) != array.nbytes:
        raise DataError(f"{array.name}: ends after {len(payload)} of its {array.nbytes} bytes")
    values = np.frombuffer(payload, dtype=array.dtype).reshape(array.shape, order="F" if fortran else "C")
    return values if rows is None else values[rows]


def npy_array(path: Path) -> StoredArray:
    name = printable(path)
    with open(path, "rb") as file:
        shape, fortran, dtype = npy_declaration(file, name)
        offset = file.tell()

    def read(rows: Rows) -> np.ndarray:
        if rows is None:
            with open(path, "rb") as file:
                file.seek(offset)
                return from_bytes(file.read(array.nbytes), array, fortran, None)
        values = np.memmap(path, array.dtype, "r", offset, array.shape, order="F" if fortran else "C")
        return np.array(values[rows])

    array = stored_array(name, shape, dtype, read, path.stat().st_size - offset)
    return array


def npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> StoredArray:
    """One .npy member, known by its header (a few inflated bytes); `read` inflates exactly its declared bytes."""
    with archive.open(info) as member:
        shape, fortran, dtype = npy_declaration(member, name)
        offset = member.tell()

    def read(rows: Rows) -> np.ndarray:
        with archive.open(info) as member:
            member.read(offset)
            return from_bytes(member.read(array.nbytes), array, fortran, rows)

    array = stored_array(name, shape, dtype, read, info.file_size - offset)
    return array


@dataclass(frozen=True)
class KeyedArrays:
    """The keys of a file's arrays and how to get one (its declaration; nothing of its data is read yet)."""

    keys: list[str]
    get: Callable[[str], StoredArray]


@contextlib.contextmanager
def npz_arrays(path: Path) -> Iterator[KeyedArrays]:
    """The .npy members of an .npz by key; a member's zip entry must declare at most `unpacked_bytes`."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")}

        def member(key: str) -> StoredArray:
            info, name = members[key], f"{printable(path)}: {printable(key)}"
            check_limit(f"{name}: declared unpacked size", info.file_size, "unpacked_bytes", DataError)
            return npz_member(archive, info, name)

        yield KeyedArrays(list(members), member)


@contextlib.contextmanager
def h5_arrays(path: Path) -> Iterator[KeyedArrays]:
    """The top-level datasets of a self-contained HDF5 file; an unwritten dataset (no storage) is refused."""
    import h5py

    with h5py.File(path, "r") as file:
        check_self_contained(file, str(path), DataError)
        keys = [key for key in file.keys() if isinstance(file.get(key), h5py.Dataset)]

        def dataset(key: str) -> StoredArray:
            item, name = file[key], f"{printable(path)}: {printable(key)}"

            def read(rows: Rows) -> np.ndarray:
                return item[()] if rows is None else item[rows]

            array = stored_array(name, item.shape or (), item.dtype, read, None)
            if array.nbytes and item.id.get_storage_size() == 0:
                raise DataError(f"{name}: declares {array.nbytes} bytes but has no stored data")
            return array

        yield KeyedArrays(keys, dataset)


@contextlib.contextmanager
def npy_arrays(path: Path) -> Iterator[KeyedArrays]:
    yield KeyedArrays([IMAGE_KEYS[0]], lambda key: npy_array(path))


@contextlib.contextmanager
def open_arrays(path: Path) -> Iterator[KeyedArrays]:
    """The arrays of an .npz, .npy or .h5 file, with every failure of the file's reader as one DataError."""
    suffix = path.suffix.lower()
    readers = {".npy": npy_arrays, ".npz": npz_arrays, ".h5": h5_arrays, ".hdf5": h5_arrays}
    if suffix not in readers:
        raise DataError(
            f"{printable(path)}: unknown data format {printable(suffix)!r} (use .npz, .npy, .h5 or a folder of images)"
        )
    try:
        with readers[suffix](path) as arrays:
            yield arrays
    except (DataError, ConfigError):
        raise
    except Exception as exc:
        raise DataError(f"{printable(path)}: cannot read ({one_line(exc)})") from None


def pick(arrays: KeyedArrays, keys: tuple[str, ...], what: str, path: Path, required: bool) -> StoredArray | None:
    for key in keys:
        if key in arrays.keys:
            return arrays.get(key)
    if required:
        found = ", ".join(printable(key) for key in arrays.keys[:20]) or "nothing"
        raise DataError(f"{printable(path)}: no {what} array (looked for {', '.join(keys)}; found {found})")
    return None


# ---- shapes and values


def to_nchw(images: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Put an (N,H,W), (N,H,W,C) or (N,C,H,W) array into (N,C,H,W), checking it fits the model."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"images have shape {list(images.shape)}; expected (N,H,W), (N,H,W,C) or (N,C,H,W)")
    if images.shape[1:] == (channels, height, width):
        return images
    if images.shape[1:] == (height, width, channels):
        return images.transpose(0, 3, 1, 2)
    if channels == 3 and images.shape[1:] in ((1, height, width), (height, width, 1)):
        return np.repeat(to_nchw(images, 1, height, width), 3, axis=1)
    raise DataError(
        f"images of shape {list(images.shape[1:])} do not fit the model's {channels}x{height}x{width} input"
    )


def check_images_declared(images: StoredArray, channels: int, height: int, width: int) -> int:
    """The image count, once the declared shape and dtype fit the model (checked on a one-image view)."""
    if not images.shape:
        raise DataError(f"{images.name}: holds a scalar, not an array of images")
    if len(images.shape) not in (3, 4):
        raise DataError(
            f"{images.name}: images have shape {list(images.shape)}; expected (N,H,W), (N,H,W,C) or (N,C,H,W)"
        )
    if images.dtype.kind not in IMAGE_KINDS:
        raise DataError(f"{images.name}: images have dtype {images.dtype}; expected uint8 or float")
    to_nchw(np.broadcast_to(np.zeros((), images.dtype), (1, *images.shape[1:])), channels, height, width)
    if images.shape[0] == 0:
        raise DataError(f"{images.name}: holds no images")
    return images.shape[0]


def check_labels_declared(labels: StoredArray, count: int) -> None:
    shape = labels.shape
    if not shape:
        raise DataError(f"{labels.name}: labels are a scalar; expected one label per image")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] == 0):
        raise DataError(f"{labels.name}: labels have shape {list(shape)}; expected (N,) or one-hot rows (N, classes)")
    if labels.dtype.kind not in LABEL_KINDS:
        raise DataError(f"{labels.name}: labels have dtype {labels.dtype}; expected integers or one-hot rows")
    if shape[0] != count:
        raise DataError(f"{shape[0]} labels for {count} images")


def to_raw_pixels(images: np.ndarray) -> tuple[np.ndarray, str | None]:
    """uint8 stays; floats in [0,1] are scaled to 0-255; floats in [0,255] stay. Returns a note on change.
    The result is a new C-contiguous float32 array."""
    if images.dtype.kind not in IMAGE_KINDS:
        raise DataError(f"images have dtype {images.dtype}; expected uint8 or float")
    raw = images.astype(np.float32, order="C")
    if images.dtype == np.uint8:
        return raw, None
    low, high = float(raw.min()), float(raw.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError("images contain NaN or infinite values")
    if low < 0 or high > 255:
        raise DataError(
            "image values lie outside 0-255; give raw images (uint8, or floats in 0-1 or 0-255): "
            "Cleanse stamps triggers on raw pixels and applies the model's scaling itself (--scale)"
        )
    if high <= 1.0:
        raw *= 255.0
        return raw, "float images in [0,1] read as raw pixels x255"
    return raw, None


def to_labels(labels: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    """Integer labels, one-hot rows decoded; checked against the image count and class count. Messages give
    counts, never label values (a file's bytes must not leak through them)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in LABEL_KINDS or labels.ndim not in (1, 2):
        raise DataError(f"labels have dtype {labels.dtype} and shape {list(labels.shape)}; expected integers")
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if len(labels) != count:
        raise DataError(f"{len(labels)} labels for {count} images")
    if labels.dtype.kind == "f" and not (np.all(np.isfinite(labels)) and np.all(np.mod(labels, 1) == 0)):
        raise DataError("labels are not whole numbers")
    outside = int(np.count_nonzero((labels < 0) | (labels >= num_classes)))
    if outside:
        raise DataError(
            f"{outside} of {count} labels are outside 0..{num_classes - 1}: the model has {num_classes} classes"
        )
    return labels.astype(np.int64)


def check_decoded_size(count: int, channels: int, height: int, width: int, where: str) -> None:
    size = count * channels * height * width * FLOAT_BYTES
    check_limit(f"{where}: {count} images as float32", size, "data_bytes", DataError)


# ---- image folders


@dataclass(frozen=True)
class ImageFile:
    path: Path
    label: int


def entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{printable(folder)}: cannot list ({type(exc).__name__})") from None


def check_stays_inside(entry: Path, root: Path) -> None:
    """A symlink must resolve inside the data folder: one pointing out could read any file the user can."""
    if entry.is_symlink():
        target = Path(os.path.realpath(entry))
        if target != root and root not in target.parents:
            raise DataError(f"{printable(entry)}: a symbolic link to outside the data folder (not followed)")


def class_labels(names: list[str], num_classes: int) -> list[int]:
    """Labels of sorted class folders: their numbers when all are ASCII numbers, else their positions."""
    numeric = [name.isascii() and name.isdecimal() for name in names]
    if not any(numeric):
        return list(range(len(names)))
    if not all(numeric):
        mixed = next(name for name, is_number in zip(names, numeric, strict=True) if not is_number)
        raise DataError(
            f"class folder {printable(mixed)!r} is not a number while others are: name the class folders "
            f"0..{num_classes - 1}, or all by name (then their sorted order gives the labels)"
        )
    for name in names:
        if int(name) >= num_classes:
            raise DataError(f"class folder {printable(name)!r} is not a class of the model (0..{num_classes - 1})")
    return [int(name) for name in names]


def list_image_folder(path: Path, num_classes: int) -> list[ImageFile]:
    """The image files of the class subfolders, in order, with their labels; at most `images` of them.
    Only regular files are listed (a FIFO would block the read forever) and no link leads out of `path`."""
    root = Path(os.path.realpath(path))
    class_dirs = []
    for entry in entries(path):
        if entry.is_dir():
            check_stays_inside(entry, root)
            class_dirs.append(entry)
    if not class_dirs:
        raise DataError(f"{printable(path)}: no class subfolders (expected {printable(path)}/<label>/<image files>)")
    limit_what = f"{printable(path)}: image files"
    files: list[ImageFile] = []
    for class_dir, label in zip(class_dirs, class_labels([d.name for d in class_dirs], num_classes), strict=True):
        for file in entries(class_dir):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            check_stays_inside(file, root)
            if not is_regular_file(file):
                raise DataError(f"{printable(file)}: not a regular file (a FIFO, device or folder is not read)")
            files.append(ImageFile(file, label))
            check_limit(limit_what, len(files), "images", DataError)
    if not files:
        raise DataError(f"{printable(path)}: no image files in the class subfolders")
    return files


def read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3), resized to fit; its declared size is checked before
    decoding (a PNG or JPEG of a few KB can declare gigapixels)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our image_elements limit decides
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                pixels = image.size[0] * image.size[1] * max(len(image.getbands()), channels)
                check_limit(f"{printable(path)}: declared pixels x channels", pixels, "image_elements", DataError)
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{printable(path)}: not a readable image ({type(exc).__name__})") from None


def read_image_files(files: list[ImageFile], channels: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The listed images, decoded and resized to fit, with their labels."""
    images = [read_image(file.path, channels, height, width) for file in files]
    return np.stack(images), np.asarray([file.label for file in files], dtype=np.int64)


# ---- the whole


def load_arrays(
    path: Path, channels: int, height: int, width: int, max_images: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None, Rows]:
    """(images, labels or None, rows drawn) from an .npz, .npy or .h5 file, reading only what is used."""
    with open_arrays(path) as arrays:
        images = pick(arrays, IMAGE_KEYS, "image", path, required=True)
        labels = pick(arrays, LABEL_KEYS, "label", path, required=False)
        count = check_images_declared(images, channels, height, width)
        if labels is not None:
            check_labels_declared(labels, count)
        rows = draw_rows(count, max_images, seed)
        check_decoded_size(count if rows is None else len(rows), channels, height, width, images.name)
        return images.read(rows), None if labels is None else labels.read(rows), rows


def load_clean_data(
    path: str | Path,
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    max_images: int | None = None,
    seed: int = 0,
) -> CleanData:
    """Read clean images (and labels when present) shaped for a model with the given input and classes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{printable(path)}: no such file or folder")
    if path.is_dir():
        files = list_image_folder(path, num_classes)
        rows = draw_rows(len(files), max_images, seed)
        chosen = files if rows is None else [files[row] for row in rows]
        check_decoded_size(len(chosen), channels, height, width, printable(path))
        images, labels = read_image_files(chosen, channels, height, width)
    elif not is_regular_file(path):
        raise DataError(f"{printable(path)}: not a regular file (a FIFO, device or socket is not read)")
    else:
        images, labels, rows = load_arrays(path, channels, height, width, max_images, seed)
    raw, note = to_raw_pixels(to_nchw(images, channels, height, width))
    labels = None if labels is None else to_labels(labels, len(raw), num_classes)
    data = CleanData(raw, labels, str(path), [note] if note else [])
    if rows is not None:
        data.notes.append(f"{max_images} of the images drawn at random (seed {seed})")
    return data
