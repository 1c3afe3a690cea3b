"""A network with exactly two parameters, small enough to draw its whole loss surface."""

from __future__ import annotations

import torch
from torch import nn


class TanhUnit(nn.Module):
    """``f(x) = w2 * tanh(w1 * x)`` for scalar inputs: one hidden tanh unit, no biases.

    The function is odd in the weights, ``f(x; -w1, -w2) = f(x; w1, w2)``, so every minimum of
    a loss on ``f`` has a mirror image through the origin, and the origin itself is a saddle
    point when the target correlates with ``x``.

    Both weights start uniform in ``[-init_range, init_range]``, drawn from torch's global
    generator (seeded by the run's seed). Inputs have shape ``[batch, 1]``; outputs ``[batch]``.

    Args:
        init_range: half-width of the uniform initialisation of both weights.
    """

    def __init__(self, init_range: float = 2.0) -> None:
        super().__init__()
        if not init_range > 0:
            raise ValueError(f"init_range={init_range} is invalid: it must be a positive number")
        self.w1 = nn.Parameter(torch.empty(()).uniform_(-init_range, init_range))
        self.w2 = nn.Parameter(torch.empty(()).uniform_(-init_range, init_range))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim != 2 or inputs.shape[1] != 1:
            raise ValueError(
                f"TanhUnit expects inputs of shape [batch, 1], got {list(inputs.shape)}"
            )
        return self.w2 * torch.tanh(self.w1 * inputs[:, 0])
