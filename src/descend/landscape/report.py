"""Compute a configured set of landscapes, write their files and summarise them.

Shared by the training callback and the ``descend-landscape`` command, so both produce the
same files: ``<name>.npz`` and PNG figures per landscape, and ``trajectory.csv`` for the path.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from descend.landscape.directions import parse_normalization
from descend.landscape.evaluation import Evaluator
from descend.landscape.line import interpolation_curve, random_line_curve
from descend.landscape.plane import random_plane_surface, trajectory_plane_surface
from descend.landscape.plotting import contour_figure, curve_figure, save_figure, surface_figure
from descend.landscape.results import Curve, Surface, save_landscape

log = logging.getLogger(__name__)

SURFACES = ("trajectory", "random", "interpolation", "random_line")


@dataclass
class LandscapeSettings:
    """Landscapes to compute and the grids they are computed on.

    Args:
        surfaces: any of ``trajectory`` (plane of the first two principal components of the
            weight snapshots), ``random`` (random plane), ``interpolation`` (line from the
            initial to the final weights) and ``random_line`` (line along one random direction).
        grid_points: ``(x, y)`` grid points of the planes, odd so the centre is on the grid.
        random_extent: ``(x, y)`` half-width of the random plane, in units of the normalised
            directions (1.0 moves each filter by its own norm under filter normalisation).
        trajectory_margin: the trajectory plane spans this many times the path's largest
            projected coordinate on each axis.
        line_points: points of the 1-D curves (of the random line, and on ``[0, 1]`` for the
            interpolation).
        interpolation_margin: the interpolation also covers ``[-margin, 0)`` and
            ``(1, 1 + margin]``.
        normalization: ``filter``, ``layer``, ``model`` or ``none`` for random directions.
        ignore_bias_and_bn: zero direction for biases and normalisation parameters.
        seed: seed of the random directions (a private ``torch.Generator``).
    """

    surfaces: tuple[str, ...] = ("trajectory", "interpolation")
    grid_points: tuple[int, int] = (21, 21)
    random_extent: tuple[float, float] = (1.0, 1.0)
    trajectory_margin: float = 1.25
    line_points: int = 41
    interpolation_margin: float = 0.25
    normalization: str = "filter"
    ignore_bias_and_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.surfaces = tuple(self.surfaces)
        unknown = [name for name in self.surfaces if name not in SURFACES]
        if unknown:
            raise ValueError(
                f"surfaces={list(self.surfaces)} is invalid: {unknown} are not in {SURFACES}"
            )
        self.grid_points = _pair(self.grid_points, "grid_points")
        self.random_extent = _pair(self.random_extent, "random_extent")
        parse_normalization(self.normalization)


def _pair(value, name: str) -> tuple:
    if isinstance(value, int | float):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name}={list(value)} is invalid: give one number or [x, y]")
    return value


def compute_landscapes(
    evaluator: Evaluator,
    settings: LandscapeSettings,
    initial: torch.Tensor | None = None,
    snapshots: torch.Tensor | None = None,
    steps: np.ndarray | None = None,
) -> dict[str, Surface | Curve]:
    """Compute each of ``settings.surfaces`` around the model's current weights.

    ``trajectory`` needs ``snapshots`` (at least three) and ``interpolation`` needs ``initial``;
    a landscape whose input is missing is skipped with a warning.
    """
    results: dict[str, Surface | Curve] = {}
    for name in settings.surfaces:
        started = time.perf_counter()
        if name == "trajectory":
            if snapshots is None or snapshots.shape[0] < 3:
                count = 0 if snapshots is None else snapshots.shape[0]
                log.warning(
                    "Skipping the trajectory plane: it needs at least 3 weight snapshots, "
                    "%d were recorded (record more often or train longer)",
                    count,
                )
                continue
            results[name] = trajectory_plane_surface(
                evaluator, snapshots, steps, settings.grid_points, settings.trajectory_margin
            )
        elif name == "random":
            results[name] = random_plane_surface(
                evaluator,
                settings.seed,
                settings.grid_points,
                settings.random_extent,
                settings.normalization,
                settings.ignore_bias_and_bn,
            )
        elif name == "interpolation":
            if initial is None:
                log.warning("Skipping the interpolation: the initial weights are unknown")
                continue
            results[name] = interpolation_curve(
                evaluator, initial, settings.line_points, settings.interpolation_margin
            )
        elif name == "random_line":
            results[name] = random_line_curve(
                evaluator,
                settings.seed,
                _odd(settings.line_points),
                settings.random_extent[0],
                settings.normalization,
                settings.ignore_bias_and_bn,
            )
        log.info("Landscape %s computed in %.2f s", name, time.perf_counter() - started)
    return results


def _odd(count: int) -> int:
    return count if count % 2 == 1 else count + 1


def write_landscapes(
    results: dict[str, Surface | Curve],
    output_dir: str | Path,
    suffix: str = "",
    figures: bool = True,
) -> dict[str, list[Path]]:
    """Write ``<name><suffix>.npz`` and, with ``figures``, the PNG figures of each result.

    Returns the paths of the figures per landscape name (contour first for planes).
    """
    output_dir = Path(output_dir)
    figure_paths: dict[str, list[Path]] = {}
    for name, result in results.items():
        save_landscape(result, output_dir / f"{name}{suffix}.npz")
        if isinstance(result, Surface) and result.trajectory is not None:
            write_trajectory_csv(result, output_dir / f"{name}{suffix}_path.csv")
        if not figures:
            continue
        if isinstance(result, Surface):
            contour = save_figure(
                contour_figure(result), output_dir / f"{name}{suffix}_contour.png"
            )
            surface = save_figure(
                surface_figure(result), output_dir / f"{name}{suffix}_surface.png"
            )
            figure_paths[name] = [contour, surface]
        else:
            figure_paths[name] = [
                save_figure(curve_figure(result), output_dir / f"{name}{suffix}.png")
            ]
    return figure_paths


def write_trajectory_csv(surface: Surface, path: Path) -> None:
    """Write one row per snapshot: step, plane coordinates, true loss, plane loss, residual."""
    trajectory = surface.trajectory
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "a", "b", "true_loss", "plane_loss", "residual"])
        for row in zip(
            trajectory.steps,
            trajectory.coordinates[:, 0],
            trajectory.coordinates[:, 1],
            trajectory.true_loss,
            trajectory.plane_loss,
            trajectory.residual,
            strict=True,
        ):
            writer.writerow([int(row[0]), *(f"{value:.6g}" for value in row[1:])])


def summary_metrics(
    results: dict[str, Surface | Curve], prefix: str = "landscape"
) -> dict[str, float]:
    """Scalars worth logging: the centre loss of each plane, the explained variance of the
    principal components, the largest off-plane residual, the interpolation barrier and
    monotonicity (1.0 or 0.0)."""
    metrics: dict[str, float] = {}
    for name, result in results.items():
        key = f"{prefix}/{name}"
        if isinstance(result, Surface):
            metrics[f"{key}/centre_loss"] = result.centre_loss()
            if result.explained_variance_ratio is not None:
                metrics[f"{key}/explained_variance_pc1"] = float(result.explained_variance_ratio[0])
                metrics[f"{key}/explained_variance_pc2"] = float(result.explained_variance_ratio[1])
            if result.trajectory is not None:
                metrics[f"{key}/max_residual"] = float(np.nanmax(result.trajectory.residual))
        elif result.barrier_height is not None:
            metrics[f"{key}/barrier_height"] = result.barrier_height
            metrics[f"{key}/monotone"] = float(result.monotone)
    return metrics
