"""The two-parameter experiment: the exact loss surface of ``w2 * tanh(w1 * x)`` and the paths
that full-batch gradient descent and SGD took on it.

For data ``(x_i, y_i)``, ``i = 1..n``, and residuals ``r_i = w2 tanh(w1 x_i) - y_i``, the mean
squared error and its gradient are::

    L(w1, w2) = (1/n) sum_i r_i^2
    dL/dw1    = (2/n) sum_i r_i w2 x_i (1 - tanh^2(w1 x_i))
    dL/dw2    = (2/n) sum_i r_i tanh(w1 x_i)

``L`` is even in ``(w1, w2)``, so its minima come in mirror-image pairs ``w*`` and ``-w*``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import hydra
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.optimize import minimize

from descend.callbacks.weight_trajectory import TRAJECTORY_FILE, load_trajectory
from descend.experiments.runs import Run, Summary

log = logging.getLogger(__name__)

FULL_BATCH_STYLE = {"linewidth": 2.0, "linestyle": "-"}
MINI_BATCH_STYLE = {"linewidth": 0.7, "linestyle": "-", "alpha": 0.75}


def mse_loss(w1: np.ndarray, w2: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return ``L(w1, w2)`` for weight arrays of any (equal) shape, on samples ``x``, ``y``."""
    w1 = np.asarray(w1, dtype=np.float64)[..., None]
    w2 = np.asarray(w2, dtype=np.float64)[..., None]
    residuals = w2 * np.tanh(w1 * x) - y
    return np.mean(residuals**2, axis=-1)


def mse_gradient(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the analytic gradient ``[dL/dw1, dL/dw2]`` at ``weights = [w1, w2]``."""
    w1, w2 = float(weights[0]), float(weights[1])
    hidden = np.tanh(w1 * x)
    residuals = w2 * hidden - y
    grad_w1 = 2.0 * np.mean(residuals * w2 * x * (1.0 - hidden**2))
    grad_w2 = 2.0 * np.mean(residuals * hidden)
    return np.array([grad_w1, grad_w2])


def nearest_minimum(start: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the local minimum of ``L`` that BFGS reaches from ``start`` (gradient norm < 1e-10)."""
    result = minimize(
        lambda w: (float(mse_loss(w[0], w[1], x, y)), mse_gradient(w, x, y)),
        np.asarray(start, dtype=np.float64),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-10},
    )
    return result.x


@dataclass
class Path2D:
    """One run's weights ``[T, 2]`` after each optimizer step, with its seed and batch size."""

    seed: int
    batch_size: int
    full_batch: bool
    weights: np.ndarray


def training_data(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a run's training split from its config (the samples depend only on
    ``data.data_seed``) and return ``x`` and ``y`` as float64 vectors."""
    datamodule = hydra.utils.instantiate(run.config.data)
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    return inputs[:, 0].double().numpy(), targets.double().numpy()


def load_paths(runs: list[Run]) -> list[Path2D]:
    paths = []
    for run in runs:
        trajectory_path = run.path / TRAJECTORY_FILE
        if not trajectory_path.is_file():
            log.warning("%s has no %s: its path is not drawn", run.path, TRAJECTORY_FILE)
            continue
        weights = load_trajectory(trajectory_path)["weights"]
        if weights.shape[1] != 2:
            raise ValueError(
                f"{trajectory_path} has {weights.shape[1]} parameters per step: the "
                "two-parameter figure needs exactly 2 (model/net=tanh_unit)"
            )
        num_train = int(run.config.data.num_train)
        paths.append(Path2D(run.seed, run.batch_size, run.batch_size >= num_train, weights))
    return paths


def grid_extent(paths: list[Path2D], minimum: float = 2.5) -> float:
    """Return a half-width that contains every path, and at least ``minimum``."""
    largest = max((float(np.abs(p.weights).max()) for p in paths), default=0.0)
    return max(minimum, 1.1 * largest)


def plot_surface_with_paths(
    x: np.ndarray,
    y: np.ndarray,
    paths: list[Path2D],
    minima: list[np.ndarray],
    grid_points: int = 201,
) -> Figure:
    """Draw ``log10 L`` over a square grid with every path: full-batch GD thick, SGD thin, one
    colour per seed; circles mark starts, crosses the minima."""
    extent = grid_extent(paths)
    axis = np.linspace(-extent, extent, grid_points)
    w1, w2 = np.meshgrid(axis, axis)
    surface = mse_loss(w1, w2, x, y)

    figure = Figure(figsize=(6.4, 6.4))
    ax = figure.subplots()
    filled = ax.contourf(w1, w2, np.log10(surface), levels=30, cmap="viridis")
    ax.contour(w1, w2, np.log10(surface), levels=15, colors="white", linewidths=0.3, alpha=0.6)
    figure.colorbar(filled, ax=ax, label="log10 training loss (MSE)")

    seeds = sorted({p.seed for p in paths})
    colours = colormaps["tab10"]
    for path in paths:
        colour = colours(seeds.index(path.seed) % 10)
        style = FULL_BATCH_STYLE if path.full_batch else MINI_BATCH_STYLE
        ax.plot(path.weights[:, 0], path.weights[:, 1], color=colour, **style)
        ax.plot(*path.weights[0], "o", color=colour, markeredgecolor="black", markersize=6)
    for point in minima:
        ax.plot(*point, "X", color="red", markeredgecolor="white", markersize=11)

    handles = [
        Line2D([], [], color="black", label="full-batch GD", **FULL_BATCH_STYLE),
        Line2D([], [], color="black", label="mini-batch SGD", **MINI_BATCH_STYLE),
        Line2D([], [], marker="o", color="grey", linestyle="", label="start"),
        Line2D([], [], marker="X", color="red", linestyle="", label="minimum"),
    ]
    handles += [
        Line2D([], [], color=colours(i % 10), label=f"seed {seed}") for i, seed in enumerate(seeds)
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8)
    ax.set_xlabel("w1 (input weight)")
    ax.set_ylabel("w2 (output weight)")
    ax.set_title("Exact loss surface of w2 * tanh(w1 * x)")
    figure.tight_layout()
    return figure


def summarize(runs: list[Run]) -> Summary:
    """Build the table (one row per run) and the surface figure of a ``two_params`` multirun."""
    x, y = training_data(runs[0])
    paths = load_paths(runs)
    by_run = {(p.seed, p.batch_size): p for p in paths}

    rows, minima = [], []
    for run in runs:
        path = by_run.get((run.seed, run.batch_size))
        row = {"seed": run.seed, "batch_size": run.batch_size}
        if path is not None:
            final = path.weights[-1]
            minimum = nearest_minimum(final, x, y)
            if not any(np.allclose(minimum, m, atol=1e-4) for m in minima):
                minima.append(minimum)
            row |= {
                "w1_start": path.weights[0, 0],
                "w2_start": path.weights[0, 1],
                "w1_final": final[0],
                "w2_final": final[1],
                "grad_norm_final": float(np.linalg.norm(mse_gradient(final, x, y))),
                "minimum": f"({minimum[0]:+.3f}, {minimum[1]:+.3f})",
                "distance_to_minimum": float(np.linalg.norm(final - minimum)),
                # On the whole training set, unlike a mini-batch run's logged train/loss.
                "train_loss_final": float(mse_loss(final[0], final[1], x, y)),
            }
        rows.append(row)
    figure = plot_surface_with_paths(x, y, paths, minima)
    return Summary(rows=rows, figures={"surface": figure})
