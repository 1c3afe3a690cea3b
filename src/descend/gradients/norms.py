"""p-norms of many tensors at once, per tensor, per group of tensors and in total.

``tensor_norms`` and ``combine_norms`` keep their results on the tensors' device and never read a
value back to the host, so a caller can compute norms on every step and copy them to the host only
when it logs. ``GroupLayout`` and ``combine_host_norms`` work on the few floats read back then.
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
    """Return the p-norm of each tensor as one vector of shape ``(len(tensors),)``.

    One fused ``torch._foreach_norm`` call (the kernel that ``torch.nn.utils.clip_grad_norm_``
    uses). float16 and bfloat16 tensors are reduced in float32, so their sums neither overflow nor
    lose precision. The result is float32, or float64 when a tensor is float64. An entry is inf or
    NaN when its tensor contains an inf or NaN (and, for p = 1 or 2, when a float32 sum overflows).
    """
    if len(tensors) == 0:
        return torch.zeros(0)
    tensors = list(tensors)
    dtypes = {t.dtype for t in tensors}
    if dtypes & {torch.float16, torch.bfloat16} and torch.float64 not in dtypes:
        norms = torch._foreach_norm(tensors, norm_type, dtype=torch.float32)
    else:
        norms = torch._foreach_norm(tensors, norm_type)
    return torch.stack(norms)


def combine_norms(norms: torch.Tensor, norm_type: float, dim: int = -1) -> torch.Tensor:
    """Return the p-norm of a concatenation of tensors whose p-norms are ``norms`` (along ``dim``).

    ``||(x_1, ..., x_n)||_p = (sum_i ||x_i||_p^p)^(1/p)`` for finite p and ``max_i ||x_i||_inf``
    for p = inf: the p-norm of the vector of norms. It is not their sum (except for p = 1).
    """
    return torch.linalg.vector_norm(norms, ord=norm_type, dim=dim)


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


def combine_host_norms(norms: Sequence[float], norm_type: float) -> float:
    """Return the p-norm of a concatenation from its parts' p-norms, in Python floats.

    The same formula as ``combine_norms``, for the few values a logging step reads back, where a
    Python loop costs less than launching device kernels.
    """
    if not norms:
        return 0.0
    if norm_type == math.inf:
        return max(norms)
    if norm_type == 1.0:
        return math.fsum(norms)
    return math.sqrt(math.fsum(value * value for value in norms))


class GroupLayout:
    """Assignment of tensors to groups (layers or parameters), and the groups' norms.

    Args:
        groups: the group name of each tensor, in tensor order (see ``group_parameter_names``).
        norm_type: p of the p-norm: 1.0, 2.0 or inf.
    """

    def __init__(self, groups: Sequence[str], norm_type: float) -> None:
        self.norm_type = check_norm_type(norm_type)
        self.names: list[str] = list(dict.fromkeys(groups))
        position = {name: i for i, name in enumerate(self.names)}
        self.members: list[list[int]] = [[] for _ in self.names]
        for tensor_index, group in enumerate(groups):
            self.members[position[group]].append(tensor_index)

    def group_norms(self, norms: Sequence[float]) -> list[float]:
        """Return each group's norm (in ``self.names`` order) from the per-tensor ``norms``."""
        return [
            combine_host_norms([norms[i] for i in members], self.norm_type)
            for members in self.members
        ]
