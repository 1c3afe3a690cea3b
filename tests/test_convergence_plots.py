"""The loss-vs-epochs figure reads finished runs' metrics.csv correctly."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from descend.convergence import ConvergenceReason  # noqa: E402
from descend.convergence.plots import find_runs, load_run, plot_loss_vs_epochs  # noqa: E402


def write_run(run_dir, batch_size: int, steps_per_epoch: int, detection_step: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"data:\n  batch_size: {batch_size}\nseed: 3\n")
    lines = ["convergence/reason,convergence/step,epoch,step,train/loss"]
    for step in range(3 * steps_per_epoch):
        lines.append(f",,{step // steps_per_epoch},{step},{1.0 / (step + 1)}")
    lines.append(f"{ConvergenceReason.PLATEAU.code},{detection_step},,{detection_step},")
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_load_run_places_steps_on_epochs(tmp_path):
    write_run(tmp_path / "0", batch_size=64, steps_per_epoch=4, detection_step=7)

    curve = load_run(tmp_path / "0")

    np.testing.assert_allclose(curve.epochs, np.arange(12) / 4)
    np.testing.assert_allclose(curve.losses, 1.0 / np.arange(1, 13))
    # Step 7 is the seventh update, computed after 6 updates: epoch 6 / 4.
    assert curve.detections == [(pytest.approx(1.5), ConvergenceReason.PLATEAU)]
    assert curve.label == "batch 64, seed 3"


def test_plot_draws_one_line_per_run(tmp_path):
    write_run(tmp_path / "multirun" / "0", batch_size=1437, steps_per_epoch=1, detection_step=2)
    write_run(tmp_path / "multirun" / "1", batch_size=64, steps_per_epoch=4, detection_step=7)

    runs = find_runs([tmp_path / "multirun"])
    figure = plot_loss_vs_epochs(runs)

    assert [run.name for run in runs] == ["0", "1"]
    ax = figure.axes[0]
    curves = [line for line in ax.lines if len(line.get_xdata()) > 1]
    assert len(curves) == 2
    assert ax.get_xlabel() == "epoch"
