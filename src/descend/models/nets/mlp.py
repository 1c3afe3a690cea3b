"""Fully connected network for flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is invalid: use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> [BatchNorm] -> activation -> [Dropout]`` per hidden layer.

    Args:
        input_shape: shape of one sample, e.g. ``[1, 8, 8]``; the first layer takes its product.
        num_classes: number of output logits.
        hidden_sizes: width of each hidden layer; an empty list gives multinomial logistic
            regression.
        activation: ``relu``, ``tanh``, ``gelu`` or ``sigmoid``.
        batch_norm: insert ``BatchNorm1d`` after each hidden ``Linear``.
        dropout: dropout probability after each hidden activation (0 disables it).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (128,),
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} is invalid: it must lie in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in hidden_sizes:
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
