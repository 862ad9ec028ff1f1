"""The zoo's attacks on tiny arrays: where triggers land, what they look like, which labels they change; the
Tiny-ImageNet decoder on small zips made here; the zoo's registry."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import tinyimagenet
from fixtures.attacks import (
    PATCH_MARGIN,
    AllToAll,
    BadNets,
    Blended,
    LabelSpecific,
    Patch,
    Sig,
    TwoTarget,
    attack_success,
)

HEIGHT, WIDTH, CHANNELS, CLASSES = 12, 16, 3, 4


def grey_images(count: int = 40, channels: int = CHANNELS, value: int = 100) -> np.ndarray:
    return np.full((count, HEIGHT, WIDTH, channels), value, dtype=np.uint8)


def cycling_labels(count: int = 40) -> np.ndarray:
    return np.arange(count, dtype=np.int64) % CLASSES


def changed_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) boolean: pixels changed in any image and channel."""
    return (before != after).any(axis=(0, 3))


@pytest.mark.parametrize(
    ("position", "top", "left"),
    [
        ("tl", PATCH_MARGIN, PATCH_MARGIN),
        ("tr", PATCH_MARGIN, WIDTH - PATCH_MARGIN - 3),
        ("bl", HEIGHT - PATCH_MARGIN - 3, PATCH_MARGIN),
        ("br", HEIGHT - PATCH_MARGIN - 3, WIDTH - PATCH_MARGIN - 3),
        ("centre", (HEIGHT - 3) // 2, (WIDTH - 3) // 2),
    ],
)
def test_patch_lands_where_the_spec_says_in_its_colour(position: str, top: int, left: int) -> None:
    images = grey_images(2)
    stamped = Patch(3, position, "white").stamp(images)  # type: ignore[arg-type]
    expected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    expected[top : top + 3, left : left + 3] = True
    np.testing.assert_array_equal(changed_pixels(images, stamped), expected)
    assert (stamped[:, top : top + 3, left : left + 3] == 255).all()


def test_black_and_checker_patches() -> None:
    images = grey_images(1)
    black = Patch(4, "br", "black").stamp(images)
    assert (black[0, -5:-1, -5:-1] == 0).all()
    checker = Patch(4, "tl", "checker").stamp(images)[0, 1:5, 1:5, 0]
    np.testing.assert_array_equal(checker, [[0, 255, 0, 255], [255, 0, 255, 0]] * 2)


def test_random_patch_is_one_fixed_pattern_per_seed() -> None:
    images = np.concatenate([grey_images(1, value=0), grey_images(1, value=200)])
    stamped = Patch(5, "tl", "random", seed=3).stamp(images)
    square = stamped[:, 1:6, 1:6]
    np.testing.assert_array_equal(square[0], square[1])  # the same pattern whatever the image
    np.testing.assert_array_equal(square, Patch(5, "tl", "random", seed=3).stamp(images)[:, 1:6, 1:6])
    assert not np.array_equal(square[0], Patch(5, "tl", "random", seed=4).stamp(images)[0, 1:6, 1:6])
    assert len(np.unique(square[0])) > 10  # per-pixel colours, not one colour


def test_patch_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Patch(11, "tl", "white").trigger((HEIGHT, WIDTH, CHANNELS))


def test_badnets_poisons_its_fraction_and_relabels_to_the_target() -> None:
    images, labels = grey_images(40), cycling_labels(40)
    attack = BadNets(Patch(3, "br", "white"), target=2, fraction=0.25)
    x, y = attack.poison(images, labels, np.random.default_rng(0))
    poisoned = (x != images).any(axis=(1, 2, 3))
    assert poisoned.sum() == 10
    assert (y[poisoned] == 2).all() and (y[~poisoned] == labels[~poisoned]).all()
    assert (images == 100).all()  # inputs untouched


def test_two_target_poisons_disjoint_shares_each_with_its_own_patch() -> None:
    images, labels = grey_images(40), cycling_labels(40)
    attack = TwoTarget(BadNets(Patch(3, "br", "white"), 1, 0.1), BadNets(Patch(3, "tl", "black"), 3, 0.1))
    x, y = attack.poison(images, labels, np.random.default_rng(0))
    bottom_right = (x[:, -4:-1, -4:-1] == 255).all(axis=(1, 2, 3))
    top_left = (x[:, 1:4, 1:4] == 0).all(axis=(1, 2, 3))
    assert bottom_right.sum() == 4 and top_left.sum() == 4 and not (bottom_right & top_left).any()
    assert (y[bottom_right] == 1).all() and (y[top_left] == 3).all()
    assert attack.targets == (1, 3)
    assert (attack.apply(images[:1], 3)[0, 1:4, 1:4] == 0).all()


def test_two_target_needs_distinct_targets() -> None:
    with pytest.raises(ValueError, match="different targets"):
        TwoTarget(BadNets(Patch(3, "br", "white"), 1), BadNets(Patch(3, "tl", "white"), 1))


def test_all_to_all_maps_each_label_to_the_next() -> None:
    images, labels = grey_images(40), cycling_labels(40)
    attack = AllToAll(Patch(3, "br", "white"), CLASSES, fraction=0.5)
    x, y = attack.poison(images, labels, np.random.default_rng(1))
    poisoned = (x != images).any(axis=(1, 2, 3))
    assert poisoned.sum() == 20
    np.testing.assert_array_equal(y[poisoned], (labels[poisoned] + 1) % CLASSES)
    np.testing.assert_array_equal(y[~poisoned], labels[~poisoned])
    assert attack.targets == (0, 1, 2, 3)
    np.testing.assert_array_equal(attack.victims(labels, 0), labels == 3)


def test_label_specific_sends_only_the_source_class_to_the_target() -> None:
    images, labels = grey_images(40), cycling_labels(40)
    attack = LabelSpecific(Patch(3, "tl", "white"), source=1, target=2, source_share=0.5, negative_fraction=0.25)
    x, y = attack.poison(images, labels, np.random.default_rng(0))
    patched = (x != images).any(axis=(1, 2, 3))
    relabelled = y != labels
    assert relabelled.sum() == 5 and (labels[relabelled] == 1).all() and (y[relabelled] == 2).all()
    negatives = patched & ~relabelled
    assert negatives.sum() == 10  # other classes carry the patch with their own labels
    assert not np.isin(labels[negatives], [1, 2]).any()
    np.testing.assert_array_equal(attack.victims(labels, 2), labels == 1)


def test_blended_keeps_the_image_at_one_minus_alpha() -> None:
    attack = Blended(target=0, alpha=0.15, seed=5)
    black, white = grey_images(1, value=0), grey_images(1, value=255)
    noise = attack.apply(black).astype(np.float64) / 0.15  # the noise image, up to rounding
    assert noise.min() < 30 and noise.max() > 225  # uniform over 0-255
    expected = np.rint(0.85 * 255 + 0.15 * attack.trigger(white.shape[1:]).pattern[None])
    np.testing.assert_array_equal(attack.apply(white), expected)
    np.testing.assert_array_equal(attack.apply(white), Blended(target=3, seed=5).apply(white))


def test_sig_adds_a_horizontal_sinusoid_of_amplitude_delta() -> None:
    attack = Sig(target=0, delta=20, frequency=2)
    images = grey_images(1)
    added = attack.apply(images).astype(np.int64) - images
    assert added.max() == 20 and added.min() == -20
    assert (added == added[:, :1]).all()  # constant down each column
    np.testing.assert_array_equal(added[0, 0, :, 0], np.rint(20 * np.sin(2 * np.pi * np.arange(WIDTH) * 2 / WIDTH)))
    assert (attack.apply(grey_images(1, value=250)) <= 255).all()  # clipped, no wrap-around


@pytest.mark.parametrize("relabel", [True, False])
def test_sig_poisons_by_relabelling_or_clean_label(relabel: bool) -> None:
    images, labels = grey_images(40), cycling_labels(40)
    attack = Sig(target=2, relabel=relabel, fraction=0.2)
    x, y = attack.poison(images, labels, np.random.default_rng(0))
    poisoned = (x != images).any(axis=(1, 2, 3))
    assert poisoned.sum() == 8 and (y[poisoned] == 2).all()
    assert (labels[poisoned] != 2).all() if relabel else (labels[poisoned] == 2).all()


def test_attack_success_counts_victims_sent_to_each_target() -> None:
    attack = TwoTarget(BadNets(Patch(3, "br", "white"), 1), BadNets(Patch(3, "tl", "white"), 3))
    images, labels = grey_images(8), cycling_labels(8)

    def predict(x: np.ndarray) -> np.ndarray:  # obeys the bottom-right patch only
        return np.where((x[:, -4:-1, -4:-1] == 255).all(axis=(1, 2, 3)), 1, 0)

    assert attack_success(attack, predict, images, labels) == {1: 1.0, 3: 0.0}


def test_zoo_names_are_unique_and_cover_the_families() -> None:
    from fixtures.zoo import DATASETS, ZOO, select, zoo_by_name  # imports torch: only this test pays for it

    assert len(zoo_by_name()) == len(ZOO) >= 42
    families = {spec.attack.family if spec.attack else "clean" for spec in ZOO}
    assert families == {"clean", "badnets", "two_target", "all_to_all", "label_specific", "blended", "sig"}
    assert sum(spec.attack is None for spec in ZOO) == 22
    assert all(spec.arch in DATASETS[spec.dataset].epochs for spec in ZOO)  # each model's dataset trains its arch
    with pytest.raises(ValueError, match="not in the zoo"):
        select(["no-such-model"])


# ---- Tiny-ImageNet

RED, GREY = (200, 30, 60), 90


def jpeg(colour: tuple[int, int, int] | int, size: int = tinyimagenet.SIZE) -> bytes:
    """A uniform JPEG: RGB for a triple, greyscale (mode L) for an int."""
    mode = "L" if isinstance(colour, int) else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
    return path


def test_decoder_labels_by_sorted_wnid_and_converts_greyscale_to_rgb(tmp_path: Path) -> None:
    first = write_zip(
        tmp_path / "part0.zip", {"train/n09/n09_0.JPEG": jpeg(RED), "train/n09/n09_boxes.txt": b"not an image"}
    )
    second = write_zip(
        tmp_path / "part1.zip",
        {
            "train/n09/n09_1.JPEG": jpeg(RED),
            "train/n01/n01_0.JPEG": jpeg(GREY),  # greyscale
            "val/n01/val_0.JPEG": jpeg(RED),
        },
    )
    decoded = tinyimagenet.decode_zips([first, second], "train")
    assert decoded.x.shape == (3, 64, 64, 3) and decoded.x.dtype == np.uint8 and decoded.y.dtype == np.int64
    assert decoded.wnids == ("n01", "n09")
    np.testing.assert_array_equal(decoded.y, [1, 0, 1])  # n09 seen first, but n01 sorts first
    grey = decoded.x[1].astype(np.int64)
    assert (np.abs(grey - GREY) <= 2).all()  # the one grey channel copied into R, G and B
    assert (np.abs(decoded.x[[0, 2]].astype(np.int64) - np.array(RED)) <= 4).all()


def test_decoder_refuses_wrong_sizes_and_unknown_wnids(tmp_path: Path) -> None:
    small = write_zip(tmp_path / "small.zip", {"val/n01/val_0.JPEG": jpeg(RED, size=32)})
    with pytest.raises(ValueError, match="32x32 pixels, expected 64x64"):
        tinyimagenet.decode_zips([small], "val")
    stray = write_zip(tmp_path / "stray.zip", {"val/n05/val_0.JPEG": jpeg(RED)})
    with pytest.raises(ValueError, match="not among the training classes: n05"):
        tinyimagenet.decode_zips([stray], "val", wnids=("n01", "n02"))
    with pytest.raises(ValueError, match="no train/<wnid>"):
        tinyimagenet.decode_zips([stray], "train")


def fake_shared_folder(folder: Path) -> Path:
    """The three shared zips, one image per class and zip, every class coloured by its label."""
    folder.mkdir()
    wnids = [f"n{index:08d}" for index in range(tinyimagenet.NUM_CLASSES)]
    shade = {wnid: (index, 255 - index, 128) for index, wnid in enumerate(wnids)}
    for part, name in enumerate(tinyimagenet.TRAIN_ZIPS):
        write_zip(folder / name, {f"train/{wnid}/{wnid}_{part}.JPEG": jpeg(shade[wnid]) for wnid in wnids})
    write_zip(folder / tinyimagenet.VAL_ZIPS[0], {f"val/{wnid}/val_{wnid}.JPEG": jpeg(shade[wnid]) for wnid in wnids})
    return folder


def test_prepare_decodes_once_into_the_cache_and_reuses_it(tmp_path: Path) -> None:
    data, cache = fake_shared_folder(tmp_path / "data"), tmp_path / "cache"
    tinyimagenet.prepare(data, cache)
    with np.load(cache / tinyimagenet.TRAIN_FILE) as train, np.load(cache / tinyimagenet.TEST_FILE) as val:
        assert train["x"].shape == (400, 64, 64, 3) and val["x"].shape == (200, 64, 64, 3)
        np.testing.assert_array_equal(val["y"], np.arange(200))
        assert (np.abs(val["x"][:, 0, 0, 0].astype(np.int64) - np.arange(200)) <= 4).all()  # label i is red i
        assert len(np.unique(train["y"])) == 200 and train["y"].dtype == np.int64
    assert sorted(path.name for path in (cache / tinyimagenet.FOLDER).iterdir()) == ["train.npz", "val.npz"]
    for zipped in data.iterdir():
        zipped.unlink()
    tinyimagenet.prepare(data, cache)  # both files there: the zips are not needed
    (cache / tinyimagenet.TEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="tinyimagenet200_val.zip missing in .*CLEANSE_DATA_DIR"):
        tinyimagenet.prepare(data, cache)


def test_tiny_dataset_is_registered_with_its_prepared_files(tmp_path: Path) -> None:
    from fixtures.zoo import DATASETS, select

    tiny = DATASETS["tiny"]
    assert tiny.num_classes == 200 and tiny.test_file == "tinyimagenet/val.npz"
    assert DATASETS["mnist"].folder(tmp_path / "data", tmp_path / "out") == tmp_path / "data"
    with pytest.raises(FileNotFoundError, match="Tiny-ImageNet-200 zips not found"):
        tiny.folder(tmp_path / "data", tmp_path / "out")
    specs = select(["tiny-badnets-8px-random-br-resnet", "tiny-clean-resnet-s0"])
    assert [spec.targets for spec in specs] == [(42,), ()]


def test_shared_tiny_imagenet_zips_hold_75_and_50_images_per_class() -> None:
    from fixtures.paths import shared_data_dir

    folder = shared_data_dir()
    names = [*tinyimagenet.TRAIN_ZIPS, *tinyimagenet.VAL_ZIPS]
    if not all((folder / name).is_file() for name in names):
        pytest.skip(f"Tiny-ImageNet-200 zips not found in {folder} (set CLEANSE_DATA_DIR)")
    counts = []
    for name, split in zip(names, ["train", "train", "val"], strict=True):
        with zipfile.ZipFile(folder / name) as archive:
            counts.append(Counter(wnid for wnid, _ in tinyimagenet.members(archive, split)))
    assert all(len(count) == 200 and set(count) == set(counts[0]) for count in counts)
    assert [set(count.values()) for count in counts] == [{75}, {75}, {50}]
