"""p-norms of many tensors at once, per tensor, per group of tensors and in total.

Every function keeps its results on the tensors' device: none of them reads a value back to the
host, so a caller can compute norms on every step and copy them to the host only when it logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GROUP_BY_CHOICES = ("layer", "parameter")


def check_norm_type(norm_type: float | int | str) -> float:
    """Return ``norm_type`` as a float (1.0, 2.0 or inf); raise ValueError for anything else."""
    try:
        value = float(norm_type)
    except (TypeError, ValueError):
        value = float("nan")
    if value not in (1.0, 2.0, math.inf):
        raise ValueError(
            f"norm_type={norm_type!r} is invalid: use 1, 2 or 'inf' (the p of the p-norm)"
        )
    return value


def tensor_norms(tensors: Sequence[torch.Tensor], norm_type: float) -> torch.Tensor:
    """Return the p-norm of each tensor as one float32 vector of shape ``(len(tensors),)``.

    One fused ``torch._foreach_norm`` call per dtype and device (the same kernel that
    ``torch.nn.utils.clip_grad_norm_`` uses), computed in float32 so that float16 and bfloat16
    gradients neither overflow nor lose precision in the sum. An entry is inf or NaN when its
    tensor holds an inf or NaN (and, for p = 1 or 2, when a float32 sum overflows).
    """
    if len(tensors) == 0:
        return torch.zeros(0)
    norms = torch._foreach_norm(list(tensors), norm_type, dtype=torch.float32)
    return torch.stack(norms)


def combine_norms(norms: torch.Tensor, norm_type: float, dim: int = -1) -> torch.Tensor:
    """Return the p-norm of the concatenation of tensors whose p-norms are ``norms``.

    ``||(x_1, ..., x_n)||_p = (sum_i ||x_i||_p^p)^(1/p)`` for finite p and ``max_i ||x_i||_inf``
    for p = inf. The result is not the sum of the norms (except for p = 1).
    """
    if norm_type == math.inf:
        return norms.amax(dim=dim)
    if norm_type == 1.0:
        return norms.sum(dim=dim)
    return norms.pow(norm_type).sum(dim=dim).pow(1.0 / norm_type)


def group_parameter_names(names: Sequence[str], group_by: str) -> list[str]:
    """Return the group of each parameter: its own name, or its module's name (``layer``).

    ``net.layers.0.weight`` and ``net.layers.0.bias`` both belong to layer ``net.layers.0``. A
    parameter that sits directly on the root module (no dot in its name) is its own group.
    """
    if group_by not in GROUP_BY_CHOICES:
        raise ValueError(
            f"group_by={group_by!r} is invalid: use 'layer' (one norm per module) or "
            "'parameter' (one norm per parameter tensor)"
        )
    if group_by == "parameter":
        return list(names)
    return [name.rpartition(".")[0] or name for name in names]


class GroupedNorms:
    """Reduce per-tensor norms to per-group norms with one scatter, on the device.

    Args:
        groups: the group name of each tensor, in tensor order (see ``group_parameter_names``).
        norm_type: p of the p-norm: 1.0, 2.0 or inf.
        device: device of the per-tensor norms this object will receive.
    """

    def __init__(self, groups: Sequence[str], norm_type: float, device: torch.device) -> None:
        self.norm_type = check_norm_type(norm_type)
        self.names: list[str] = list(dict.fromkeys(groups))
        position = {name: i for i, name in enumerate(self.names)}
        self.index = torch.tensor([position[g] for g in groups], dtype=torch.long, device=device)

    def __call__(self, norms: torch.Tensor) -> torch.Tensor:
        """Return the norm of each group, shape ``(len(self.names),)``, from per-tensor ``norms``."""
        out = torch.zeros(len(self.names), dtype=norms.dtype, device=norms.device)
        if self.norm_type == math.inf:
            return out.scatter_reduce_(0, self.index, norms, reduce="amax")
        if self.norm_type == 1.0:
            return out.index_add_(0, self.index, norms)
        return out.index_add_(0, self.index, norms.pow(self.norm_type)).pow(1.0 / self.norm_type)
