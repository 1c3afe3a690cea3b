"""One-dimensional curves: the interpolation from initial to final weights, and a random line."""

from __future__ import annotations

import numpy as np
import torch

from descend.landscape.directions import Normalization, random_direction
from descend.landscape.evaluation import Evaluator, plane_weights
from descend.landscape.parameters import ParameterSpace
from descend.landscape.plane import grid_coordinates
from descend.landscape.results import Curve


def interpolation_alphas(num_points: int, margin: float) -> tuple[np.ndarray, int, int]:
    """Return ``linspace(-margin, 1 + margin, n)`` whose spacing puts 0 and 1 on grid points,
    and the indices of 0 and 1.

    ``num_points`` points cover ``[0, 1]``; ``round(margin * (num_points - 1))`` more lie on
    each side.
    """
    if num_points < 2:
        raise ValueError(f"num_points={num_points} is invalid: it must be at least 2")
    if margin < 0:
        raise ValueError(f"margin={margin} is invalid: it must be 0 or positive")
    extra = round(margin * (num_points - 1))
    step = 1.0 / (num_points - 1)
    alphas = np.linspace(-extra * step, 1.0 + extra * step, num_points + 2 * extra)
    start, end = extra, extra + num_points - 1
    alphas[start], alphas[end] = 0.0, 1.0
    return alphas, start, end


def barrier_height(loss: np.ndarray) -> float:
    """Return ``max(loss) - max(loss[0], loss[-1])`` for a curve from one end point to the
    other (0 when the curve never rises above its higher end)."""
    return float(np.max(loss) - max(loss[0], loss[-1]))


def is_monotone(loss: np.ndarray) -> bool:
    """Return whether ``loss`` never increases from one point to the next."""
    return bool(np.all(np.diff(loss) <= 0))


def interpolation_curve(
    evaluator: Evaluator,
    initial: torch.Tensor,
    num_points: int = 21,
    margin: float = 0.25,
) -> Curve:
    """Compute the loss on ``(1 - alpha) theta_0 + alpha theta_T`` (Goodfellow et al. 2015),
    from the initial weights ``initial`` (flat) to the model's current weights."""
    space = ParameterSpace.of(evaluator.model)
    final = space.vector(evaluator.model)
    device = evaluator.device
    origin = initial.to(device, torch.float32)
    direction = (final.to(device) - origin).unsqueeze(0)
    alphas, start, end = interpolation_alphas(num_points, margin)

    coefficients = torch.from_numpy(alphas).unsqueeze(1)
    metrics = evaluator(plane_weights(origin, direction, coefficients), len(alphas))
    inside = metrics.loss[start : end + 1]
    settings = {"margin": margin, **evaluator.settings()}
    return Curve(
        "interpolation",
        alphas,
        metrics.loss,
        metrics.accuracy,
        metrics.standard_error,
        settings=settings,
        barrier_height=barrier_height(inside),
        monotone=is_monotone(inside),
    )


def random_line_curve(
    evaluator: Evaluator,
    seed: int,
    num_points: int = 21,
    extent: float = 1.0,
    normalization: str | Normalization = Normalization.FILTER,
    ignore_bias_and_bn: bool = True,
) -> Curve:
    """Compute the loss on ``theta_T + alpha d`` along one normalised random direction ``d``."""
    space = ParameterSpace.of(evaluator.model)
    final = space.vector(evaluator.model)
    generator = torch.Generator().manual_seed(seed)
    direction = random_direction(final, space, generator, normalization, ignore_bias_and_bn)
    alphas = grid_coordinates(extent, num_points)

    coefficients = torch.from_numpy(alphas).unsqueeze(1)
    device = evaluator.device
    weights = plane_weights(final.to(device), direction.to(device).unsqueeze(0), coefficients)
    metrics = evaluator(weights, len(alphas))
    settings = {
        "normalization": str(Normalization(normalization).value),
        "ignore_bias_and_bn": ignore_bias_and_bn,
        **evaluator.settings(),
    }
    return Curve(
        "random",
        alphas,
        metrics.loss,
        metrics.accuracy,
        metrics.standard_error,
        seed=seed,
        settings=settings,
    )
