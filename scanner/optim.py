"""Adam for the scan's and mitigation's small optimizations, without torch.optim's start-up cost.

Building a `torch.optim.Adam` imports torch._dynamo the first time (torch 2.13: 1.2 to 1.7 s on a 2-core CPU, a
tenth of a digits scan), although nothing here is compiled. `Adam` keeps the same state and steps it through
`torch.optim.adam.adam`, the public function `torch.optim.Adam.step` itself calls, with the arguments it passes
for the defaults (no weight decay, no amsgrad, foreach chosen by torch): the same update to the bit
(tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class Adam:
    """torch.optim.Adam(params, lr, betas) with its other defaults: `zero_grad()` and `step()`."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = 1e-8
        # per parameter index, made at its first step with a gradient (new_state), as torch.optim.Adam's state
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        stepped = [index for index, param in enumerate(self.params) if param.grad is not None]
        if not stepped:
            return
        for index in stepped:
            if index not in self.state:
                self.state[index] = new_state(self.params[index])
        params = [self.params[index] for index in stepped]
        states = [self.state[index] for index in stepped]
        adam(
            params,
            [param.grad for param in params],
            [first for _, first, _ in states],
            [second for _, _, second in states],
            [],
            [steps for steps, _, _ in states],
            amsgrad=False,
            has_complex=any(torch.is_complex(param) for param in params),
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            foreach=None,
            capturable=False,
            differentiable=False,
            fused=None,
            grad_scale=None,
            found_inf=None,
            decoupled_weight_decay=False,
        )


def new_state(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.optim.Adam's state for `param` before its first step: the step count (a CPU scalar of the default
    dtype's precision), the first and the second moments."""
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    moments = [torch.zeros_like(param, memory_format=torch.preserve_format) for _ in range(2)]
    return torch.tensor(0.0, dtype=scalar), moments[0], moments[1]
