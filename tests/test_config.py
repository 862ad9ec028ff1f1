"""Scan settings to ScanConfig: presets pick their numbers however the config is built, every bad value is one
ConfigError naming it, and the flags of every command map onto the same dataclasses."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cleanse_base.errors import ConfigError
from cleanse_base.limits import Limits
from scanner.cli import main, mitigation_config, scan_settings
from scanner.config import (
    PRESETS,
    AdditiveConfig,
    ScanConfig,
    ScheduleConfig,
    check_label_range,
    make_config,
    make_limits,
    settings_to_config,
    split_limits,
)
from scanner.mitigate.config import MitigationConfig


def test_a_preset_name_picks_its_numbers_however_the_config_is_built():
    assert PRESETS["paper"] != PRESETS["default"]
    assert ScanConfig(preset="paper").reverse == PRESETS["paper"]
    assert ScanConfig().reverse == PRESETS["default"]
    assert make_config({"preset": "paper"}).reverse == PRESETS["paper"]
    tuned = make_config({"preset": "paper", "reverse": {"max_steps": 7}})
    assert tuned.reverse == dataclasses.replace(PRESETS["paper"], max_steps=7)
    given = dataclasses.replace(PRESETS["paper"], max_steps=3)
    assert ScanConfig(reverse=given).reverse.max_steps == 3  # an explicit ReverseConfig wins over the preset
    assert dataclasses.replace(ScanConfig(preset="paper"), seed=4).reverse == PRESETS["paper"]


@pytest.mark.parametrize(
    "settings, names",
    [
        ({"seed": "one"}, "seed"),
        ({"reverse": {"max_steps": {"a": 1}}}, "max_steps"),
        ({"reverse": {"max_steps": 2.5}}, "max_steps"),
        ({"labels": "0,1"}, "labels"),
        ({"labels": [0, "x"]}, "labels"),
        ({"mad_threshold": "2"}, "mad_threshold"),
        ({"contract": {"height": True}}, "height"),
        ({"contract": {"layout": "NCWH"}}, "layout"),
        ({"reverse": 3}, "reverse"),
        ({"preset": "fast"}, "preset"),
        ({"preset": 3}, "preset"),
        ({"sede": 4}, "sede"),
        ({"pairs": {"max_pairs": "all"}}, "max_pairs"),
    ],
)
def test_wrong_typed_values_are_one_line_config_errors(settings, names):
    with pytest.raises(ConfigError, match=names) as caught:
        make_config(settings)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"mad_threshold": float("nan")}, "mad_threshold"),
        ({"mad_threshold": 0}, "mad_threshold"),
        ({"mad_threshold": -1.0}, "mad_threshold"),
        ({"mad_threshold": float("inf")}, "mad_threshold"),
        ({"labels": [0, 0, 1]}, "distinct"),
        ({"labels": [-1, 2, 3]}, "positive"),
        ({"device": "meta"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"seed": -1}, "seed"),
        ({"threads": -2}, "threads"),
        ({"max_images": -5}, "max_images"),
        ({"contract": {"height": 0}}, "height"),
        ({"contract": {"fixed_batch": -3}}, "fixed_batch"),
        ({"reverse": {"mini_batch": 0}}, "mini_batch"),
        ({"reverse": {"batch_size": 8}}, "renamed reverse.mini_batch"),
        ({"contract": {"batch_size": 8}}, "renamed contract.fixed_batch"),
        ({"std": [0.0]}, "std"),
        ({"scale": "bogus"}, "scale"),
        ({"alpha": 1.0}, "alpha"),
        ({"inconclusive_factor": 0.5}, "inconclusive_factor"),
        ({"inconclusive_factor": float("inf")}, "inconclusive_factor"),
        ({"pairs": {"max_pairs": -1}}, "pairs.max_pairs"),
        ({"pairs": {"steps": 0}}, "pairs.steps"),
        ({"pairs": {"min_source_images": 0}}, "pairs.min_source_images"),
    ],
)
def test_settings_that_cannot_give_a_verdict_are_refused(settings, words):
    with pytest.raises(ConfigError, match=words):
        make_config(settings)


def test_the_api_dataclass_checks_the_same_values():
    with pytest.raises(ConfigError, match="mad_threshold"):
        ScanConfig(mad_threshold=float("nan"))
    with pytest.raises(ConfigError, match="device"):
        ScanConfig(device="meta")
    with pytest.raises(ConfigError, match="preset"):
        ScanConfig(preset="fast")
    assert ScanConfig(labels=[3, 1, 2]).labels == (3, 1, 2)


def test_layers_merge_key_by_key_later_winning():
    config = settings_to_config(
        {"seed": 1, "reverse": {"max_steps": 5, "patience": 2}},
        {"reverse": {"max_steps": 9}},
        {"seed": 2},
    )
    assert (config.seed, config.reverse.max_steps, config.reverse.patience) == (2, 9, 2)


def test_label_range_is_checked_against_the_model():
    assert check_label_range([0, 9], 10) == [0, 9]
    with pytest.raises(ConfigError, match=r"\[10\] out of range"):
        check_label_range([0, 10], 10)


def test_limits_come_from_the_file_table_then_the_flags():
    settings, table = split_limits({"seed": 1, "limits": {"model_bytes": "1G", "images": 50}})
    assert settings == {"seed": 1}
    limits = make_limits(table, ["images=7", "graph_nodes=2K"])
    assert limits == dataclasses.replace(Limits(), model_bytes=1 << 30, images=7, graph_nodes=2048)
    for bad_table, flags in [
        ({"model_bytes": {"a": 1}}, []),
        ({"bogus": 1}, []),
        ({}, ["images"]),
        ({}, ["images=-1"]),
    ]:
        with pytest.raises(ConfigError):
            make_limits(bad_table, flags)
    with pytest.raises(ConfigError, match="limits"):
        split_limits({"limits": 3})
    with pytest.raises(ConfigError, match="limits"):
        make_config({"limits": {"images": 3}})


def test_flags_map_onto_the_config_fields_once():
    flags = {
        "seed": 3,
        "labels": (0, 1, 7),
        "max_steps": 20,
        "mini_batch": 8,
        "fixed_batch": 16,
        "num_classes": 10,
        "device": None,
        "quiet": True,  # not a config field: ignored
        "schedule_mode": "screened",
        "screen_starts": 1,
        "look_share": 0.25,
        "screen_mini_batch": 8,
        "pairs": 12,
    }
    assert scan_settings(flags) == {
        "seed": 3,
        "labels": (0, 1, 7),
        "reverse": {"max_steps": 20, "mini_batch": 8},
        "contract": {"fixed_batch": 16, "num_classes": 10},
        "schedule": {"mode": "screened", "screen_starts": 1, "look_share": 0.25, "screen_mini_batch": 8},
        "pairs": {"max_pairs": 12},
    }
    config = make_config(scan_settings(flags))
    assert (config.reverse.mini_batch, config.contract.fixed_batch, config.labels) == (8, 16, (0, 1, 7))
    assert (config.schedule.mode, config.schedule.screen_starts, config.schedule.look_share) == ("screened", 1, 0.25)
    assert config.schedule.screen_mini_batch == 8
    assert "schedule" not in scan_settings({"schedule_mode": None, "screen_starts": None, "look_share": None})
    assert config.pairs.max_pairs == 12 and "pairs" not in scan_settings({"pairs": None})
    assert make_config({"pairs": {"max_pairs": 0}}).pairs.max_pairs == 0  # --pairs 0: no pair stage
    mitigation = mitigation_config({"method": "prune", "unlearn_batch": 4, "prune_target": 0.1, "seed": None})
    assert mitigation == MitigationConfig(method="prune", unlearn_batch=4, prune_target=0.1)
    assert mitigation.pair_triggers and not mitigation_config({"pair_triggers": False}).pair_triggers
    assert mitigation_config({"pair_triggers": None}).pair_triggers  # the flag not given: the default
    (flag,) = [param for param in main.commands["mitigate"].params if param.name == "pair_triggers"]
    assert flag.opts == ["--pair-triggers"] and flag.secondary_opts == ["--no-pair-triggers"] and flag.default is None


def test_a_screened_schedule_runs_its_share_of_the_additive_looks_steps_and_full_runs_all_of_them():
    look = AdditiveConfig(steps=60, rung_steps=20, epsilon=8.0)
    assert ScheduleConfig(mode="full", look_share=0.25).look(look) == look
    assert ScheduleConfig(mode="screened").look(look) == dataclasses.replace(look, steps=30)  # rungs go on for 20
    assert ScheduleConfig(mode="screened", look_share=0.3).look(look) == dataclasses.replace(look, steps=18)
    assert ScheduleConfig(mode="screened", look_share=0.001).look(look) == dataclasses.replace(look, steps=1)
    assert ScheduleConfig(mode="screened", look_share=1).look(look) == look
    off = AdditiveConfig(steps=0)  # no look stays none
    assert ScheduleConfig(mode="screened").look(off) == off
    for share in (0.0, -0.5, 1.5, math.nan, math.inf):
        with pytest.raises(ConfigError, match="look_share"):
            ScheduleConfig(look_share=share)
    from click.testing import CliRunner

    from scanner.cli import main

    refused = CliRunner().invoke(main, ["scan", "model.onnx", "--data", "d.npz", "--look-share", "0"])
    assert refused.exit_code == 2 and "look-share" in refused.output
    refused = CliRunner().invoke(main, ["scan", "model.onnx", "--data", "d.npz", "--screen-from", "0"])
    assert refused.exit_code == 2 and "screen-from" in refused.output
    settings = scan_settings({"schedule_mode": "auto", "screen_from": 30})
    assert make_config(settings).schedule == ScheduleConfig(mode="auto", screen_from=30)
