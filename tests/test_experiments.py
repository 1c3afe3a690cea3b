"""Lessons of the digits experiments, checked on short runs with fixed seeds."""

from __future__ import annotations

import csv

import hydra
import numpy as np
import pytest
import torch

from descend.experiments.init_seeds import pair_curves
from descend.experiments.runs import find_runs, load_run
from descend.report import main as report_main
from descend.train import train


def logged_losses(run_dir: str) -> np.ndarray:
    steps, losses = load_run(run_dir).series("train/loss")
    assert steps == list(range(len(steps))), "every step's loss must be logged"
    return np.asarray(losses)


@pytest.mark.slow
def test_gd_vs_sgd_full_batch_loss_never_rises(make_config, tmp_path):
    full_batch = make_config(
        "experiment=gd_vs_sgd", "data.batch_size=1437", "trainer.max_epochs=40", "test=true"
    )
    # The run directory is read now: it resolves through the Hydra config of the latest compose.
    full_batch_dir = full_batch.paths.output_dir
    train(full_batch)
    mini_batch = make_config(
        "experiment=gd_vs_sgd", "data.batch_size=64", "trainer.max_epochs=2", "test=true"
    )
    mini_batch_dir = mini_batch.paths.output_dir
    train(mini_batch)

    gd_losses = logged_losses(full_batch_dir)
    sgd_losses = logged_losses(mini_batch_dir)
    assert len(gd_losses) == 40
    rises = np.diff(gd_losses)
    assert rises.max() <= 0.0, f"full-batch loss rose by {rises.max():.3g} at step {rises.argmax()}"
    assert gd_losses[-1] < 0.5 * gd_losses[0]
    assert len(sgd_losses) == 2 * 23  # ceil(1437 / 64) steps per epoch
    assert np.diff(sgd_losses).max() > 0.0, "mini-batch losses never rose: no gradient noise?"

    report_main([str(tmp_path), "--wandb", "off"])
    with (tmp_path / "report" / "gd_vs_sgd.csv").open() as file:
        rows = {int(row["batch_size"]): row for row in csv.DictReader(file)}
    assert sorted(rows) == [64, 1437]
    # Full batch: the last epoch is the last step; mini-batch: the mean of the last 23 steps.
    assert float(rows[1437]["train_loss"]) == pytest.approx(gd_losses[-1])
    assert float(rows[64]["train_loss"]) == pytest.approx(sgd_losses[-23:].mean())
    assert (tmp_path / "report" / "gd_vs_sgd_summary.png").is_file()


@pytest.mark.slow
def test_lr_sweep_reports_largest_rate_divergent(make_config, tmp_path):
    run_dirs = {}
    for lr in (0.1, 5.0):
        cfg = make_config("experiment=lr_sweep", f"model.optimizer.lr={lr}", "trainer.max_epochs=1")
        run_dirs[lr] = cfg.paths.output_dir
        train(cfg)

    report_main([str(tmp_path), "--wandb", "off"])
    with (tmp_path / "report" / "lr_sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [float(row["lr"]) for row in rows] == [0.1, 5.0]
    assert rows[0]["verdict"] != "diverged"
    assert rows[1]["verdict"] == "diverged"

    # The divergence detector's rule, applied to the logged losses by hand: the first loss above
    # 10 x the initial loss. The loss logged at step s belongs to optimizer step s + 1.
    losses = logged_losses(run_dirs[5.0])
    first_above = int(np.argmax(losses > 10 * losses[0]))
    assert losses[first_above] > 10 * losses[0]
    assert float(rows[1]["detection_step"]) == first_above + 1
    assert int(rows[1]["steps_trained"]) < 23, "divergence must stop training within the epoch"


@pytest.mark.slow
def test_init_seeds_curve_matches_averaged_weights(make_config, tmp_path):
    for seed in (0, 1):
        train(make_config("experiment=init_seeds", f"seed={seed}", "trainer.max_epochs=1"))
    runs = find_runs(tmp_path)
    ((first, second, curve),) = pair_curves(runs, num_points=3, num_samples=None, batch_size=2000)

    # By hand: the MLP with the mean of both final state dicts, on the whole training split.
    states = [
        torch.load(run.path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in runs
    ]
    module = hydra.utils.instantiate(runs[0].config.model)
    datamodule = hydra.utils.instantiate(runs[0].config.data)
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    losses = []
    for alpha in (0.0, 0.5, 1.0):
        mixed = {key: (1 - alpha) * states[0][key] + alpha * states[1][key] for key in states[0]}
        module.load_state_dict(mixed)
        module.eval()
        with torch.no_grad():
            losses.append(torch.nn.functional.cross_entropy(module(inputs), targets).item())

    assert (first.seed, second.seed) == (0, 1)
    np.testing.assert_allclose(curve.loss, losses, rtol=1e-5)
    assert curve.barrier_height == pytest.approx(losses[1] - max(losses[0], losses[2]), rel=1e-5)
