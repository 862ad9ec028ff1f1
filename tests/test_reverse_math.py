import numpy as np
import pytest
import torch

import scanner.reverse
from cleanse_base.errors import ConfigError, ResourceError
from scanner.config import ReverseConfig
from scanner.reverse import (
    CostSchedule,
    TriggerReverser,
    adam_update,
    advance_schedule,
    auto_labels_per_batch,
    fit_to_memory,
    mask_from_tanh,
    pattern_from_tanh,
    stamp,
    to_tanh,
    use_bfloat16,
)

CONFIG = ReverseConfig(patience=2, early_stop_patience=3, init_cost=1e-3)


def run(schedule: CostSchedule, successes: list[float], norms: list[float]) -> list[tuple[bool, bool]]:
    return [
        (outcome.improved, outcome.stop)
        for outcome in (advance_schedule(schedule, s, n, CONFIG) for s, n in zip(successes, norms, strict=True))
    ]


def test_cost_starts_at_zero_and_is_set_after_patience_successes():
    schedule = CostSchedule()
    run(schedule, [1.0], [10.0])
    assert schedule.cost == 0
    run(schedule, [1.0], [9.0])
    assert schedule.cost == CONFIG.init_cost
    assert not schedule.cost_up_flag


def test_cost_goes_up_on_success_and_down_on_failure():
    schedule = CostSchedule(cost=1e-3)
    run(schedule, [1.0, 1.0], [5.0, 5.0])
    assert schedule.cost == pytest.approx(2e-3) and schedule.cost_up_flag
    run(schedule, [0.5, 0.5], [5.0, 5.0])
    assert schedule.cost == pytest.approx(2e-3 / 2**1.5) and schedule.cost_down_flag


def test_best_norm_only_counts_successful_steps():
    schedule = CostSchedule(cost=1e-3)
    assert run(schedule, [0.5, 1.0, 1.0, 0.995], [1.0, 8.0, 9.0, 7.0]) == [
        (False, False),
        (True, False),
        (False, False),
        (True, False),
    ]
    assert schedule.best_norm == 7.0


def test_early_stop_needs_cost_moved_both_ways_and_no_improvement():
    schedule = CostSchedule(cost=1e-3)
    outcomes = run(schedule, [1.0] * 6, [5.0] * 6)  # never improves after step 1, but cost only went up
    assert not any(stop for _, stop in outcomes)
    run(schedule, [0.0, 0.0], [5.0, 5.0])  # cost goes down
    assert schedule.cost_down_flag and schedule.cost_up_flag
    assert run(schedule, [1.0], [5.0]) == [(False, True)]


def test_tanh_parametrization_round_trips_and_stays_in_range():
    values = np.array([0.0, 0.25, 0.5, 0.999, 1.0])
    mask = mask_from_tanh(torch.from_numpy(to_tanh(values)))
    assert torch.allclose(mask, torch.from_numpy(values), atol=1e-6)
    extreme = torch.tensor([-1e4, 1e4])
    assert 0 <= mask_from_tanh(extreme).min() and mask_from_tanh(extreme).max() <= 1
    assert pattern_from_tanh(extreme).max() <= 255


def test_stamp_blends_mask_over_channels():
    images = torch.full((2, 3, 4, 4), 10.0)
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    pattern = torch.full((3, 4, 4), 200.0)
    out = stamp(images, mask, pattern)
    assert torch.all(out[:, :, 0, 0] == 200.0)
    assert torch.all(out[:, :, 1:, :] == 10.0)


def test_adam_update_matches_torch_adam_per_slot():
    torch.manual_seed(0)
    initial = torch.randn(2, 3)
    reference = [torch.nn.Parameter(initial[i].clone()) for i in range(2)]
    optimizers = [torch.optim.Adam([p], lr=0.1, betas=(0.5, 0.9)) for p in reference]
    ours = initial.clone()
    moments = [torch.zeros_like(ours), torch.zeros_like(ours)]
    steps = torch.zeros(2)
    for _ in range(5):
        grads = torch.randn(2, 3)
        for param, optimizer, grad in zip(reference, optimizers, grads, strict=True):
            param.grad = grad.clone()
            optimizer.step()
        steps += 1
        adam_update(ours, grads, moments[0], moments[1], steps, 0.1, 0.5, 0.9)
    assert torch.allclose(ours, torch.stack([p.detach() for p in reference]), atol=1e-6)


def test_precision_is_resolved_per_device():
    cpu = torch.device("cpu")
    assert not use_bfloat16("float32", cpu)
    assert use_bfloat16("bfloat16", cpu)
    assert use_bfloat16("auto", cpu) == torch.cpu._is_avx512_bf16_supported()
    with pytest.raises(ConfigError, match="precision"):
        ReverseConfig(precision="half").validate()


@pytest.mark.parametrize(
    ("device", "native_bfloat16", "mini_batch", "labels", "pixels", "width"),
    [
        ("cpu", False, 16, 43, 32 * 32, 1),  # stacking measured slower on such CPUs
        ("cpu", True, 16, 43, 32 * 32, 4),  # about 64 images a pass
        ("cpu", True, 16, 200, 64 * 64, 4),
        ("cpu", True, 16, 1000, 224 * 224, 1),  # not measured: one label a pass
        ("cpu", True, 32, 43, 32 * 32, 2),
        ("cpu", True, 128, 43, 32 * 32, 1),
        ("cpu", True, 16, 3, 32 * 32, 3),  # never more than the labels
        ("cuda", False, 16, 43, 32 * 32, 86),  # every start of every label
        ("cuda", False, 16, 200, 64 * 64, 200),  # 3,200 images of 64x64 a pass
        ("cuda", False, 16, 1000, 224 * 224, 16),  # 261 images of 224x224
        ("cuda", False, 16, 3, 32 * 32, 6),
    ],
)
def test_labels_stacked_per_pass_suit_the_device(
    monkeypatch, device, native_bfloat16, mini_batch, labels, pixels, width
):
    monkeypatch.setattr(scanner.reverse, "cpu_has_native_bfloat16", lambda: native_bfloat16)
    assert auto_labels_per_batch(torch.device(device), mini_batch, labels, pixels, starts=2) == width


def test_the_width_halves_until_a_pass_fits_in_gpu_memory():
    tried = []

    def run_pass(width: int) -> None:
        tried.append(width)
        if width > 10:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert fit_to_memory(run_pass, 86) == 10
    assert tried == [86, 43, 21, 10]


def test_a_model_too_large_for_one_label_a_pass_is_a_resource_error():
    def run_pass(width: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ResourceError, match="even one label a pass.*--device cpu"):
        fit_to_memory(run_pass, 4)


def test_the_memory_probe_runs_the_reversal_pass_at_the_width():
    """The probe pushes `slots` mini-batches through the model, forward and backward, as a step's pass does."""
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5), torch.nn.LogSoftmax(dim=1))
    model.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape)))
    reverser = TriggerReverser(model, ReverseConfig(mini_batch=4), torch.device("cpu"))
    reverser.probe(torch.rand(6, 3, 4, 4) * 255, 3)
    assert seen == [(12, 3, 4, 4)]
