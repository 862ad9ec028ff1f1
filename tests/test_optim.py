"""scanner.optim.Adam against torch.optim.Adam: the same parameters after every step, to the bit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scanner.optim import Adam

SHIPPED = ("scanner", "converters", "cleanse_base")
BUILT_OPTIMIZER = re.compile(r"torch\.optim\.[A-Z]\w*\(|from torch\.optim import [A-Z]")


def run_both(shapes, lr, betas, steps, skipped=lambda step, index: False):
    """Parameters of `shapes` stepped by both optimizers on the same gradients; a gradient is left out (None)
    where `skipped(step, index)`."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    ours = [tensor.clone().requires_grad_(True) for tensor in start]
    theirs = [tensor.clone().requires_grad_(True) for tensor in start]
    optimizers = Adam(ours, lr=lr, betas=betas), torch.optim.Adam(theirs, lr=lr, betas=betas)
    for step in range(steps):
        for optimizer in optimizers:
            optimizer.zero_grad()
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            if not skipped(step, index):
                grad = torch.randn(mine.shape, generator=generator) * 10 ** (step % 5 - 2)
                mine.grad, other.grad = grad.clone(), grad.clone()
        for optimizer in optimizers:
            optimizer.step()
        for mine, other in zip(ours, theirs, strict=True):
            assert torch.equal(mine, other), f"step {step}: {(mine - other).abs().max().item()}"
    return ours


def test_one_stacked_parameter_follows_torch_adam_to_the_bit():
    run_both([(4, 3, 8, 8)], lr=0.1, betas=(0.9, 0.999), steps=60)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_several_parameters_some_without_a_gradient_follow_torch_adam_to_the_bit(betas):
    """A parameter with no gradient at a step is left, its step count too (as unlearning's tied weights)."""
    every_third = lambda step, index: (step + index) % 3 == 0  # noqa: E731
    params = run_both([(1, 8, 8), (3, 8, 8), (10,)], lr=1e-3, betas=betas, steps=40, skipped=every_third)
    assert all(param.requires_grad for param in params)


def test_a_step_with_no_gradient_at_all_changes_nothing():
    param = torch.ones(3, requires_grad=True)
    Adam([param], lr=0.1).step()
    assert torch.equal(param, torch.ones(3))


def test_stepping_it_never_imports_torch_dynamo():
    """torch.optim.Adam's constructor imports torch._dynamo (1.2 to 1.7 s): this one must not."""
    code = (
        "import sys, torch; from scanner.optim import Adam; p = torch.zeros(3, requires_grad=True); "
        "o = Adam([p], lr=0.1); p.sum().backward(); o.step(); print('torch._dynamo' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_shipped_code_builds_no_torch_optimizer():
    root = Path(__file__).resolve().parents[1]
    users = [
        str(path.relative_to(root))
        for package in SHIPPED
        for path in sorted((root / package).rglob("*.py"))
        if BUILT_OPTIMIZER.search(path.read_text()) and path.name != "optim.py"
    ]
    assert users == [], "use scanner.optim.Adam (torch.optim's optimizers import torch._dynamo when built)"
