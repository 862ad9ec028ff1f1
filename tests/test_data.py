"""Clean data formats, layouts and value ranges, and the input scalings applied after the trigger stamp."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cleanse_base.errors import ConfigError, DataError
from scanner.data import load_clean_data
from scanner.preprocess import candidate_scalings, make_scaling

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(12, 6, 5, 3), dtype=np.uint8)  # NHWC
LABELS = np.arange(12) % 4


def load(path, **kwargs):
    return load_clean_data(path, channels=3, height=6, width=5, num_classes=4, **kwargs)


def assert_images(data):
    assert data.images.dtype == np.float32 and data.images.shape == (12, 3, 6, 5)
    np.testing.assert_array_equal(data.images, IMAGES.transpose(0, 3, 1, 2).astype(np.float32))


def test_npz_with_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=IMAGES, y=LABELS)
    data = load(tmp_path / "d.npz")
    assert_images(data)
    np.testing.assert_array_equal(data.labels, LABELS)


def test_npy_nchw_without_labels(tmp_path):
    np.save(tmp_path / "d.npy", IMAGES.transpose(0, 3, 1, 2))
    data = load(tmp_path / "d.npy")
    assert_images(data)
    assert data.labels is None


def test_h5_like_the_reference_with_one_hot_labels(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as file:
        file["X_test"] = IMAGES
        file["Y_test"] = np.eye(4)[LABELS]
    data = load(tmp_path / "d.h5")
    assert_images(data)
    np.testing.assert_array_equal(data.labels, LABELS)


def test_folder_of_class_subfolders(tmp_path):
    for index, (image, label) in enumerate(zip(IMAGES, LABELS, strict=True)):
        folder = tmp_path / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    (tmp_path / "images" / "0" / "notes.txt").write_text("not an image")
    data = load(tmp_path / "images")
    order = np.argsort(LABELS, kind="stable")
    np.testing.assert_array_equal(data.labels, LABELS[order])
    np.testing.assert_array_equal(data.images, IMAGES[order].transpose(0, 3, 1, 2).astype(np.float32))


def test_folder_images_are_resized_and_converted(tmp_path):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, size=(20, 30), dtype=np.uint8)).save(folder / "a.png")
    data = load(tmp_path / "images")
    assert data.images.shape == (1, 3, 6, 5) and data.labels.tolist() == [0]


def test_float_images_in_unit_range_become_raw_pixels(tmp_path):
    np.savez(tmp_path / "d.npz", x=IMAGES.astype(np.float32) / 255)
    data = load(tmp_path / "d.npz")
    np.testing.assert_allclose(data.images, IMAGES.transpose(0, 3, 1, 2), atol=1e-3)
    assert "x255" in data.notes[0]


def test_grey_images_fit_an_rgb_model(tmp_path):
    np.save(tmp_path / "d.npy", IMAGES[..., 0])
    data = load(tmp_path / "d.npy")
    assert data.images.shape == (12, 3, 6, 5)
    assert np.all(data.images[:, 0] == data.images[:, 2])


def test_max_images_draws_a_seeded_subset(tmp_path):
    np.savez(tmp_path / "d.npz", x=IMAGES, y=LABELS)
    first, second = load(tmp_path / "d.npz", max_images=5, seed=3), load(tmp_path / "d.npz", max_images=5, seed=3)
    assert len(first) == 5
    np.testing.assert_array_equal(first.images, second.images)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": IMAGES[:, :4]}, "do not fit"),
        ({"x": IMAGES.astype(np.float32) - 128}, "raw images"),
        ({"x": IMAGES, "y": LABELS + 4}, "the model has 4 classes"),
        ({"x": IMAGES, "y": LABELS[:5]}, "5 labels for 12 images"),
        ({"pictures": IMAGES}, "no image array"),
    ],
)
def test_bad_data_is_refused_with_a_reason(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load(tmp_path / "d.npz")


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="unknown data format"):
        load(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "missing.npz")


def test_scalings_map_raw_pixels_as_documented():
    raw = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1).expand(1, 3, 1, 1)
    assert make_scaling("raw", 3).apply(raw).flatten().tolist() == [0.0, 127.5, 255.0]
    assert make_scaling("unit", 3).apply(raw).flatten().tolist() == [0.0, 0.5, 1.0]
    assert make_scaling("inception", 3).apply(raw).flatten().tolist() == [-1.0, 0.0, 1.0]
    caffe = make_scaling("imagenet-caffe", 3).apply(raw).flatten()  # BGR order, means subtracted
    torch.testing.assert_close(caffe, torch.tensor([255 - 103.939, 127.5 - 116.779, 0 - 123.68]))
    imagenet = make_scaling("imagenet-torch", 3).apply(raw).flatten()
    torch.testing.assert_close(imagenet, torch.tensor([-0.485 / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    custom = make_scaling("custom", 3, mean=(0.5,), std=(0.25,)).apply(raw).flatten()
    torch.testing.assert_close(custom, torch.tensor([-2.0, 0.0, 2.0]))


def test_scaling_errors_and_candidates():
    with pytest.raises(ConfigError, match="needs --mean and --std"):
        make_scaling("custom", 3)
    with pytest.raises(ConfigError, match="3-channel"):
        make_scaling("imagenet-torch", 1)
    assert [s.name for s in candidate_scalings(1)] == ["unit", "raw", "inception"]
    assert len(candidate_scalings(3)) == 5
