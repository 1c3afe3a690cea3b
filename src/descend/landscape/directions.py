"""Random directions in parameter space, normalised to the scale of the weights.

Filter-wise normalisation follows Li et al. (2018), "Visualizing the Loss Landscape of Neural
Nets". Each filter of a Gaussian direction (one output row of a weight tensor, ``weight[i]``) is
rescaled to the norm of the matching filter of the weights. The picture then does not depend on
the scale invariance of ReLU networks.
"""

from __future__ import annotations

from enum import Enum

import torch

from descend.landscape.parameters import ParameterSpace


class Normalization(str, Enum):
    """Rescaling of a random direction to the weights ``theta``.

    ``filter``: each filter ``d[i]`` gets the norm of ``theta[i]``. ``layer``: each parameter
    tensor gets the norm of the matching tensor of ``theta``. ``model``: the whole direction gets
    the norm of ``theta``. ``none``: the raw standard Gaussian draw.
    """

    FILTER = "filter"
    LAYER = "layer"
    MODEL = "model"
    NONE = "none"


def parse_normalization(value: str | Normalization) -> Normalization:
    try:
        return Normalization(value)
    except ValueError:
        choices = [member.value for member in Normalization]
        raise ValueError(f"normalization={value!r} is invalid: use one of {choices}") from None


def normalize_direction(
    direction: torch.Tensor,
    origin: torch.Tensor,
    space: ParameterSpace,
    normalization: str | Normalization = Normalization.FILTER,
    ignore_bias_and_bn: bool = True,
) -> torch.Tensor:
    """Return ``direction`` rescaled to the scale of ``origin`` (both flat vectors).

    With ``ignore_bias_and_bn`` the one-dimensional parameters (biases, BatchNorm and LayerNorm
    scales and shifts) get a zero direction. Otherwise filter normalisation treats each of them
    as a single filter. A filter of ``origin`` that is exactly zero gives a zero filter.
    """
    normalization = parse_normalization(normalization)
    result = direction.clone()
    included = torch.ones_like(result, dtype=torch.bool)
    if ignore_bias_and_bn:
        included = space.is_filter_parameter().to(result.device)
        result[~included] = 0.0

    if normalization is Normalization.MODEL:
        target = origin[included].norm()
        return result * (target / result.norm().clamp_min(torch.finfo(result.dtype).tiny))

    if normalization is Normalization.NONE:
        return result

    for _, shape, part in space.slices():
        piece = result[part]
        weight = origin[part]
        if ignore_bias_and_bn and len(shape) < 2:
            continue
        if normalization is Normalization.FILTER and len(shape) >= 2:
            rows = piece.view(shape[0], -1)
            target = weight.view(shape[0], -1).norm(dim=1, keepdim=True)
            current = rows.norm(dim=1, keepdim=True)
        else:
            rows = piece.view(1, -1)
            target = weight.norm().view(1, 1)
            current = rows.norm().view(1, 1)
        rows.mul_(target / current.clamp_min(torch.finfo(rows.dtype).tiny))
    return result


def orthogonalize(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return ``second`` made orthogonal to ``first`` by one Gram-Schmidt step, then rescaled
    to its former norm.

    Run it after normalisation: normalising afterwards rescales filters unequally and undoes the
    orthogonality. The projection is computed in float64, which leaves ``|cos| < 1e-6`` between
    float32 directions. The final rescaling by a scalar keeps the orthogonality.
    """
    first64 = first.double()
    second64 = second.double()
    projected = second64 - (first64 @ second64) / (first64 @ first64) * first64
    projected *= second64.norm() / projected.norm()
    return projected.to(second.dtype)


def random_direction(
    origin: torch.Tensor,
    space: ParameterSpace,
    generator: torch.Generator,
    normalization: str | Normalization = Normalization.FILTER,
    ignore_bias_and_bn: bool = True,
) -> torch.Tensor:
    """Draw a standard Gaussian direction from ``generator`` and normalise it to ``origin``.

    The draw happens on the CPU, so a seed gives the same direction on every device.
    """
    raw = torch.randn(space.size, generator=generator, dtype=torch.float32)
    return normalize_direction(
        raw, origin.detach().cpu().float(), space, normalization, ignore_bias_and_bn
    ).to(origin.device)


def random_plane(
    origin: torch.Tensor,
    space: ParameterSpace,
    seed: int,
    normalization: str | Normalization = Normalization.FILTER,
    ignore_bias_and_bn: bool = True,
) -> torch.Tensor:
    """Return two orthogonal normalised random directions, shape ``[2, size]``.

    Both come from a private ``torch.Generator`` seeded with ``seed``; the global random
    streams are not touched.
    """
    generator = torch.Generator().manual_seed(seed)
    first = random_direction(origin, space, generator, normalization, ignore_bias_and_bn)
    second = random_direction(origin, space, generator, normalization, ignore_bias_and_bn)
    return torch.stack([first, orthogonalize(first, second)])
