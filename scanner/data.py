"""Clean data in: .npz, .npy, .h5 (X_test/Y_test as in the reference code), or a folder of class subfolders.

Whatever the source, images come out as float32 NCHW in the raw pixel domain (0-255), the domain in which
triggers are stamped; labels as int64 or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleanse_base.errors import DataError
from cleanse_base.text import one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
IMAGE_KEYS = ("x", "X_test", "x_test", "images", "X")
LABEL_KEYS = ("y", "Y_test", "y_test", "labels", "Y")


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


def to_raw_pixels(images: np.ndarray) -> tuple[np.ndarray, str | None]:
    """uint8 stays; floats in [0,1] are scaled to 0-255; floats in [0,255] stay. Returns a note on change."""
    if images.dtype == np.uint8:
        return images.astype(np.float32), None
    if not np.issubdtype(images.dtype, np.number):
        raise DataError(f"images have dtype {images.dtype}; expected uint8 or float")
    images = images.astype(np.float32)
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError("images contain NaN or infinite values")
    if low < 0 or high > 255:
        raise DataError(
            f"image values span [{low:.3g}, {high:.3g}]; give raw images (uint8, or floats in 0-1 or 0-255): "
            "Cleanse stamps triggers on raw pixels and applies the model's scaling itself (--scale)"
        )
    if high <= 1.0:
        return images * 255.0, "float images in [0,1] read as raw pixels x255"
    return images, None


def to_labels(labels: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    """Integer labels, one-hot rows decoded; checked against the image count and class count."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if len(labels) != count:
        raise DataError(f"{len(labels)} labels for {count} images")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError("labels are not integers")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels span {labels.min()}..{labels.max()}, the model has {num_classes} classes")
    return labels


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...], what: str, source: Path, required: bool):
    for key in keys:
        if key in arrays:
            return arrays[key]
    if required:
        raise DataError(f"{source}: no {what} array (looked for {', '.join(keys)}; found {', '.join(arrays)})")
    return None


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from an .npz, .npy or .h5 file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as file:
                arrays = {key: file[key][()] for key in file.keys() if isinstance(file[key], h5py.Dataset)}
        else:
            raise DataError(f"{path}: unknown data format {suffix!r} (use .npz, .npy, .h5 or a folder of images)")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc)})") from None
    images = _pick(arrays, IMAGE_KEYS, "image", path, required=True)
    return images, _pick(arrays, LABEL_KEYS, "label", path, required=False)


def read_image_folder(path: Path, channels: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in class subfolders (sorted names; integer names are used as the labels), resized to fit."""
    from PIL import Image

    class_dirs = sorted((d for d in path.iterdir() if d.is_dir()), key=lambda d: d.name)
    if not class_dirs:
        raise DataError(f"{path}: no class subfolders (expected {path}/<label>/<image files>)")
    numeric = all(d.name.isdigit() for d in class_dirs)
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for index, class_dir in enumerate(class_dirs):
        label = int(class_dir.name) if numeric else index
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    image = image.convert(mode)
                    if image.size != (width, height):
                        image = image.resize((width, height), Image.BILINEAR)
                    images.append(np.asarray(image, dtype=np.uint8))
            except Exception as exc:
                raise DataError(f"{file}: not a readable image ({type(exc).__name__})") from None
            labels.append(label)
    if not images:
        raise DataError(f"{path}: no image files in the class subfolders")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


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
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        images, labels = read_image_folder(path, channels, height, width)
    else:
        images, labels = read_arrays(path)
    if len(images) == 0:
        raise DataError(f"{path}: holds no images")
    images = to_nchw(np.asarray(images), channels, height, width)
    raw, note = to_raw_pixels(images)
    labels = None if labels is None else to_labels(labels, len(raw), num_classes)
    data = CleanData(np.ascontiguousarray(raw, dtype=np.float32), labels, str(path), [note] if note else [])
    if max_images is not None and len(data) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(data), max_images, replace=False))
        data = data.subset(keep)
        data.notes.append(f"{max_images} of the images drawn at random (seed {seed})")
    return data
