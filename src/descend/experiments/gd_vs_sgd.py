"""The ``gd_vs_sgd`` experiment: full-batch gradient descent against mini-batch SGD at equal
epochs, over seeds. Summary: final training and test loss, when the convergence detectors fired,
and the gradient noise scale, per batch size."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from descend.convergence import ConvergenceReason
from descend.convergence.plots import MARKERS
from descend.convergence.plots import load_run as load_loss_curve
from descend.experiments.runs import Run, Summary

NOISE_SCALE_KEY = "noise_scale/b_simple"


def detections(run: Run) -> list[tuple[int, ConvergenceReason]]:
    """Return the ``(step, reason)`` of every detection the convergence callback logged."""
    _, steps = run.series("convergence/step")
    _, codes = run.series("convergence/reason")
    reasons = list(ConvergenceReason)
    return [(int(step), reasons[int(code) - 1]) for step, code in zip(steps, codes, strict=True)]


def first_convergence(run: Run) -> tuple[int, ConvergenceReason] | None:
    """Return the first detection that is a convergence (not a divergence), if any."""
    for step, reason in detections(run):
        if reason.is_convergence:
            return step, reason
    return None


def final_train_loss(run: Run) -> float:
    """Return the mean training loss over the last epoch (every step's loss must be logged)."""
    curve = load_loss_curve(run.path)
    if len(curve.losses) == 0:
        return math.nan
    last_epoch = curve.epochs >= curve.epochs[-1] - 1 + 1e-9
    return float(np.mean(curve.losses[last_epoch]))


def run_row(run: Run) -> dict:
    curve = load_loss_curve(run.path)
    steps_per_epoch = _steps_per_epoch(curve)
    row = {
        "batch_size": run.batch_size,
        "seed": run.seed,
        "train_loss": final_train_loss(run),
        "val_loss": run.last("val/loss"),
        "test_loss": run.last("test/loss"),
        "converged_step": math.nan,
        "converged_epoch": math.nan,
        "converged_by": "none",
        "noise_scale": run.last(NOISE_SCALE_KEY),
    }
    convergence = first_convergence(run)
    if convergence is not None:
        step, reason = convergence
        row["converged_step"] = step
        row["converged_epoch"] = step / steps_per_epoch
        row["converged_by"] = reason.value
    return row


def _steps_per_epoch(curve) -> float:
    # The loss logged at step s (after s updates) sits at epoch s / steps_per_epoch.
    positive = curve.epochs > 0
    if not positive.any():
        return 1.0
    index = int(np.argmax(positive))
    return index / curve.epochs[index]


def epoch_mean_losses(curve) -> tuple[np.ndarray, np.ndarray]:
    """Return the end of each epoch (1, 2, ...) and the mean training loss of its steps."""
    bins = np.floor(curve.epochs + 1e-9).astype(int)
    epochs = np.unique(bins)
    means = np.array([curve.losses[bins == epoch].mean() for epoch in epochs])
    return epochs + 1, means


def plot_epoch_losses(runs: list[Run], ax) -> None:
    """Draw each run's training loss averaged over each epoch (one colour per batch size) and
    mark the detections of the convergence callback at their epochs."""
    sizes = sorted({run.batch_size for run in runs}, reverse=True)
    colours = {size: colormaps["tab10"](index) for index, size in enumerate(sizes)}
    labelled = set()
    for run in runs:
        curve = load_loss_curve(run.path)
        epochs, means = epoch_mean_losses(curve)
        colour = colours[run.batch_size]
        label = None if run.batch_size in labelled else f"batch size {run.batch_size}"
        labelled.add(run.batch_size)
        ax.plot(epochs, means, color=colour, linewidth=1.2, alpha=0.8, label=label)
        for epoch, reason in curve.detections:
            loss = float(np.interp(epoch, epochs, means))
            ax.plot(epoch, loss, MARKERS[reason], color=colour, markeredgecolor="black")
    for reason, marker in MARKERS.items():
        ax.plot([], [], marker, color="grey", markeredgecolor="black", label=reason.value)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch)")
    ax.set_title("Training loss; markers: detections")
    ax.legend(fontsize=7, ncol=2)


def plot_summary(runs: list[Run], rows: list[dict]) -> Figure:
    """Three panels: loss against epochs with detections, final losses per batch size, and the
    epoch of the first convergence detection per batch size."""
    figure = Figure(figsize=(15, 4.5))
    left, middle, right = figure.subplots(1, 3)
    plot_epoch_losses(runs, left)

    by_size: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_size[row["batch_size"]].append(row)
    sizes = sorted(by_size, reverse=True)
    positions = np.arange(len(sizes))
    for offset, key, label in (
        (-0.1, "train_loss", "train (last epoch)"),
        (0.1, "test_loss", "test"),
    ):
        for position, size in zip(positions, sizes, strict=True):
            values = [row[key] for row in by_size[size] if not math.isnan(row[key])]
            middle.plot(
                [position + offset] * len(values),
                values,
                "o",
                alpha=0.7,
                color="tab:blue" if key == "train_loss" else "tab:orange",
                label=label if position == 0 else None,
            )
    middle.set_xticks(positions, [str(size) for size in sizes])
    middle.set_xlabel("batch size (1437 = full batch)")
    middle.set_ylabel("final loss")
    middle.set_yscale("log")
    middle.legend(fontsize=8)
    middle.set_title("Final loss, one point per seed")

    for position, size in zip(positions, sizes, strict=True):
        epochs = [row["converged_epoch"] for row in by_size[size]]
        reached = [epoch for epoch in epochs if not math.isnan(epoch)]
        right.plot([position] * len(reached), reached, "o", color="tab:green", alpha=0.7)
        missing = len(epochs) - len(reached)
        if missing:
            right.annotate(
                f"{missing} without\ndetection",
                (position, 0),
                ha="center",
                fontsize=8,
                xytext=(0, 5),
                textcoords="offset points",
            )
        noise = [row["noise_scale"] for row in by_size[size] if not math.isnan(row["noise_scale"])]
        if noise:
            right.annotate(
                f"B_simple {np.mean(noise):.3g}",
                (position, 1.0),
                ha="center",
                fontsize=8,
                xycoords=("data", "axes fraction"),
                xytext=(0, -12),
                textcoords="offset points",
            )
    right.set_xticks(positions, [str(size) for size in sizes])
    right.set_xlim(-0.5, len(sizes) - 0.5)
    right.set_ylim(bottom=0)
    right.set_xlabel("batch size")
    right.set_ylabel("epoch of the first convergence detection")
    right.set_title("When convergence was detected")
    figure.tight_layout()
    return figure


def summarize(runs: list[Run]) -> Summary:
    """Build the table (one row per run, by batch size then seed) and the summary figure."""
    rows = sorted((run_row(run) for run in runs), key=lambda r: (-r["batch_size"], r["seed"]))
    return Summary(rows=rows, figures={"summary": plot_summary(runs, rows)})
