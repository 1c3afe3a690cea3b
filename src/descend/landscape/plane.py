"""Two-dimensional surfaces: a random plane and the plane of the optimisation path."""

from __future__ import annotations

import logging

import numpy as np
import torch

from descend.landscape.directions import Normalization, random_plane
from descend.landscape.evaluation import Evaluator, plane_weights, stacked_weights
from descend.landscape.parameters import ParameterSpace
from descend.landscape.pca import trajectory_pca
from descend.landscape.results import Surface, Trajectory
from descend.landscape.trajectory import project_onto_plane

log = logging.getLogger(__name__)


def grid_coordinates(extent: float, num_points: int) -> np.ndarray:
    """Return ``numpy.linspace(-extent, extent, num_points)``; ``num_points`` must be odd so
    that 0, the trained point, is a grid point."""
    if not extent > 0:
        raise ValueError(f"extent={extent} is invalid: it must be a positive number")
    if num_points < 3 or num_points % 2 == 0:
        raise ValueError(
            f"num_points={num_points} is invalid: use an odd number of at least 3, so the "
            "trained point (0) lies on the grid"
        )
    return np.linspace(-extent, extent, num_points)


def evaluate_grid(
    evaluator: Evaluator,
    origin: torch.Tensor,
    directions: torch.Tensor,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return loss, accuracy and standard error on the grid, each ``[len(y), len(x)]``."""
    grid_x, grid_y = np.meshgrid(x, y, indexing="xy")
    coefficients = torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
    device = evaluator.device
    weights = plane_weights(origin.to(device), directions.to(device), coefficients)
    metrics = evaluator(weights, coefficients.shape[0])
    shape = (len(y), len(x))
    return (
        metrics.loss.reshape(shape),
        metrics.accuracy.reshape(shape),
        metrics.standard_error.reshape(shape),
    )


def random_plane_surface(
    evaluator: Evaluator,
    seed: int,
    num_points: tuple[int, int] = (21, 21),
    extent: tuple[float, float] = (1.0, 1.0),
    normalization: str | Normalization = Normalization.FILTER,
    ignore_bias_and_bn: bool = True,
) -> Surface:
    """Compute the loss on ``theta + a d_1 + b d_2`` for two orthogonal normalised random
    directions.

    ``num_points`` and ``extent`` are ``(x, y)``: ``a`` runs over
    ``linspace(-extent[0], extent[0], num_points[0])``. With filter normalisation, ``a = 1``
    moves every filter by its own norm.
    """
    space = ParameterSpace.of(evaluator.model)
    origin = space.vector(evaluator.model)
    directions = random_plane(origin, space, seed, normalization, ignore_bias_and_bn)
    x = grid_coordinates(extent[0], num_points[0])
    y = grid_coordinates(extent[1], num_points[1])
    loss, accuracy, standard_error = evaluate_grid(evaluator, origin, directions, x, y)
    settings = {
        "normalization": str(Normalization(normalization).value),
        "ignore_bias_and_bn": ignore_bias_and_bn,
        **evaluator.settings(),
    }
    return Surface("random", x, y, loss, accuracy, standard_error, seed, settings)


def trajectory_plane_surface(
    evaluator: Evaluator,
    snapshots: torch.Tensor,
    steps: np.ndarray,
    num_points: tuple[int, int] = (21, 21),
    margin: float = 1.25,
) -> Surface:
    """Compute the loss on the plane of the first two principal components of
    ``snapshots - final``.

    ``snapshots`` ``[n, size]`` are flat weight vectors (CPU is fine) recorded at ``steps``. The
    model's current weights are the final point and the centre of the grid. Each axis spans
    ``margin`` times the largest projected coordinate of the trajectory on that axis.
    """
    space = ParameterSpace.of(evaluator.model)
    final = space.vector(evaluator.model).cpu()
    pca = trajectory_pca(snapshots.cpu().float(), final)
    directions = pca.directions.float()
    projection = project_onto_plane(snapshots.cpu(), final, directions)

    extents = []
    for axis in range(2):
        largest = float(projection.coordinates[:, axis].abs().max())
        extents.append(margin * largest if largest > 0 else 1.0)
    x = grid_coordinates(extents[0], num_points[0])
    y = grid_coordinates(extents[1], num_points[1])
    loss, accuracy, standard_error = evaluate_grid(evaluator, final, directions, x, y)

    device = evaluator.device
    true_metrics = evaluator(stacked_weights(snapshots, device), snapshots.shape[0])
    coordinates = projection.coordinates.float()
    plane_metrics = evaluator(
        plane_weights(final.to(device), directions.to(device), coordinates), len(coordinates)
    )
    trajectory = Trajectory(
        steps=np.asarray(steps),
        coordinates=projection.coordinates.numpy(),
        true_loss=true_metrics.loss,
        plane_loss=plane_metrics.loss,
        residual=projection.residual.numpy(),
    )
    settings = {"margin": margin, "num_snapshots": int(snapshots.shape[0])}
    settings.update(evaluator.settings())
    return Surface(
        "trajectory",
        x,
        y,
        loss,
        accuracy,
        standard_error,
        seed=None,
        settings=settings,
        explained_variance_ratio=pca.explained_variance_ratio.numpy(),
        trajectory=trajectory,
    )
