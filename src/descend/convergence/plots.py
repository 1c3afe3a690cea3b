"""Figure: training loss against epochs for finished runs, with their convergence points.

Reads each run directory's ``config.yaml`` (for the batch size and seed) and ``metrics.csv``
(CSV logger: ``train/loss`` per step, ``convergence/step`` and ``convergence/reason`` at each
detection). Run ``python -m descend.convergence.plots RUN_OR_MULTIRUN_DIR... -o figure.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from descend.convergence.reasons import ConvergenceReason

log = logging.getLogger(__name__)

MARKERS = {
    ConvergenceReason.STATIONARY_POINT: "o",
    ConvergenceReason.PLATEAU: "s",
    ConvergenceReason.STATIONARY_PHASE: "^",
    ConvergenceReason.DIVERGENCE: "x",
}


@dataclass
class RunCurve:
    """Training loss of one run by epoch, and its detections as ``(epoch, reason)`` pairs."""

    label: str
    batch_size: int
    epochs: np.ndarray
    losses: np.ndarray
    detections: list[tuple[float, ConvergenceReason]] = field(default_factory=list)


def find_runs(paths: list[Path]) -> list[Path]:
    """Return the run directories (those with a ``config.yaml``) at or below ``paths``."""
    runs = []
    for path in paths:
        runs += sorted(
            config.parent
            for config in Path(path).glob("**/config.yaml")
            if ".hydra" not in config.parts
        )
    return runs


def load_run(run_dir: Path) -> RunCurve:
    """Read a run's loss curve and detections; the loss logged at step ``s`` (after ``s`` updates)
    is placed at epoch ``s / steps_per_epoch``."""
    config = OmegaConf.load(run_dir / "config.yaml")
    metrics_files = sorted(run_dir.glob("**/metrics.csv"))
    if not metrics_files:
        raise FileNotFoundError(
            f"no metrics.csv under {run_dir}: run with the csv logger (logger=csv or default)"
        )
    with metrics_files[-1].open() as file:
        rows = list(csv.DictReader(file))

    steps, losses, epoch_of_step = [], [], {}
    for row in rows:
        if row.get("train/loss"):
            steps.append(int(row["step"]))
            losses.append(float(row["train/loss"]))
        if row.get("epoch"):
            epoch_of_step[int(row["step"])] = int(float(row["epoch"]))
    steps_per_epoch = _steps_per_epoch(epoch_of_step)

    curve = RunCurve(
        label=f"batch {config.data.batch_size}, seed {config.seed}",
        batch_size=int(config.data.batch_size),
        epochs=np.asarray(steps) / steps_per_epoch,
        losses=np.asarray(losses),
    )
    for row in rows:
        if row.get("convergence/step"):
            reason = list(ConvergenceReason)[int(float(row["convergence/reason"])) - 1]
            # Detection step k is the k-th optimizer step, whose loss was logged at step k - 1.
            epoch = (float(row["convergence/step"]) - 1) / steps_per_epoch
            curve.detections.append((epoch, reason))
    return curve


def _steps_per_epoch(epoch_of_step: dict[int, int]) -> float:
    """Steps per epoch from the logged (step, epoch) pairs: the first step of the last epoch seen.

    Exact when every step is logged (``trainer.log_every_n_steps=1``, as in
    ``experiment=gd_vs_sgd``); otherwise an estimate.
    """
    if not epoch_of_step:
        raise ValueError("metrics.csv has no rows with an epoch: the run logged no training steps")
    last_epoch = max(epoch_of_step.values())
    if last_epoch == 0:
        return float(max(epoch_of_step) + 1)
    first_step_of_last = min(step for step, epoch in epoch_of_step.items() if epoch == last_epoch)
    return first_step_of_last / last_epoch


def plot_loss_vs_epochs(run_dirs: list[Path], ax=None):
    """Draw the training loss of each run against epochs, one colour per batch size, and mark
    each detection (circle: stationary point, square: plateau, triangle: stationary phase,
    cross: divergence). Return the matplotlib ``Figure``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    curves = [load_run(run_dir) for run_dir in run_dirs]
    batch_sizes = sorted({curve.batch_size for curve in curves}, reverse=True)
    colours = {size: plt.cm.tab10(i % 10) for i, size in enumerate(batch_sizes)}

    labelled = set()
    for curve in curves:
        label = None if curve.batch_size in labelled else f"batch size {curve.batch_size}"
        labelled.add(curve.batch_size)
        colour = colours[curve.batch_size]
        ax.plot(curve.epochs, curve.losses, color=colour, alpha=0.6, linewidth=1, label=label)
        for epoch, reason in curve.detections:
            loss = np.interp(epoch, curve.epochs, curve.losses)
            ax.plot(
                epoch, loss, MARKERS[reason], color=colour, markersize=8, markeredgecolor="black"
            )

    for reason, marker in MARKERS.items():
        ax.plot(
            [],
            [],
            marker,
            color="grey",
            markeredgecolor="black",
            linestyle="none",
            label=reason.value,
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (per step)")
    ax.legend(fontsize=8)
    return ax.figure


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Plot training loss vs epochs with convergence points."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("loss_vs_epochs.png"), help="image file"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run_dirs = find_runs(args.paths)
    if not run_dirs:
        raise SystemExit(
            f"no run directories (with config.yaml) under {', '.join(map(str, args.paths))}"
        )
    figure = plot_loss_vs_epochs(run_dirs)
    figure.savefig(args.output, dpi=120, bbox_inches="tight")
    log.info("Wrote %s (%d runs)", args.output, len(run_dirs))


if __name__ == "__main__":
    main()
