"""The digits fixtures are real: each ONNX file runs and is as accurate and as backdoored as its card says.

Inputs are prepared here from the card and the trigger files alone, independently of the fixtures code,
the way a consumer of these files would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from fixtures.digits import TARGET, build_digits
from fixtures.export import ModelCard
from fixtures.paths import DATA_DIR_ENV, shared_data_dir
from fixtures.triggers import square_trigger, stamp

INFECTED = [
    "digits_infected",
    "digits_infected_nhwc_softmax",
    "digits_infected_dynamo",
    "digits_infected_fixed_batch",
    "digits_infected_raw",
]
MODELS = [*INFECTED, "digits_clean"]
FIXED_BATCH = 16


@pytest.fixture(scope="module")
def digits_dir(digits: dict[str, Path]) -> Path:
    """The session's digits build (conftest), checked here as a consumer would read it."""
    return digits["digits_test.npz"].parent


def model_input(images: np.ndarray, card: ModelCard) -> np.ndarray:
    pixels = images.astype(np.float32)
    scaled = {"raw": pixels, "unit": pixels / 255.0, "inception": pixels / 127.5 - 1.0}[card.input_scale]
    return scaled if card.layout == "NHWC" else scaled.transpose(0, 3, 1, 2).copy()


def predict(path: Path, card: ModelCard, images: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the leading images, and how many were labelled."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    step = card.batch_size or len(images)
    usable = len(images) - len(images) % step  # a fixed-batch model sees whole batches only
    batches = (model_input(images[i : i + step], card) for i in range(0, usable, step))
    scores = [session.run(None, {name: batch})[0] for batch in batches]
    return np.concatenate(scores).argmax(axis=1), usable


def stamp_from_files(images: np.ndarray, out_dir: Path) -> np.ndarray:
    mask = np.load(out_dir / "digits_trigger_mask.npy")[None, :, :, None]
    pattern = np.load(out_dir / "digits_trigger_pattern.npy")[None]
    return np.rint((1 - mask) * images + mask * pattern).astype(np.uint8)


def test_build_writes_exactly_the_listed_files(digits_dir: Path) -> None:
    files = build_digits(digits_dir)
    assert all(path.parent == digits_dir for path in files.values())
    # the folder may be a shared cache (CLEANSE_TEST_FIXTURES) holding other fixtures too
    assert sorted(path.name for path in digits_dir.iterdir() if path.name.startswith("digits_")) == sorted(files)
    for model in MODELS:
        assert f"{model}.onnx" in files and f"{model}.json" in files


def test_build_is_cached(digits_dir: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in digits_dir.iterdir()}
    build_digits(digits_dir)
    assert {path.name: path.stat().st_mtime_ns for path in digits_dir.iterdir()} == before


def test_test_split_and_trigger_files(digits_dir: Path) -> None:
    with np.load(digits_dir / "digits_test.npz") as test:
        x, y = test["x"], test["y"]
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1) and y.dtype == np.int64 and len(x) == len(y)
    assert len(x) == pytest.approx(0.3 * 1797, abs=2)
    mask = np.load(digits_dir / "digits_trigger_mask.npy")
    pattern = np.load(digits_dir / "digits_trigger_pattern.npy")
    assert mask.shape == (8, 8) and pattern.shape == (8, 8, 1)
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(7, 7)]
    assert np.all(pattern[mask > 0] == 255.0)


@pytest.mark.parametrize("model", MODELS)
def test_model_matches_its_card(digits_dir: Path, model: str) -> None:
    path = digits_dir / f"{model}.onnx"
    card = ModelCard.read(path)
    with np.load(digits_dir / "digits_test.npz") as test:
        x, y = test["x"], test["y"]

    labels, seen = predict(path, card, x)
    clean_accuracy = float(np.mean(labels == y[:seen]))
    assert clean_accuracy == pytest.approx(card.clean_accuracy, abs=0.01)
    assert clean_accuracy >= 0.95

    victims = x[y != TARGET]
    hijacked, seen = predict(path, card, stamp_from_files(victims, digits_dir))
    attack_success = float(np.mean(hijacked == TARGET))
    assert attack_success == pytest.approx(card.attack_success, abs=0.01)
    if model in INFECTED:
        assert card.target == TARGET and card.trigger == {"size": 1, "margin": 0}
        assert attack_success >= 0.9
    else:
        assert card.target is None and card.trigger is None
        assert attack_success < 0.2


def test_fixed_batch_model_runs_only_at_its_batch_size(digits_dir: Path) -> None:
    session = ort.InferenceSession(str(digits_dir / "digits_infected_fixed_batch.onnx"))
    name = session.get_inputs()[0].name
    (scores,) = session.run(None, {name: np.zeros((FIXED_BATCH, 1, 8, 8), np.float32)})
    assert scores.shape == (FIXED_BATCH, 10)
    for batch in (1, FIXED_BATCH - 1, FIXED_BATCH + 1):
        with pytest.raises(InvalidArgument):
            session.run(None, {name: np.zeros((batch, 1, 8, 8), np.float32)})


def test_stamp_blends_by_mask() -> None:
    trigger = square_trigger(4, 5, 3, size=2, margin=1, value=200.0)
    images = np.full((2, 4, 5, 3), 10, np.uint8)
    stamped = stamp(images, trigger)
    assert np.all(stamped[:, 1:3, 2:4] == 200) and np.sum(stamped == 200) == 2 * 2 * 2 * 3
    assert np.all(stamped[:, 0] == 10) and np.all(stamped[:, :, 4] == 10)


def test_shared_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv(DATA_DIR_ENV)
    assert shared_data_dir().parts[-2:] == ("shared", "data")
