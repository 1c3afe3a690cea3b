"""Figures of landscapes, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from descend.landscape.results import Curve, Surface

DPI = 90


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _log_levels(values: np.ndarray, count: int = 24) -> np.ndarray:
    finite = values[np.isfinite(values) & (values > 0)]
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low * 1.01
    return np.geomspace(low, high, count)


def contour_figure(surface: Surface, title: str | None = None) -> Figure:
    """Filled contour of the loss (log-spaced levels) with the projected trajectory, if any."""
    figure = _new_figure((6.0, 5.5 if surface.trajectory is not None else 5.0))
    axes = figure.add_subplot()
    levels = _log_levels(surface.loss)
    filled = axes.contourf(
        surface.x, surface.y, surface.loss, levels=levels, norm=LogNorm(), cmap="viridis"
    )
    axes.contour(
        surface.x, surface.y, surface.loss, levels=levels[::3], colors="white", linewidths=0.5
    )
    figure.colorbar(filled, ax=axes, label="loss", format="%.3g")
    axes.plot(
        0,
        0,
        marker="*",
        color="red",
        markersize=14,
        markeredgecolor="black",
        linestyle="none",
        label="final",
        zorder=5,
    )

    if surface.trajectory is not None:
        path = surface.trajectory.coordinates
        axes.plot(path[:, 0], path[:, 1], color="white", linewidth=1.0)
        points = axes.scatter(
            path[:, 0], path[:, 1], c=surface.trajectory.steps, cmap="autumn", s=12, zorder=3
        )
        figure.colorbar(points, ax=axes, label="step", location="bottom", shrink=0.6, aspect=40)
        axes.plot(
            path[0, 0],
            path[0, 1],
            marker="o",
            color="white",
            markeredgecolor="black",
            markersize=9,
            linestyle="none",
            label="start",
            zorder=4,
        )
        residual = surface.trajectory.residual
        axes.text(
            0.02,
            0.02,
            f"off-plane residual: median {np.nanmedian(residual):.2f}, "
            f"max {np.nanmax(residual):.2f}",
            transform=axes.transAxes,
            color="white",
            fontsize=8,
        )

    axes.set_xlabel(_axis_label(surface, 0))
    axes.set_ylabel(_axis_label(surface, 1))
    axes.set_aspect("auto")
    axes.legend(loc="upper right", fontsize=8)
    axes.set_title(title or _surface_title(surface), fontsize=10)
    return figure


def surface_figure(surface: Surface, title: str | None = None) -> Figure:
    """3-D view of ``log10(loss)`` over the grid."""
    figure = _new_figure((6.0, 5.0))
    axes = figure.add_subplot(projection="3d")
    grid_x, grid_y = np.meshgrid(surface.x, surface.y, indexing="xy")
    axes.plot_surface(grid_x, grid_y, np.log10(surface.loss), cmap="viridis", linewidth=0)
    axes.set_xlabel(_axis_label(surface, 0, short=True))
    axes.set_ylabel(_axis_label(surface, 1, short=True))
    axes.set_zlabel("log10 loss")
    axes.set_title(title or _surface_title(surface), fontsize=10)
    return figure


def curve_figure(curve: Curve, title: str | None = None) -> Figure:
    """Loss (with a band of one standard error) and accuracy along a line."""
    figure = _new_figure((6.0, 4.0))
    axes = figure.add_subplot()
    axes.plot(curve.alpha, curve.loss, color="tab:blue", label="loss")
    if np.all(np.isfinite(curve.standard_error)):
        axes.fill_between(
            curve.alpha,
            curve.loss - curve.standard_error,
            curve.loss + curve.standard_error,
            color="tab:blue",
            alpha=0.25,
            linewidth=0,
        )
    positive = curve.loss[curve.loss > 0]
    if positive.size and positive.max() / positive.min() > 10:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(FuncFormatter(_label_twos_and_fives))
    axes.set_ylabel("loss", color="tab:blue")
    if np.all(np.isfinite(curve.accuracy)):
        twin = axes.twinx()
        twin.plot(curve.alpha, curve.accuracy, color="tab:orange", linestyle="--")
        twin.set_ylabel("accuracy", color="tab:orange")
        twin.set_ylim(0, 1)

    if curve.kind == "interpolation":
        for end in (0.0, 1.0):
            axes.axvline(end, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("alpha (0: initial weights, 1: final weights)")
        default_title = (
            f"Interpolation: barrier height {curve.barrier_height:.3g}, "
            f"{'monotone' if curve.monotone else 'not monotone'}"
        )
    else:
        axes.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel(f"alpha ({curve.settings.get('normalization', '')}-normalised direction)")
        default_title = f"Random direction through the final weights (seed {curve.seed})"
    axes.set_title(title or default_title, fontsize=10)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _axis_label(surface: Surface, axis: int, short: bool = False) -> str:
    if short:
        return f"PC{axis + 1}" if surface.kind == "trajectory" else f"direction {axis + 1}"
    if surface.kind == "trajectory" and surface.explained_variance_ratio is not None:
        share = 100 * float(surface.explained_variance_ratio[axis])
        return f"PC{axis + 1} ({share:.1f}% of the path's variance)"
    normalization = surface.settings.get("normalization", "")
    return f"direction {axis + 1} ({normalization}-normalised)"


def _surface_title(surface: Surface) -> str:
    if surface.kind == "trajectory":
        return "Loss on the plane of the optimisation path"
    return f"Loss on a random plane (seed {surface.seed})"


def _label_twos_and_fives(value: float, _position: int) -> str:
    """Label the minor ticks 2 and 5 of each decade of a log axis and leave the others blank."""
    if value <= 0:
        return ""
    leading = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(leading) in (2, 5) else ""
