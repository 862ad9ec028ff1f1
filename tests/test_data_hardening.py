"""Hostile clean-data files, loader by loader: HDF5 that reads other files, declared sizes checked before any
allocation, only the used members and drawn rows read, files that block, links out of the folder, and
malformed arrays and folders refused with one clean DataError that prints no data values."""

from __future__ import annotations

import os
import re
import signal
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cleanse_base.errors import ConfigError, DataError
from cleanse_base.limits import ENV_VAR
from fixtures.hostile.data_files import (
    deflated,
    jpeg_declaring,
    npy_bytes,
    npy_header,
    png_declaring,
    write_zip,
    zero_deflate,
)
from scanner.data import (
    StoredArray,
    check_images_declared,
    class_labels,
    draw_rows,
    load_clean_data,
    to_labels,
    to_raw_pixels,
)

RNG = np.random.default_rng(1)
IMAGES = RNG.integers(0, 256, size=(12, 8, 8), dtype=np.uint8)
LABELS = np.arange(12) % 10
SECRET = b"CLEANSE-SECRET-0123456789abcdef"  # 31 bytes, all in 48..122: they would make labels "span 45..102"


def load(path, **kwargs):
    return load_clean_data(path, channels=1, height=8, width=8, num_classes=10, **kwargs)


@contextmanager
def peak_allocation() -> list[int]:
    """The peak bytes Python and numpy allocated inside the block (numpy reports its buffers to tracemalloc)."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging forever (a FIFO read blocks until a writer comes)."""

    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refusal(path, **kwargs) -> str:
    with pytest.raises(DataError) as raised:
        load(path, **kwargs)
    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message
    return message


# ---- 1. HDF5 that reads other files


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def secret_h5(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.h5"
    with h5py.File(path, "w") as file:
        file["data"] = np.frombuffer(SECRET, dtype=np.uint8)
    return path


def test_h5_external_storage_is_refused_unread(tmp_path, secret):
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file["X_test"] = IMAGES.repeat(3, axis=0)[: len(SECRET)]
        file.create_dataset("Y_test", shape=(len(SECRET),), dtype=np.uint8, external=[(str(secret), 0, len(SECRET))])
    message = refusal(tmp_path / "d.h5").replace(str(tmp_path), "<tmp>")  # the tmp path may hold "45" or "102"
    assert "'Y_test' uses external storage" in message
    assert "45" not in message and "102" not in message and "SECRET" not in message


def test_h5_virtual_dataset_is_refused(tmp_path, secret):
    source = secret_h5(tmp_path)
    layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(len(SECRET),))
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file["X_test"] = IMAGES
        file.create_virtual_dataset("Y_test", layout)
    assert "'Y_test' is a virtual dataset" in refusal(tmp_path / "d.h5")


def test_h5_external_link_is_refused_even_deep_in_a_group(tmp_path, secret):
    source = secret_h5(tmp_path)
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file["X_test"] = IMAGES
        file.create_group("extra/deeper")["y"] = h5py.ExternalLink(str(source), "data")
    assert "'extra/deeper/y' is an external link" in refusal(tmp_path / "d.h5")


def test_h5_soft_links_inside_the_file_are_read(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file["stored/images"] = IMAGES
        file["X_test"] = h5py.SoftLink("/stored/images")
        file["Y_test"] = LABELS
    np.testing.assert_array_equal(load(tmp_path / "d.h5").images[:, 0], IMAGES)


# ---- 2. declared sizes checked before reading; only used members and drawn rows read


def bomb_npz(path: Path, junk_bytes: int) -> None:
    """x and y (valid) and an unused member `junk` that inflates to `junk_bytes` zeros."""
    header = npy_header((junk_bytes,))
    stream, crc = zero_deflate(header, junk_bytes)
    members = [("x.npy", *deflated(npy_bytes(IMAGES))), ("y.npy", *deflated(npy_bytes(LABELS)))]
    write_zip(path, [*members, ("junk.npy", stream, crc, len(header) + junk_bytes)])


def test_an_unused_npz_member_is_never_inflated(tmp_path):
    bomb_npz(tmp_path / "d.npz", 256 << 20)
    assert (tmp_path / "d.npz").stat().st_size < 1 << 20
    with peak_allocation() as peak:
        data = load(tmp_path / "d.npz")
    np.testing.assert_array_equal(data.labels, LABELS)
    assert peak[0] < 16 << 20


def test_a_used_npz_member_declaring_more_than_unpacked_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "unpacked_bytes=1M")
    header = npy_header((100_000, 8, 8))
    stream, crc = zero_deflate(header, 100_000 * 64)
    write_zip(tmp_path / "d.npz", [("x.npy", stream, crc, len(header) + 100_000 * 64)])
    with peak_allocation() as peak:
        message = refusal(tmp_path / "d.npz")
    assert "x: declared unpacked size: 6400128 is over the limit unpacked_bytes=1048576" in message
    assert peak[0] < 1 << 20


def test_an_npy_header_declaring_more_than_its_zip_entry_holds_is_refused(tmp_path):
    payload = npy_header((1_000_000, 8, 8)) + bytes(64)
    write_zip(tmp_path / "d.npz", [("x.npy", *deflated(payload))])
    assert "x: declares 64000000 bytes of data but holds 64" in refusal(tmp_path / "d.npz")


def test_an_npy_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    (tmp_path / "d.npy").write_bytes(npy_header((1 << 40, 8, 8)) + bytes(64))
    with peak_allocation() as peak:
        message = refusal(tmp_path / "d.npy")
    assert "declared size in bytes: 70368744177664 is over the limit data_bytes" in message
    assert peak[0] < 1 << 20


def test_a_truncated_npy_is_refused(tmp_path):
    (tmp_path / "d.npy").write_bytes(npy_header((100, 8, 8)) + bytes(64))
    assert "declares 6400 bytes of data but holds 64" in refusal(tmp_path / "d.npy")


def test_images_over_data_bytes_as_float32_are_refused_before_reading(tmp_path, monkeypatch):
    np.save(tmp_path / "d.npy", IMAGES)  # 768 bytes as uint8, 3072 as float32
    monkeypatch.setenv(ENV_VAR, "data_bytes=1K")
    assert "12 images as float32: 3072 is over the limit data_bytes=1024" in refusal(tmp_path / "d.npy")
    assert len(load(tmp_path / "d.npy", max_images=4)) == 4  # 4 x 64 x 4 bytes: within the limit


def test_an_unwritten_h5_dataset_is_refused_unread(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file.create_dataset("X_test", shape=(1000, 8, 8), dtype=np.uint8)
    assert "X_test: declares 64000 bytes but has no stored data" in refusal(tmp_path / "d.h5")


def test_a_huge_h5_dataset_is_refused_by_its_declaration(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as file:  # one chunk written: the rest reads as fill values
        file.create_dataset("X_test", shape=(20_000_000, 8, 8), dtype=np.uint8, chunks=(64, 8, 8), compression=9)
        file["X_test"][0] = 1
    assert (tmp_path / "d.h5").stat().st_size < 10_000
    with peak_allocation() as peak:
        message = refusal(tmp_path / "d.h5")
    assert "20000000 images as float32: 5120000000 is over the limit data_bytes" in message
    assert peak[0] < 1 << 20


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".h5"])
def test_max_images_reads_the_same_rows_as_a_full_load_then_a_draw(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".npz":
        np.savez(path, x=IMAGES, y=LABELS)
    elif suffix == ".npy":
        np.save(path, IMAGES)
    else:
        with h5py.File(path, "w") as file:
            file["X_test"], file["Y_test"] = IMAGES, np.eye(10)[LABELS]
    rows = draw_rows(12, 5, seed=4)
    drawn = load(path, max_images=5, seed=4)
    np.testing.assert_array_equal(drawn.images[:, 0], IMAGES[rows])
    if suffix != ".npy":
        np.testing.assert_array_equal(drawn.labels, LABELS[rows])
    assert "5 of the images drawn at random (seed 4)" in drawn.notes


def test_draw_rows():
    assert draw_rows(12, None, 0) is None and draw_rows(12, 12, 0) is None
    rows = draw_rows(12, 5, 0)
    assert len(set(rows.tolist())) == 5 and list(rows) == sorted(rows)
    with pytest.raises(ConfigError, match="positive"):
        draw_rows(12, -1, 0)


def image_folder(root: Path, count: int = 12) -> Path:
    folder = root / "images"
    for index in range(count):
        (folder / str(LABELS[index])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(IMAGES[index]).save(folder / str(LABELS[index]) / f"{index:02d}.png")
    return folder


def test_max_images_decodes_only_the_drawn_image_files(tmp_path):
    folder = image_folder(tmp_path)
    listing = sorted(folder.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    rows = draw_rows(len(listing), 4, seed=2)
    broken = next(index for index in range(len(listing)) if index not in rows)
    listing[broken].write_bytes(b"not an image")
    assert "not a readable image" in refusal(folder)
    assert len(load(folder, max_images=4, seed=2)) == 4


def test_a_folder_with_more_image_files_than_the_limit_is_refused(tmp_path, monkeypatch):
    folder = image_folder(tmp_path, count=8)
    monkeypatch.setenv(ENV_VAR, "images=5")
    assert "image files: 6 is over the limit images=5" in refusal(folder)


@pytest.mark.parametrize(
    "name, payload", [("bomb.png", png_declaring(10_000, 10_000)), ("bomb.jpg", jpeg_declaring(9_000, 9_000))]
)
def test_image_bombs_are_refused_by_their_declared_size(tmp_path, name, payload):
    folder = image_folder(tmp_path, count=2)
    (folder / "0" / name).write_bytes(payload)
    with warnings.catch_warnings(), peak_allocation() as peak:
        warnings.simplefilter("error")  # PIL's own bomb warning would be a second stderr line
        message = refusal(folder)
    assert f"{name}: declared pixels x channels" in message and "image_elements" in message
    assert peak[0] < 8 << 20


# ---- 3. entries that block or lead out of the folder


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    folder = image_folder(tmp_path, count=2)
    os.mkfifo(folder / "0" / "x.png")
    with deadline(20):
        assert "x.png: not a regular file" in refusal(folder)


def test_a_fifo_as_the_data_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "d.npz")
    with deadline(20):
        assert "not a regular file" in refusal(tmp_path / "d.npz")


def test_links_out_of_the_folder_are_refused_and_links_inside_are_read(tmp_path, secret):
    folder = image_folder(tmp_path, count=2)
    (folder / "1" / "again.png").symlink_to(folder / "0" / "00.png")
    assert len(load(folder)) == 3
    (folder / "0" / "x.png").symlink_to(secret)
    assert "x.png: a symbolic link to outside the data folder" in refusal(folder)


def test_a_class_folder_linked_from_outside_is_refused(tmp_path):
    elsewhere = image_folder(tmp_path / "elsewhere", count=2)
    folder = image_folder(tmp_path, count=2)
    (folder / "5").symlink_to(elsewhere / "0", target_is_directory=True)
    assert "5: a symbolic link to outside the data folder" in refusal(folder)


def test_postscript_named_png_is_not_handed_to_ghostscript(tmp_path):
    folder = image_folder(tmp_path, count=2)
    eps = folder / "0" / "x.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with Image.open(eps) as image:
        assert image.format == "EPS"  # what PIL makes of it when not told which formats to accept
    assert "x.png: not a readable image (UnidentifiedImageError)" in refusal(folder)


# ---- 4./5. malformed arrays and folders: one clean line, no data values


@pytest.mark.parametrize(
    "labels, message",
    [
        (LABELS.astype(str), "dtype <U21"),
        (LABELS + 1j, "dtype complex128"),
        (LABELS + 0.5, "not whole numbers"),
        (np.where(LABELS == 3, np.nan, LABELS), "not whole numbers"),
        (np.where(LABELS == 3, np.inf, LABELS), "not whole numbers"),
        (np.full(12, 1e30), "12 of 12 labels are outside 0..9"),
        (LABELS - 1, "2 of 12 labels are outside 0..9"),
        (LABELS.astype(np.uint64) + np.uint64(1 << 63), "12 of 12 labels are outside 0..9"),
        (LABELS.reshape(-1, 1, 1), "shape [12, 1, 1]"),
    ],
)
def test_bad_labels_are_refused_without_their_values(labels, message):
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        to_labels(labels, 12, 10)
    assert "1e+30" not in str(raised.value) and "-1" not in str(raised.value)


def test_labels_out_of_range_name_no_value():
    with pytest.raises(DataError) as raised:
        to_labels(np.frombuffer(SECRET[:12], dtype=np.uint8), 12, 10)
    assert str(raised.value) == "12 of 12 labels are outside 0..9: the model has 10 classes"


def test_good_labels_in_every_accepted_form():
    expected = LABELS.tolist()
    assert to_labels(LABELS.astype(np.float32), 12, 10).tolist() == expected
    assert to_labels(np.eye(10, dtype=bool)[LABELS], 12, 10).tolist() == expected
    assert to_labels(LABELS.reshape(-1, 1).astype(np.uint8), 12, 10).tolist() == expected
    assert to_labels(LABELS, 12, 10).dtype == np.int64


def test_image_values_are_checked_without_printing_them():
    with pytest.raises(DataError, match="NaN or infinite"):
        to_raw_pixels(np.array([[0.5, np.nan]], dtype=np.float32))
    with pytest.raises(DataError) as raised:
        to_raw_pixels(np.array([[0.0, 765.0]]))
    assert "765" not in str(raised.value) and "outside 0-255" in str(raised.value)
    raw, note = to_raw_pixels(np.array([[0.0, 0.5, 1.0]]))
    assert raw.tolist() == [[0.0, 127.5, 255.0]] and raw.flags.c_contiguous and "x255" in note


def never_read(rows):
    raise AssertionError("the declaration alone must decide")


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((), np.uint8, "holds a scalar"),
        ((640,), np.uint8, "images have shape [640]"),
        ((2, 8, 8, 1, 1), np.uint8, "images have shape [2, 8, 8, 1, 1]"),
        ((0, 8, 8), np.uint8, "holds no images"),
        ((2, 8, 8), np.complex64, "dtype complex64"),
        ((2, 8, 8), np.dtype("<U3"), "dtype <U3"),
        ((2, 8, 9), np.uint8, "do not fit"),
    ],
)
def test_image_declarations_are_checked_unread(shape, dtype, message):
    with pytest.raises(DataError) as raised:
        check_images_declared(StoredArray("d.npz: x", shape, np.dtype(dtype), never_read), 1, 8, 8)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.uint8(7)}, "holds a scalar"),
        ({"x": IMAGES, "y": np.int64(3)}, "labels are a scalar"),
        ({"x": IMAGES, "y": LABELS[:5]}, "5 labels for 12 images"),
        ({"x": IMAGES, "y": LABELS + 1j}, "dtype complex128"),
        ({"pictures": IMAGES}, "no image array (looked for x"),
    ],
)
def test_bad_npz_files_are_refused_with_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    assert message in refusal(tmp_path / "d.npz")


def test_pickled_object_labels_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    labels = np.empty(12, dtype=object)
    labels[:] = [Touch()] * 12
    np.savez(tmp_path / "d.npz", x=IMAGES, y=labels, allow_pickle=True)
    assert "y: holds Python objects (dtype object)" in refusal(tmp_path / "d.npz")
    assert not marker.exists()


@pytest.mark.parametrize(
    "names, expected",
    [
        (["0", "1", "10", "2"], [0, 1, 10, 2]),
        (["cat", "dog"], [0, 1]),
        (["\u00b2"], [0]),  # one non-number name: labelled by position
    ],
)
def test_class_labels(names, expected):
    assert class_labels(names, 11) == expected


@pytest.mark.parametrize(
    "names, message",
    [
        (["0", "\u00b2"], "class folder '\u00b2' is not a number while others are"),
        (["0", "9" * 20], f"class folder '{'9' * 20}' is not a class of the model (0..9)"),
        (["0", "12"], "class folder '12' is not a class of the model"),
        (["0", "\u0661"], "is not a number while others are"),  # Arabic-Indic one: isdecimal, not ASCII
    ],
)
def test_bad_class_folder_names(names, message):
    with pytest.raises(DataError) as raised:
        class_labels(names, 10)
    assert message in str(raised.value)


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no class subfolders" in refusal(tmp_path / "empty")
    (tmp_path / "empty" / "0").mkdir()
    (tmp_path / "empty" / "0" / "notes.txt").write_text("no images here")
    assert "no image files" in refusal(tmp_path / "empty")
    folder = image_folder(tmp_path, count=2)
    (folder / "0" / "\x1b[31mred.png").write_bytes(b"\x89PNG but not")
    assert "?[31mred.png: not a readable image" in refusal(folder)


def test_terminal_escapes_in_the_data_path_are_not_printed(tmp_path):
    assert "?]0;owned?missing.npz: no such file" in refusal(tmp_path / "\x1b]0;owned\x07missing.npz")
