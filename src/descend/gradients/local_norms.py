"""Squared norms of each backward pass's own gradients, before accumulation and all-reduce."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LocalGradientNorms:
    """Measure ``|g|^2`` of every backward pass through tensor hooks on the parameters.

    A hook registered with ``Tensor.register_hook`` receives the gradient that one backward pass
    computes for its parameter, before autograd adds it to ``.grad`` and before DDP's reducer
    averages it across ranks. So with gradient accumulation each micro-batch is measured on its
    own, and under DDP each rank measures its local gradient. Each hook adds one norm kernel; the
    results stay on the device.
    """

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._parts: list[torch.Tensor] = []
        self._sum_sq: torch.Tensor | None = None
        self.num_passes = 0

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, params: Iterable[torch.Tensor]) -> None:
        for param in params:
            self._handles.append(param.register_hook(self._measure))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _measure(self, grad: torch.Tensor) -> None:
        self._parts.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))

    def end_pass(self) -> None:
        """Close one backward pass: add the squared norm of its whole gradient to the sum."""
        if not self._parts:
            return
        squared = torch.linalg.vector_norm(torch.stack(self._parts)).square()
        self._parts = []
        self._sum_sq = squared if self._sum_sq is None else self._sum_sq + squared
        self.num_passes += 1

    def pop(self) -> tuple[torch.Tensor | None, int]:
        """Return the sum of ``|g|^2`` over the passes since the last pop, and their number."""
        result = (self._sum_sq, self.num_passes)
        self._sum_sq = None
        self.num_passes = 0
        return result
