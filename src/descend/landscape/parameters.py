"""Flat views of a model's parameters, the coordinates every landscape works in."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterSpace:
    """The layout of a model's parameters in one flat vector.

    The vector concatenates ``model.named_parameters()`` in registration order, each tensor
    flattened in row-major order. Buffers (BatchNorm running statistics) are not part of it.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParameterSpace:
        named = list(model.named_parameters())
        if not named:
            raise ValueError(f"{type(model).__name__} has no parameters: there is no landscape")
        return cls(tuple(name for name, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def slices(self) -> Iterator[tuple[str, torch.Size, slice]]:
        """Yield each parameter's name, shape and slice of the flat vector."""
        offset = 0
        for name, shape, numel in zip(self.names, self.shapes, self.numels, strict=True):
            yield name, shape, slice(offset, offset + numel)
            offset += numel

    def vector(self, model: nn.Module) -> torch.Tensor:
        """Return a detached copy of the model's parameters as one flat float32 vector."""
        parameters = dict(model.named_parameters())
        missing = [name for name in self.names if name not in parameters]
        if missing:
            raise ValueError(f"the model has no parameters named {missing}: it is another model")
        return torch.cat([parameters[n].detach().reshape(-1).float() for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``flat`` (shape ``[size]`` or ``[points, size]``) into per-parameter tensors.

        A 2-D input gives tensors of shape ``[points, *parameter_shape]``, the stacked
        parameters that ``torch.func.vmap`` maps over.
        """
        if flat.shape[-1] != self.size:
            raise ValueError(
                f"a flat vector of {flat.shape[-1]} values does not match the model's "
                f"{self.size} parameters"
            )
        leading = flat.shape[:-1]
        return {
            name: flat[..., part].reshape(*leading, *shape) for name, shape, part in self.slices()
        }

    def is_filter_parameter(self) -> torch.Tensor:
        """Return a boolean mask over the flat vector: True for parameters with two or more
        dimensions (weights of linear and convolutional layers), False for biases and
        normalisation scales and shifts."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        for _, shape, part in self.slices():
            mask[part] = len(shape) >= 2
        return mask


def write_parameters(model: nn.Module, space: ParameterSpace, flat: torch.Tensor) -> None:
    """Copy the flat vector ``flat`` into the model's parameters in place (no autograd)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in space.unflatten(flat).items():
            parameters[name].copy_(value)
