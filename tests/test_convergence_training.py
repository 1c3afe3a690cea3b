"""Convergence detection inside real Lightning training runs, against known results."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import ROOT, run_command
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from descend.callbacks import ConvergenceDetection
from descend.convergence import ConvergenceReason
from descend.train import train

CURVATURES = torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
SAMPLES = 32


def quadratic_problem(dtype=torch.float64):
    """Least squares whose Hessian X^T X / n is diag(CURVATURES); returns X, y and the minimiser."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(SAMPLES, 4, generator=generator, dtype=torch.float64))
    features = basis * (SAMPLES * CURVATURES).sqrt()
    targets = features @ torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    targets = targets + 0.1 * torch.randn(SAMPLES, generator=generator, dtype=torch.float64)
    minimiser = torch.linalg.lstsq(features, targets.unsqueeze(1)).solution.squeeze(1)
    return features.to(dtype), targets.to(dtype), minimiser


class LeastSquares(pl.LightningModule):
    """Loss ||X w - y||^2 / (2 n) on the batch; plain SGD with a constant learning rate."""

    def __init__(self, lr: float, dtype=torch.float64) -> None:
        super().__init__()
        self.lr = lr
        self.weights = nn.Parameter(torch.zeros(4, dtype=dtype))

    def training_step(self, batch, batch_idx):
        features, targets = batch
        return 0.5 * ((features @ self.weights - targets) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def full_batches(features, targets, steps_per_epoch: int):
    """A loader that yields the whole data set ``steps_per_epoch`` times: full-batch GD."""
    return torch.utils.data.DataLoader([(features, targets)] * steps_per_epoch, batch_size=None)


def fit(model, loader, callbacks, tmp_path: Path, **trainer_args):
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(model, loader)
    return trainer


def only(detector: str, **options):
    """Settings that switch on one detector (plus divergence) with every other one off."""
    settings = {"stationary_point": None, "plateau": None, "stationary_phase": None}
    settings[detector] = options
    return settings


def test_gd_stops_at_predicted_step(tmp_path):
    features, targets, minimiser = quadratic_problem()
    lr, grad_tol = 1.0, 1e-4
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=grad_tol), check_every_n_steps=1
    )

    trainer = fit(
        LeastSquares(lr), full_batches(features, targets, 500), [callback], tmp_path, max_epochs=1
    )

    # grad f(w_t) = H (I - lr H)^t (w_0 - w*) with w_0 = 0. The slowest mode (h = 0.1, rate 0.9)
    # sets the linear rate: |grad_t| ~ 0.1 * 0.9^t * |w*_4|, below grad_tol from t_rate on.
    slow = abs(float(minimiser[3]))
    t_rate = math.ceil(math.log(grad_tol / (0.1 * slow)) / math.log(0.9))
    # The gradient at w_t is recorded with the (t + 1)-th optimizer step.
    detection = callback.convergence
    assert detection.reason is ConvergenceReason.STATIONARY_POINT
    assert abs(detection.step - (t_rate + 1)) <= 1, (
        f"fired at {detection.step}, rate predicts {t_rate + 1}"
    )
    # The exact gradient norms, from the spectral form, pick the step exactly.
    t = torch.arange(500, dtype=torch.float64).unsqueeze(1)
    norms = (CURVATURES * (1 - lr * CURVATURES) ** t * minimiser).norm(dim=1)
    assert detection.step == int(torch.nonzero(norms < grad_tol)[0, 0]) + 1
    assert trainer.global_step == detection.step
    # |w - w*| <= |grad| / smallest curvature for this strongly convex quadratic.
    distance = float((trainer.lightning_module.weights.detach() - minimiser).norm())
    assert distance <= grad_tol / 0.1
    assert callback.summary.startswith(f"converged at step {detection.step} (gradient norm")


def test_logged_detection_summary_says_training_continued(tmp_path):
    features, targets, _ = quadratic_problem()
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=1e-4, action="log"), check_every_n_steps=1
    )

    trainer = fit(
        LeastSquares(1.0), full_batches(features, targets, 500), [callback], tmp_path, max_epochs=1
    )

    detection = callback.convergence
    assert trainer.global_step == 500
    assert detection.step < 500
    assert callback.summary.startswith(f"stationary point detected at step {detection.step} (")
    assert "training continued to step 500 (action: log)" in callback.summary


def test_divergence_factor_stops_at_predicted_step(tmp_path, caplog):
    features, targets, minimiser = quadratic_problem()
    lr = 2.5  # 1 - 2.5 * 1.0 = -1.5: the stiffest mode grows by 1.5 per step
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=1e-4), divergence={"divergence_factor": 10.0}
    )

    with caplog.at_level(logging.ERROR, logger="descend.callbacks.convergence"):
        trainer = fit(
            LeastSquares(lr),
            full_batches(features, targets, 200),
            [callback],
            tmp_path,
            max_epochs=1,
        )

    # loss(w_t) = sum h (1 - lr h)^(2t) e_i^2 / 2 + constant, with e = w_0 - w* = -w*.
    residual = 0.5 * float(((features.double() @ minimiser - targets.double()) ** 2).mean())
    t = torch.arange(200, dtype=torch.float64).unsqueeze(1)
    losses = (0.5 * CURVATURES * (1 - lr * CURVATURES) ** (2 * t) * minimiser**2).sum(
        dim=1
    ) + residual
    predicted = int(torch.nonzero(losses > 10 * losses[0])[0, 0]) + 1
    detection = callback.divergence
    assert detection.step == predicted
    assert callback.convergence is None
    # Checked every 10 steps: the run stops at the first check after the divergence.
    assert trainer.global_step == math.ceil(predicted / 10) * 10
    assert f"diverged at step {predicted}" in caplog.text
    assert "learning rate (2.5)" in caplog.text


def test_divergence_keeps_last_finite_checkpoint(tmp_path):
    features, targets, minimiser = quadratic_problem(torch.float32)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0
    )
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=1e-4), divergence={"divergence_factor": None}
    )

    trainer = fit(
        LeastSquares(lr=25.0, dtype=torch.float32),
        full_batches(features, targets, 300),
        [callback, checkpoint],
        tmp_path,
        max_epochs=1,
    )

    detection = callback.divergence
    assert detection is not None, "the loss never overflowed"
    assert detection.description == "loss is inf"
    # The float32 mean of 32 squares overflows once their sum passes 3.4e38, i.e. once the
    # exact loss lies between 3.4e38 / 32 and 3.4e38; it grows 24^2 = 576 times per step.
    t = torch.arange(100, dtype=torch.float64).unsqueeze(1)
    losses = (0.5 * CURVATURES * (1 - 25.0 * CURVATURES) ** (2 * t) * minimiser**2).sum(dim=1)
    assert losses[detection.step - 1] > torch.finfo(torch.float32).max / 32
    assert losses[detection.step - 2] < torch.finfo(torch.float32).max
    assert trainer.global_step == detection.step
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == detection.step - 1
    for name, value in saved["state_dict"].items():
        assert torch.isfinite(value).all(), f"{name} in last.ckpt is not finite"


class InjectNaN(pl.Callback):
    """Test hook: set the first weight to NaN before the forward pass of optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = math.nan


def test_injected_nan_is_never_convergence(tmp_path):
    features, targets, _ = quadratic_problem()
    callback = ConvergenceDetection(
        # Tolerances so loose that every finite step counts as converged, with logging only.
        stationary_point={"grad_tol": 1e30, "action": "log"},
        plateau={"window": 3, "rel_tol": 1e30, "action": "log"},
        stationary_phase=None,
        check_every_n_steps=1,
    )

    trainer = fit(
        LeastSquares(lr=0.1),
        full_batches(features, targets, 100),
        [InjectNaN(7), callback],
        tmp_path,
        max_epochs=1,
    )

    steps = {d.reason: d.step for d in callback.detections}
    assert steps == {
        ConvergenceReason.STATIONARY_POINT: 1,
        ConvergenceReason.PLATEAU: 3,
        ConvergenceReason.DIVERGENCE: 7,
    }
    assert trainer.global_step == 7
    assert callback.summary.startswith("diverged at step 7 (loss is nan)")


def test_injected_nan_only_divergence(tmp_path):
    features, targets, _ = quadratic_problem()
    callback = ConvergenceDetection(check_every_n_steps=10)

    trainer = fit(
        LeastSquares(lr=0.1),
        full_batches(features, targets, 100),
        [InjectNaN(7), callback],
        tmp_path,
        max_epochs=1,
    )

    assert [d.reason for d in callback.detections] == [ConvergenceReason.DIVERGENCE]
    assert callback.detections[0].step == 7
    assert callback.convergence is None
    assert trainer.global_step == 10


def noisy_batches(steps: int, seed: int = 0):
    """Mini-batches of 4 samples from the least-squares problem with label noise 1."""
    generator = torch.Generator().manual_seed(seed)
    features = (
        torch.randn(steps, 4, 4, generator=generator, dtype=torch.float64) * CURVATURES.sqrt()
    )
    targets = features @ torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    targets = targets + torch.randn(steps, 4, generator=generator, dtype=torch.float64)
    return torch.utils.data.DataLoader(list(zip(features, targets, strict=True)), batch_size=None)


def make_sgd_callback():
    return ConvergenceDetection(
        stationary_point={"grad_tol": 1e-3, "action": "log"},
        plateau={"window": 40, "rel_tol": 0.05, "action": "log"},
        stationary_phase={"window": 30, "level": 0.2, "action": "reduce_lr"},
        check_every_n_steps=7,
    )


def test_resume_decides_as_uninterrupted(tmp_path):
    uninterrupted = make_sgd_callback()
    fit(LeastSquares(lr=0.2), noisy_batches(60), [uninterrupted], tmp_path / "a", max_epochs=5)

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    first = make_sgd_callback()
    fit(LeastSquares(lr=0.2), noisy_batches(60), [first, checkpoint], tmp_path / "b", max_epochs=2)
    resumed = make_sgd_callback()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "c",
        callbacks=[resumed],
        max_epochs=5,
        enable_checkpointing=False,
    )
    trainer.fit(LeastSquares(lr=0.2), noisy_batches(60), ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert len(uninterrupted.detections) >= 2, "too few detections to compare"
    assert any(d.step > 120 for d in uninterrupted.detections), (
        "no detection after the resume point"
    )
    assert resumed.detections == uninterrupted.detections
    for name, detector in uninterrupted.detectors.items():
        assert resumed.detectors[name].state_dict() == detector.state_dict(), name
    final_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert final_lr == pytest.approx(
        0.2
        * 0.5
        ** sum(d.reason is ConvergenceReason.STATIONARY_PHASE for d in uninterrupted.detections)
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    (path,) = run_dir.glob("**/metrics.csv")
    with path.open() as file:
        return list(csv.DictReader(file))


def test_config_nan_hook_logs_divergence(make_config):
    cfg = make_config("callbacks.convergence.testing_nan_step=5", "test=false")

    train(cfg)

    rows = read_metrics(Path(cfg.paths.output_dir))
    events = [row for row in rows if row.get("convergence/step")]
    assert len(events) == 1
    assert float(events[0]["convergence/step"]) == 5
    assert float(events[0]["convergence/reason"]) == ConvergenceReason.DIVERGENCE.code
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["global_step"] == 10  # the first check after step 5


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="plateau.action='halt' is invalid"):
        ConvergenceDetection(plateau={"action": "halt"})
    with pytest.raises(ValueError, match="divergence.action='reduce_lr' is invalid"):
        ConvergenceDetection(divergence={"action": "reduce_lr"})
    with pytest.raises(TypeError, match="PlateauDetector takes window, rel_tol, level"):
        ConvergenceDetection(plateau={"windw": 3})


@pytest.mark.slow
def test_ddp_one_rank_nan_stops_all_ranks(tmp_path):
    result = run_command(
        [
            "descend-train",
            "trainer=ddp_sim",
            "logger=csv",
            "extras.print_config=false",
            "~callbacks.rich_progress_bar",
            "~callbacks.model_summary",
            "+trainer.enable_progress_bar=false",
            "trainer.max_epochs=3",
            "seed=0",
            "test=false",
            "callbacks.convergence.testing_nan_step=7",
            "callbacks.convergence.testing_nan_rank=1",
            "callbacks.convergence.check_every_n_steps=1",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src")},
    )

    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    # Only rank 1's detector gets the NaN. The reduced decision stops both ranks after step 7.
    assert results["global_step"] == 7
    rows = read_metrics(tmp_path)
    events = [row for row in rows if row.get("convergence/step")]
    assert [float(row["convergence/step"]) for row in events] == [7.0]
    assert "diverged at step 7" in result.stdout + result.stderr


class CountSteps(pl.Callback):
    """Count the training batches run, to show that nothing is trained twice."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def test_stop_waits_for_min_steps(tmp_path):
    features, targets, _ = quadratic_problem()
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=1e30), check_every_n_steps=1
    )
    counter = CountSteps()

    trainer = fit(
        LeastSquares(lr=0.1),
        full_batches(features, targets, 100),
        [callback, counter],
        tmp_path,
        max_epochs=1,
        min_epochs=0,
        min_steps=30,
    )

    assert callback.convergence.step == 1
    assert trainer.global_step == 30
    assert counter.batches == 30


def test_divergence_ignores_min_steps(tmp_path):
    features, targets, _ = quadratic_problem()
    callback = ConvergenceDetection(
        **only("stationary_point", grad_tol=1e-4), check_every_n_steps=1
    )

    trainer = fit(
        LeastSquares(lr=0.1),
        full_batches(features, targets, 100),
        [InjectNaN(7), callback],
        tmp_path,
        max_epochs=1,
        min_steps=30,
    )

    assert callback.divergence.step == 7
    assert trainer.global_step == 7


def test_early_stopping_works_alongside(make_config):
    cfg = make_config(
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1.0",  # no accuracy can improve by 1.0
        "trainer.max_epochs=5",
        "test=false",
    )

    train(cfg)

    # The first validation sets the best score, the second exhausts patience 1: two epochs of
    # ceil(1437 / 64) = 23 steps.
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["global_step"] == 46
    rows = read_metrics(Path(cfg.paths.output_dir))
    assert any(row.get("convergence/grad_norm") for row in rows)
    assert not any(row.get("convergence/step") for row in rows)


def test_reuses_grad_norm_monitor_total(make_config, monkeypatch):
    shared = []
    original = ConvergenceDetection._shared_grad_norm

    def spy(trainer):
        value = original(trainer)
        shared.append(value is not None)
        return value

    monkeypatch.setattr(ConvergenceDetection, "_shared_grad_norm", staticmethod(spy))
    cfg = make_config(
        "callbacks.convergence.stationary_phase=null",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "test=false",
    )
    train(cfg)

    # 23 optimizer steps, each served by the gradient-norm callback that runs first.
    assert shared == [True] * 23
    with open(Path(cfg.paths.output_dir) / "csv" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    detector = {
        row["step"]: float(row["convergence/grad_norm"])
        for row in rows
        if row.get("convergence/grad_norm")
    }
    monitor = {
        row["step"]: float(row["grad_norm/total"]) for row in rows if row.get("grad_norm/total")
    }
    # A check every 10 steps reads the gradient recorded with optimizer step index c - 1 and
    # logs it from step c on. The monitor logs in float64 and the detector keeps float32.
    for check_step in ("10", "20"):
        previous = str(int(check_step) - 1)
        assert detector[check_step] == pytest.approx(monitor[previous], rel=1e-6)
