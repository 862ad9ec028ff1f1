"""Several starts per label: the label stands where its best start stands, and keeps the smallest trigger found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleanse_base.errors import ConfigError
from scanner.cli import NumberList, scan_settings
from scanner.config import ReverseConfig, make_config
from scanner.report import format_summary
from scanner.reverse import LabelRun, StartRun, TriggerReverser, _SlotTensors, mask_from_tanh, pattern_from_tanh
from scanner.run_scan import scan
from tests.test_schedule import PlantedLinear


def start(best_norms: list[float], finished: bool = False, best: bool = True) -> StartRun:
    run = StartRun(0, np.random.default_rng(0), finished=finished, best_norms=best_norms, steps=len(best_norms))
    run.schedule.best_norm = best_norms[-1] if best_norms else math.inf
    if best and math.isfinite(run.schedule.best_norm):
        mask = np.full((4, 4), run.schedule.best_norm / 16)  # a mask of the best norm's L1
        run.best = (mask, np.zeros((1, 4, 4)), 1.0)
    return run


def test_a_label_stands_where_its_best_start_stands():
    early = start([math.inf, 30.0, 20.0], finished=True)
    late = start([50.0, 40.0, 25.0, 12.0, 11.0])
    run = LabelRun(0, [early, late])
    assert run.norm == 11.0 and run.steps == 5 and run.steps_spent == 8 and not run.finished
    # step by step the smaller of the two; a finished start keeps its last best norm
    assert run.best_norms == [50.0, 30.0, 20.0, 12.0, 11.0]
    assert run.best_start() is late
    late.finished = True
    assert run.finished


def test_a_start_that_found_no_trigger_is_never_chosen():
    nothing = start([math.inf, math.inf], best=False)
    found = start([80.0, 60.0])
    assert LabelRun(0, [nothing, found]).best_start() is found
    assert LabelRun(0, [nothing, start([math.inf], best=False)]).best_start() is nothing  # none found: the first


def test_starts_must_be_positive():
    with pytest.raises(ConfigError, match="starts"):
        ReverseConfig(starts=0)
    assert make_config({"reverse": {"starts": 3}}).reverse.starts == 3


def test_a_start_trial_keeps_the_smallest_trigger_once_every_start_has_run_its_steps():
    first, second, third = start([90.0, 60.0]), start([80.0, 40.0, 38.0]), start([70.0, 50.0, 45.0])
    run = LabelRun(0, [first, second, third])
    assert run.end_trial(3) is None  # the first start has run 2 of its 3 trial steps
    assert run.end_trial(0) is None  # no trial: every start runs to its end
    first.finished = True  # a start that stopped early is judged where it stopped
    assert run.end_trial(3) is second and run.live == [second]
    assert first.dropped and third.dropped and third.finished and third.saved is None
    assert not run.finished and not run.in_trial(3) and run.end_trial(3) is None
    assert run.best_start() is second
    second.finished = True
    assert run.finished


def test_a_start_trial_drops_a_start_with_a_smaller_bound_but_no_smaller_trigger():
    kept, dropped = start([30.0]), start([20.0], best=False)  # a bound of 20 yet no mask at success
    assert LabelRun(0, [dropped, kept]).end_trial(1) is kept


def test_the_initial_mask_range_is_checked_and_the_paper_keeps_the_reference():
    for wrong in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ConfigError, match="initial_mask_max"):
            ReverseConfig(initial_mask_max=wrong)
    assert scan_settings({"initial_mask_max": 0.5}) == {"reverse": {"initial_mask_max": 0.5}}
    assert make_config(scan_settings({"initial_mask_max": 0.5})).reverse.initial_mask_max == 0.5
    for preset in ("paper", "default"):  # uniform on [0, 1], as the reference
        assert make_config({"preset": preset}).reverse.initial_mask_max == 1.0


def test_a_list_gives_each_start_its_own_initial_mask_range():
    config = ReverseConfig(starts=3, initial_mask_max=(1.0, 0.1))
    assert [config.initial_mask_max_of(k) for k in range(3)] == [1.0, 0.1, 0.1]  # the last past the list's end
    assert ReverseConfig(initial_mask_max=(0.3,)).initial_mask_max == 0.3  # one value: the plain number
    for wrong in ((), (1.0, 0.0), (0.1, 1.5), (1.0, math.nan)):
        with pytest.raises(ConfigError, match="initial_mask_max"):
            ReverseConfig(initial_mask_max=wrong)
    from_flag = make_config(scan_settings({"initial_mask_max": NumberList(float).convert("1,0.1", None, None)}))
    assert from_flag.reverse.initial_mask_max == (1.0, 0.1)
    from_file = make_config({"reverse": {"initial_mask_max": [1, 0.1]}})  # a config file's list (TOML: ints too)
    assert from_file.reverse.initial_mask_maxima == (1.0, 0.1)


def test_each_start_of_a_session_opens_on_its_own_range(monkeypatch):
    ranges = []
    original = _SlotTensors.append

    def recording(self, rng, height, width, channels, mask_max):
        ranges.append(mask_max)
        original(self, rng, height, width, channels, mask_max)

    monkeypatch.setattr(_SlotTensors, "append", recording)
    images = np.random.default_rng(0).uniform(0, 255, (32, 1, 6, 6)).astype(np.float32)
    config = ReverseConfig(mini_batch=16, images_per_step=32, max_steps=2, starts=3, initial_mask_max=(1.0, 0.25))
    session = TriggerReverser(PlantedLinear(), config, torch.device("cpu"), seed=0).session(images, 20)
    run = session.start(3, starts=1)  # start 0 first; starts 1 and 2 open late, as the screened schedule opens them
    session.advance([run], steps=1)
    session.open_starts(run)
    assert [start.index for start in run.starts] == [0, 1, 2]
    session.advance([run], steps=1)
    assert ranges == [1.0, 0.25, 0.25]


def test_a_start_s_mask_begins_on_its_range_scaled_from_the_same_draw():
    """The range scales the start's uniform draw: the pattern and the start's later draws (its image order) stay
    those of the reference's start."""
    drawn = {}
    for top in (1.0, 0.1):
        params = _SlotTensors(torch.device("cpu"), 3, 8, 8)
        rng = np.random.default_rng(5)
        params.append(rng, 8, 8, 3, top)
        mask, pattern = mask_from_tanh(params.mask_tanh), pattern_from_tanh(params.pattern_tanh)
        drawn[top] = (mask.numpy(), pattern.numpy(), rng.random())
    (mask, pattern, after), (small_mask, small_pattern, small_after) = drawn[1.0], drawn[0.1]
    assert small_mask.max() <= 0.1 + 1e-6 and mask.max() > 0.5
    np.testing.assert_allclose(small_mask, 0.1 * mask, atol=1e-5)
    np.testing.assert_array_equal(small_pattern, pattern)
    assert small_after == after


def test_start_trial_steps_must_not_be_negative():
    with pytest.raises(ConfigError, match="start_trial_steps"):
        ReverseConfig(start_trial_steps=-1)
    assert make_config({"reverse": {"start_trial_steps": 10}}).reverse.start_trial_steps == 10


def reversed_labels(
    starts: int,
    labels: list[int],
    trial: int = 0,
    labels_per_batch: int = 0,
    steps: int | None = None,
    progress=None,
    max_steps: int = 40,
):
    images = np.random.default_rng(0).uniform(0, 255, (64, 1, 6, 6)).astype(np.float32)
    config = ReverseConfig(
        mini_batch=16,
        images_per_step=64,
        max_steps=max_steps,
        patience=2,
        early_stop_patience=6,
        starts=starts,
        start_trial_steps=trial,
        labels_per_batch=labels_per_batch,
    )
    session = TriggerReverser(PlantedLinear(), config, torch.device("cpu"), seed=0).session(images, len(labels))
    runs = [session.start(label) for label in labels]
    session.advance(runs, steps, progress)
    return session, runs


@pytest.mark.slow
def test_after_the_start_trial_only_the_best_start_goes_on_whatever_the_batching():
    labels = [3, 5, 7]
    _, untried = reversed_labels(3, labels)
    _, at_trial = reversed_labels(3, labels, steps=5)
    trigger_norms = {}
    for labels_per_batch in (1, 4):
        seen: list[int] = []
        session, runs = reversed_labels(
            3, labels, 5, labels_per_batch, progress=lambda t, seen=seen: seen.append(t.label)
        )
        assert sorted(seen) == labels  # each label reported once, when its kept start finishes
        for run, full, trial in zip(runs, untried, at_trial, strict=True):
            assert run.finished and len(run.live) == 1
            assert all(one.steps == 5 and one.saved is None for one in run.starts if one.dropped)
            k = run.starts.index(run.live[0])
            # the kept start had the smallest trigger after 5 steps, and went on exactly as without a trial
            assert trial.starts[k].trigger_norm == min(one.trigger_norm for one in trial.starts)
            assert run.live[0].best_norms == full.starts[k].best_norms
            assert session.result(run).steps == run.live[0].steps + 5 * 2
        trigger_norms[labels_per_batch] = [session.result(run).norm for run in runs]
    assert trigger_norms[1] == trigger_norms[4]


@pytest.mark.parametrize("labels_per_batch", [1, 4])
def test_starts_opened_after_a_screen_end_as_starts_opened_with_the_label(labels_per_batch):
    """The screened schedule screens with one start and opens the rest for the labels that run on: the late
    starts run their trial while the first waits at its end, and the label ends exactly where it would have."""
    labels = [3, 5, 7]
    _, together = reversed_labels(3, labels, 5, labels_per_batch)
    session, _ = reversed_labels(3, [], 5, labels_per_batch)
    runs = [session.start(label, 1) for label in labels]
    session.advance(runs, 5)  # the screen: one start each, to the trial's end
    assert all(len(run.starts) == 1 and run.steps == 5 for run in runs)
    screened_norms = [run.best_norms for run in runs]
    seen: list[int] = []
    for run in runs:
        session.open_starts(run)
    session.advance(runs, None, lambda trigger: seen.append(trigger.label))
    assert sorted(seen) == labels
    for run, eager, screened in zip(runs, together, screened_norms, strict=True):
        assert [start.late for start in run.starts] == [False, True, True]
        assert [one.dropped for one in run.starts] == [one.dropped for one in eager.starts]
        assert session.result(run).norm == session.result(eager).norm
        assert run.images == eager.images
        assert run.best_norms[:5] == screened  # the late starts' steps are not the label's first steps
    session.open_starts(runs[0])  # a finished run opens nothing
    assert len(runs[0].starts) == 3


def test_a_label_whose_starts_all_end_at_the_trial_in_one_batch_is_reported_once():
    seen: list[int] = []
    # 6 slots: every start at once, and every start's last step (max_steps) is the trial's
    _, runs = reversed_labels(3, [3, 5], 5, 6, progress=lambda trigger: seen.append(trigger.label), max_steps=5)
    assert sorted(seen) == [3, 5] and all(len(run.live) == 1 and run.finished for run in runs)


def test_a_label_keeps_the_smallest_trigger_of_its_starts_and_the_first_start_is_the_single_run():
    labels = [3, 5, 7]
    single_session, single = reversed_labels(1, labels)
    session, runs = reversed_labels(2, labels)
    for alone, run in zip(single, runs, strict=True):
        per_start = [session.result(LabelRun(run.label, [one])).norm for one in run.starts]
        assert per_start[0] == single_session.result(alone).norm  # start 0 is the one-start run, exactly
        assert per_start[1] != per_start[0]  # another initial mask and image order: another run
        trigger = session.result(run)
        assert trigger.norm == min(per_start)
        assert run.images == sum(one.images for one in run.starts) > alone.images
        assert trigger.steps == sum(one.steps for one in run.starts)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("starts", "trial", "said"),
    [(2, 0, "2 starts per label:"), (3, 8, "3 starts per label (the best after 8 steps goes on):")],
)
def test_a_several_start_scan_flags_the_digits_backdoor_and_reports_each_label_once(digits, starts, trial, said):
    seen: list[int] = []
    config = make_config(
        {
            "seed": 1,
            "reverse": {"starts": starts, "start_trial_steps": trial},
            "pairs": {"max_pairs": 0},
            "additive": {"steps": 0},
        }
    )
    model, data = digits["digits_infected.onnx"], digits["digits_test.npz"]
    report = scan(model, data, config, lambda trigger, *_: seen.append(trigger.label))
    assert report.flagged == [7]
    assert sorted(seen) == list(range(10))  # a label is done when its last start is
    assert report.config.reverse.starts == starts and said in format_summary(report)
    # every start's steps, the retried label's rounds too (the schedule counts the label stage, the retry its own)
    steps = sum(result.steps for result in report.labels)
    assert report.schedule["images"] + report.retry_stage.images == steps * 256
    assert report.schedule["steps"] * 256 + report.retry_stage.images == steps * 256


@pytest.mark.slow
def test_starts_of_one_label_batched_together_give_the_triggers_they_give_alone(digits):
    def norms(labels_per_batch: int) -> list[float]:
        settings = {"reverse": {"max_steps": 15, "labels_per_batch": labels_per_batch, "starts": 2}}
        config = make_config({"seed": 5, "labels": [1, 7, 9], **settings})
        return [r.l1_norm for r in scan(digits["digits_infected.onnx"], digits["digits_test.npz"], config).labels]

    np.testing.assert_allclose(norms(1), norms(4), rtol=1e-3)


class Unreachable(torch.nn.Module):
    """Answers label 0 whatever the image: no trigger reaches another label."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = images.flatten(1) @ torch.zeros(36, 4) + torch.tensor([5.0, 0.0, 0.0, 0.0])
        return torch.log_softmax(logits, dim=1)


def test_a_label_whose_starts_stop_together_before_the_trial_without_a_trigger_is_reported_once():
    images = np.random.default_rng(0).uniform(0, 255, (16, 1, 6, 6)).astype(np.float32)
    # both starts share a pass and reach the step limit in the same step, before the trial ends
    config = ReverseConfig(
        mini_batch=16, images_per_step=16, max_steps=3, starts=2, start_trial_steps=10, labels_per_batch=2
    )
    session = TriggerReverser(Unreachable(), config, torch.device("cpu"), seed=0).session(images, 1)
    run = session.start(2)
    seen = []
    session.advance([run], None, seen.append)
    assert [trigger.label for trigger in seen] == [2]
    assert not seen[0].found and seen[0].steps == 6 and seen[0].mask.shape == (6, 6)
