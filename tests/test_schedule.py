"""The label scheduler: its pure pieces, and screened against full on a real (tiny) model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleanse_base.errors import ConfigError
from scanner.config import ReverseConfig
from scanner.mad import mad_outliers
from scanner.reverse import LabelRun, TriggerReverser
from scanner.schedule import (
    LabelScheduler,
    ScheduleConfig,
    contested_labels,
    evenly_ranked,
    nearest_median,
    scenarios,
    shrink_ratios,
)


def finished_run(label: int, best_norms: list[float]) -> LabelRun:
    run = LabelRun(label, np.random.default_rng(0), finished=True, best_norms=best_norms)
    run.schedule.best_norm = best_norms[-1]
    return run


def test_shrink_ratio_is_final_over_best_at_that_step():
    runs = [finished_run(0, [math.inf, 20.0, 10.0, 8.0]), finished_run(1, [40.0, 30.0])]
    assert shrink_ratios(runs, 2).tolist() == [pytest.approx(0.4), 1.0]  # run 1 had finished by step 2
    assert shrink_ratios(runs, 1).tolist() == [pytest.approx(30.0 / 40.0)]  # run 0 had no trigger yet


def test_evenly_ranked_spreads_over_the_ranking():
    assert evenly_ranked(list(range(10)), 2) == [2, 7]
    assert evenly_ranked([5, 6], 4) == [5, 6]


def test_scenarios_put_the_point_projection_first_and_keep_final_norms():
    final = {0: 1.0}
    bounds = {1: 10.0, 2: 20.0}
    ratios = {1: np.array([0.5, 0.9]), 2: np.array([0.8])}
    point, *drawn = scenarios(final, bounds, ratios, draws=5, seed=0)
    assert point == {0: 1.0, 1: pytest.approx(7.0), 2: pytest.approx(16.0)}
    assert len(drawn) == 5 and all(norms[0] == 1.0 and norms[2] == pytest.approx(16.0) for norms in drawn)
    assert len(drawn) == 5 and all(norms[1] in (pytest.approx(5.0), pytest.approx(9.0)) for norms in drawn)


def test_contested_labels_are_flagged_in_some_scenarios_only():
    def decide(norms):
        return frozenset(label for label, norm in norms.items() if norm < 3)

    contested, everywhere = contested_labels(decide, [{0: 1, 1: 2, 2: 9}, {0: 1, 1: 4, 2: 9}])
    assert contested == {1} and everywhere == {0}


def test_nearest_median():
    assert nearest_median({0: 1.0, 1: 5.0, 2: 6.0, 3: 20.0}, [0, 3, 2], 1) == [2]


def test_schedule_config_is_validated():
    with pytest.raises(ConfigError):
        ScheduleConfig(mode="fast").validate()
    with pytest.raises(ConfigError):
        ScheduleConfig(screen_steps=0).validate()


class PlantedLinear(torch.nn.Module):
    """A linear classifier on 6x6 grey images with a backdoor: a bright top-left pixel sends images to label 3."""

    def __init__(self, classes: int = 20):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(classes, 36, generator=generator) * 0.02
        self.weight[3, 0] = 0.3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(images.flatten(1) @ self.weight.T / 4, dim=1)


@pytest.mark.slow
def test_screened_flags_what_full_flags_with_fewer_images():
    images = np.random.default_rng(0).uniform(0, 255, (64, 1, 6, 6)).astype(np.float32)
    config = ReverseConfig(mini_batch=16, images_per_step=64, max_steps=60, patience=2, early_stop_patience=6)
    model = PlantedLinear()

    def decide(norms):
        return frozenset(mad_outliers(norms).flagged)

    outcomes = {}
    for mode in ("full", "screened"):
        session = TriggerReverser(model, config, torch.device("cpu"), seed=0).session(images, 20)
        schedule = ScheduleConfig(mode=mode, screen_steps=8, calibration_labels=4)
        runs, summary = LabelScheduler(session, schedule, decide).run(list(range(20)))
        outcomes[mode] = (decide(summary.estimates()), summary)
    (full_flags, full), (screened_flags, screened) = outcomes["full"], outcomes["screened"]
    assert 3 in full_flags
    assert screened_flags == full_flags
    assert all(item.final for item in screened.labels if item.label in screened_flags)
    assert screened.images < full.images
    assert all(item.final for item in full.labels)
