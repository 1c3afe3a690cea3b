"""The two-parameter experiment: its network, data, trajectory and the minima its runs reach."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from wandb_records import find_run_files, run_contents

from descend.callbacks.weight_trajectory import load_trajectory
from descend.data import TanhRegressionDataModule
from descend.experiments.two_params import mse_gradient, mse_loss
from descend.models.nets import TanhUnit
from descend.report import main as report_main
from descend.train import train


def reference_loss_and_gradient(weights: np.ndarray, x: np.ndarray, y: np.ndarray):
    """MSE of w2 * tanh(w1 x) and its gradient, written out independently of the library."""
    w1, w2 = weights
    hidden = np.tanh(w1 * x)
    residuals = w2 * hidden - y
    loss = np.mean(residuals**2)
    gradient = np.array(
        [
            np.mean(2 * residuals * w2 * x / np.cosh(w1 * x) ** 2),
            np.mean(2 * residuals * hidden),
        ]
    )
    return loss, gradient


def train_split(datamodule: TanhRegressionDataModule) -> tuple[np.ndarray, np.ndarray]:
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    return inputs[:, 0].double().numpy(), targets.double().numpy()


def test_tanh_unit_output_and_parameter_count():
    torch.manual_seed(0)
    net = TanhUnit(init_range=1.0)
    with torch.no_grad():
        net.w1.fill_(0.5)
        net.w2.fill_(-2.0)
    inputs = torch.tensor([[0.0], [1.0], [-2.0]])

    assert sum(p.numel() for p in net.parameters()) == 2
    expected = torch.tensor([0.0, -2.0 * np.tanh(0.5), -2.0 * np.tanh(-1.0)], dtype=torch.float32)
    torch.testing.assert_close(net(inputs), expected)


def test_mse_gradient_matches_autograd():
    datamodule = TanhRegressionDataModule(batch_size=256)
    x, y = train_split(datamodule)
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    predictions = weights[1] * torch.tanh(weights[0] * torch.from_numpy(x))
    loss = torch.mean((predictions - torch.from_numpy(y)) ** 2)
    loss.backward()

    np.testing.assert_allclose(mse_gradient(weights.detach().numpy(), x, y), weights.grad.numpy())
    np.testing.assert_allclose(mse_loss(0.7, -1.3, x, y), loss.item())


def test_tanh_regression_data_ignores_run_seed():
    first = TanhRegressionDataModule(batch_size=16, seed=1)
    second = TanhRegressionDataModule(batch_size=16, seed=2)
    x_first, y_first = train_split(first)
    x_second, y_second = train_split(second)

    assert x_first.shape == (256,)
    np.testing.assert_array_equal(x_first, x_second)
    np.testing.assert_array_equal(y_first, y_second)


def test_tanh_regression_without_noise_is_fit_exactly():
    datamodule = TanhRegressionDataModule(batch_size=16, slope=1.5, amplitude=2.0, noise_std=0.0)
    x, y = train_split(datamodule)
    loss, gradient = reference_loss_and_gradient(np.array([1.5, 2.0]), x, y)

    assert loss < 1e-12
    assert np.abs(gradient).max() < 1e-6
    # The mirror image of the generating weights fits equally well.
    mirror_loss, _ = reference_loss_and_gradient(np.array([-1.5, -2.0]), x, y)
    assert mirror_loss < 1e-12


@pytest.mark.slow
def test_two_params_seeds_reach_mirror_minima(make_config, tmp_path):
    finals = {}
    for seed in (0, 3):
        cfg = make_config("experiment=two_params", f"seed={seed}", "trainer.max_epochs=150")
        train(cfg)
        trajectory = load_trajectory(f"{cfg.paths.output_dir}/trajectory.npz")
        assert trajectory["weights"].shape == (151, 2), "one row per step, plus the start"
        finals[seed] = trajectory["weights"][-1]

    x, y = train_split(TanhRegressionDataModule(batch_size=256))
    for seed, final in finals.items():
        _, gradient = reference_loss_and_gradient(final, x, y)
        assert np.linalg.norm(gradient) < 2e-3, f"seed {seed} ends at {final}, gradient {gradient}"
        minimum = minimize(
            lambda w: reference_loss_and_gradient(w, x, y), final, jac=True, method="BFGS"
        ).x
        assert np.linalg.norm(final - minimum) < 0.02, f"seed {seed}: {final} vs {minimum}"

    # Seeds 0 and 3 start in different basins and end in the mirror-image minima.
    assert np.linalg.norm(finals[0] - finals[3]) > 2.0
    np.testing.assert_allclose(finals[0], -finals[3], atol=0.03)

    # An offline W&B run directory makes the report log to W&B offline as well.
    (tmp_path / "run0" / "wandb" / "offline-run-19700101_000000-test").mkdir(parents=True)
    report_main([str(tmp_path)])
    with (tmp_path / "report" / "two_params.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["seed"]) for row in rows] == [0, 3]
    for row in rows:
        reported = np.array([float(row["w1_final"]), float(row["w2_final"])])
        np.testing.assert_allclose(reported, finals[int(row["seed"])])
    assert (tmp_path / "report" / "two_params_surface.png").stat().st_size > 10_000

    (run_file,) = find_run_files(tmp_path / "report")
    logged = run_contents(run_file)["history"][0]
    assert logged["report/surface._type"] == "image-file"
    assert logged["report/table._type"] == "table-file"
    assert logged["report/table.nrows"] == 2
