"""The ``lr_sweep`` experiment: one network trained at learning rates from too small to
divergent. Summary: the convergence callback's verdict per rate, the training loss against
steps, and the loss along a random line through each run's final weights (written by the
landscape callback as ``landscape/random_line.npz``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from descend.convergence import ConvergenceReason
from descend.experiments.gd_vs_sgd import detections
from descend.experiments.runs import Run, Summary
from descend.landscape import load_landscape

log = logging.getLogger(__name__)

RANDOM_LINE_FILE = Path("landscape") / "random_line.npz"


def verdict(run: Run) -> tuple[str, float]:
    """Return ``("diverged" | "converged (<reason>)" | "not converged", step)`` from the
    detections the convergence callback logged (step is NaN without a detection)."""
    found = detections(run)
    for step, reason in found:
        if reason is ConvergenceReason.DIVERGENCE:
            return "diverged", float(step)
    if found:
        step, reason = found[0]
        return f"converged ({reason.value})", float(step)
    return "not converged", math.nan


def run_row(run: Run) -> dict:
    text, step = verdict(run)
    _, losses = run.series("train/loss")
    return {
        "lr": run.learning_rate,
        "verdict": text,
        "detection_step": step,
        "steps_trained": int(run.results.get("global_step", len(losses))),
        "initial_train_loss": losses[0] if losses else math.nan,
        "final_train_loss": losses[-1] if losses else math.nan,
        "val_acc": run.last("val/acc"),
    }


def plot_summary(runs: list[Run], rows: list[dict]) -> Figure:
    """Draw the training loss against steps per rate, with a cross at each divergence (left),
    and the loss along a random line through the final weights, alpha 0 being the final point
    (right)."""
    figure = Figure(figsize=(12, 4.5))
    left, right = figure.subplots(1, 2)
    colours = colormaps["viridis"]
    for index, (run, row) in enumerate(zip(runs, rows, strict=True)):
        # The top of viridis (yellow) is hard to see on white: stop at 0.85.
        colour = colours(0.85 * index / max(1, len(runs) - 1))
        label = f"lr {row['lr']:g}: {row['verdict']}"
        steps, losses = run.series("train/loss")
        left.plot(steps, losses, color=colour, linewidth=1, label=label)
        if row["verdict"] == "diverged" and steps:
            # The loss of optimizer step k is logged at step k - 1 (before that update).
            step = row["detection_step"] - 1
            loss = float(np.interp(step, steps, losses))
            left.plot(step, loss, "x", color="red", markersize=10, markeredgewidth=2)

        line_path = run.path / RANDOM_LINE_FILE
        if line_path.is_file():
            curve = load_landscape(line_path)
            right.plot(curve.alpha, curve.loss, color=colour, marker=".", label=f"lr {row['lr']:g}")
        else:
            log.warning("%s is missing: the run had no landscape callback", line_path)
    left.set_yscale("log")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss (per step)")
    left.set_title("Training loss by learning rate (x: divergence detected)")
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_xlabel("alpha along a filter-normalised random direction (0: final weights)")
    right.set_ylabel("training loss (512 samples)")
    right.set_title("Landscape around each final point")
    right.legend(fontsize=7)
    figure.tight_layout()
    return figure


def summarize(runs: list[Run]) -> Summary:
    """Build the table (one row per learning rate, ascending) and the summary figure."""
    runs = sorted(runs, key=lambda run: run.learning_rate)
    rows = [run_row(run) for run in runs]
    return Summary(rows=rows, figures={"summary": plot_summary(runs, rows)})
