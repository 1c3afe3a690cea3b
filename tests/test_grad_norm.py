"""GradNormMonitor against norms computed independently: by hand, closed form or plain torch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from descend.callbacks import GradNormMonitor
from descend.gradients import (
    GroupLayout,
    combine_host_norms,
    combine_norms,
    estimate_noise_scale,
    tensor_norms,
)
from descend.gradients.noise_scale import NoiseScaleEMA

NORM_TYPES = (1.0, 2.0, math.inf)


class RecordingLogger(Logger):
    """Keep every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def rows_with(self, key: str) -> list[tuple[int, dict[str, float]]]:
        return [(step, metrics) for step, metrics in self.rows if key in metrics]


def vector_norm(tensors, p: float) -> float:
    return torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in tensors]), ord=p).item()


# ---------------------------------------------------------------- the maths, without Lightning


@pytest.mark.parametrize("p", NORM_TYPES)
def test_tensor_norms_match_vector_norm(p):
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=generator) for shape in [(3, 4), (4,), (2, 2, 2)]]

    norms = tensor_norms(tensors, p)

    for tensor, norm in zip(tensors, norms, strict=True):
        assert norm.item() == pytest.approx(
            torch.linalg.vector_norm(tensor, ord=p).item(), rel=1e-6
        )
    assert combine_norms(norms, p).item() == pytest.approx(vector_norm(tensors, p), rel=1e-6)


@pytest.mark.parametrize("p", NORM_TYPES)
def test_group_norms_are_norms_of_concatenation(p):
    tensors = [torch.tensor([3.0, -4.0]), torch.tensor([1.0]), torch.tensor([-2.0, 2.0, 1.0])]
    layout = GroupLayout(["a", "b", "a"], p)
    norms = tensor_norms(tensors, p).tolist()

    grouped = layout.group_norms(norms)

    assert layout.names == ["a", "b"]
    assert grouped[0] == pytest.approx(vector_norm([tensors[0], tensors[2]], p), rel=1e-6)
    assert grouped[1] == pytest.approx(1.0)
    assert combine_host_norms(norms, p) == pytest.approx(vector_norm(tensors, p), rel=1e-6)


def test_noise_scale_estimate_matches_paper_formula():
    # Gradient G = (1, 0) plus per-sample noise with tr(S) = 8: E|G_B|^2 = |G|^2 + tr(S) / B.
    b_small, b_big = 4, 32
    small_sq = torch.tensor(1.0 + 8.0 / b_small)
    big_sq = torch.tensor(1.0 + 8.0 / b_big)

    grad_sq, trace_sigma = estimate_noise_scale(small_sq, big_sq, b_small, b_big)

    assert grad_sq.item() == pytest.approx(1.0)
    assert trace_sigma.item() == pytest.approx(8.0)


def test_noise_scale_ema_ignores_nonfinite_estimates():
    ema = NoiseScaleEMA(decay=0.5)
    ema.update(torch.tensor(2.0), torch.tensor(10.0))
    ema.update(torch.tensor(math.inf), torch.tensor(math.nan))
    ema.update(torch.tensor(4.0), torch.tensor(20.0))

    # Bias-corrected average of 2 and 4 with weights 0.5 * 0.5 and 0.5: (0.25*2 + 0.5*4) / 0.75.
    averages = ema.averages()
    assert averages[0].item() == pytest.approx((0.25 * 2 + 0.5 * 4) / 0.75)
    assert averages[1].item() == pytest.approx((0.25 * 10 + 0.5 * 20) / 0.75)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("norm_type", 3), ("group_by", "block"), ("max_groups", -1), ("nonfinite", "ignore")],
)
def test_invalid_argument_names_itself(argument, value):
    with pytest.raises(ValueError, match=argument):
        GradNormMonitor(**{argument: value})


# ---------------------------------------------------------------- hooks driven by hand


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(2, 3)
        self.hidden = nn.Linear(3, 3)
        self.out = nn.Linear(3, 1)
        self.unused = nn.Linear(1, 1)
        self.frozen.requires_grad_(False)


def fake_trainer(module: nn.Module, optimizer, logger: RecordingLogger, **overrides):
    settings = {
        "global_step": 0,
        "log_every_n_steps": 1,
        "precision_plugin": SimpleNamespace(),
        "accumulate_grad_batches": 1,
        "world_size": 1,
        "gradient_clip_val": None,
        "loggers": [logger],
        "is_global_zero": True,
        "optimizers": [optimizer],
    }
    settings.update(overrides)
    return SimpleNamespace(**settings)


def set_gradients(module: TwoLayers) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    grads = {}
    for name, param in module.named_parameters():
        if param.requires_grad and not name.startswith("unused"):
            param.grad = torch.randn(param.shape, generator=generator)
            grads[name] = param.grad.clone()
    return grads


def run_one_step(callback, trainer, module, optimizer) -> None:
    callback.on_train_start(trainer, module)
    callback.on_before_optimizer_step(trainer, module, optimizer)
    optimizer.step()
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_end(trainer, module)


@pytest.mark.parametrize("p", NORM_TYPES)
def test_hand_set_gradients_logged_per_layer(p):
    torch.manual_seed(0)
    module = TwoLayers()
    lr = 0.1
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=lr)
    logger = RecordingLogger()
    trainer = fake_trainer(module, optimizer, logger)
    grads = set_gradients(module)
    weights = {name: q.detach().clone() for name, q in module.named_parameters()}
    callback = GradNormMonitor(norm_type=p)

    run_one_step(callback, trainer, module, optimizer)

    ((step, metrics),) = logger.rows
    assert step == 0
    for layer in ("hidden", "out"):
        layer_grads = [grads[f"{layer}.weight"], grads[f"{layer}.bias"]]
        assert metrics[f"grad_norm/{layer}"] == pytest.approx(vector_norm(layer_grads, p), rel=1e-6)
        layer_weights = [weights[f"{layer}.weight"], weights[f"{layer}.bias"]]
        expected_weight = vector_norm(layer_weights, p)
        assert metrics[f"weight_norm/{layer}"] == pytest.approx(expected_weight, rel=1e-6)
        # Plain SGD moves the weights by -lr * grad.
        expected_ratio = lr * vector_norm(layer_grads, p) / expected_weight
        assert metrics[f"update_ratio/{layer}"] == pytest.approx(expected_ratio, rel=1e-4)
    total = vector_norm(list(grads.values()), p)
    assert metrics["grad_norm/total"] == pytest.approx(total, rel=1e-6)
    assert callback.last_total_norm.item() == pytest.approx(total, rel=1e-6)
    # Frozen and unused layers have no gradient: no key, not a zero.
    assert not any("frozen" in key or "unused" in key for key in metrics)


def test_total_is_not_sum_of_layer_norms():
    module = TwoLayers()
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=0.1)
    logger = RecordingLogger()
    set_gradients(module)

    run_one_step(GradNormMonitor(), fake_trainer(module, optimizer, logger), module, optimizer)

    metrics = logger.rows[0][1]
    layer_sum = metrics["grad_norm/hidden"] + metrics["grad_norm/out"]
    root_sum_sq = math.hypot(metrics["grad_norm/hidden"], metrics["grad_norm/out"])
    assert metrics["grad_norm/total"] == pytest.approx(root_sum_sq, rel=1e-6)
    assert metrics["grad_norm/total"] < layer_sum


def test_group_by_parameter_and_key_cap():
    module = TwoLayers()
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=0.1)
    logger = RecordingLogger()
    grads = set_gradients(module)
    callback = GradNormMonitor(group_by="parameter", max_groups=3, log_update_ratio=False)

    with pytest.warns(UserWarning, match="max_groups=3"):
        run_one_step(callback, fake_trainer(module, optimizer, logger), module, optimizer)

    metrics = logger.rows[0][1]
    grad_keys = sorted(k for k in metrics if k.startswith("grad_norm/") and "." in k)
    assert grad_keys == ["grad_norm/hidden.bias", "grad_norm/hidden.weight", "grad_norm/out.weight"]
    expected = torch.linalg.vector_norm(grads["hidden.weight"]).item()
    assert metrics["grad_norm/hidden.weight"] == pytest.approx(expected, rel=1e-6)
    # The total still covers the parameter left out of the keys (out.bias).
    assert metrics["grad_norm/total"] == pytest.approx(
        vector_norm(list(grads.values()), 2), rel=1e-6
    )


def test_steps_between_logs_are_not_logged():
    module = TwoLayers()
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=0.1)
    logger = RecordingLogger()
    trainer = fake_trainer(module, optimizer, logger, log_every_n_steps=3)
    callback = GradNormMonitor()
    callback.on_train_start(trainer, module)

    for step in range(7):
        trainer.global_step = step
        set_gradients(module)
        callback.on_before_optimizer_step(trainer, module, optimizer)
        optimizer.step()
        callback.on_train_batch_end(trainer, module, None, None, 0)

    # Logged when (step + 1) % 3 == 0, as Lightning logs train/loss.
    assert [step for step, _ in logger.rows] == [2, 5]


def put_inf_gradient(module: TwoLayers) -> None:
    set_gradients(module)
    module.out.bias.grad[0] = math.inf


def test_nonfinite_raise_names_parameter():
    module = TwoLayers()
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=0.1)
    trainer = fake_trainer(module, optimizer, RecordingLogger())
    put_inf_gradient(module)
    callback = GradNormMonitor(nonfinite="raise")
    callback.on_train_start(trainer, module)

    with pytest.raises(FloatingPointError, match="out.bias"):
        callback.on_before_optimizer_step(trainer, module, optimizer)


def test_nonfinite_skip_leaves_weights_unchanged():
    module = TwoLayers()
    optimizer = torch.optim.SGD(
        [q for q in module.parameters() if q.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1
    )
    logger = RecordingLogger()
    put_inf_gradient(module)
    weights = [q.detach().clone() for q in module.parameters()]

    run_one_step(
        GradNormMonitor(nonfinite="skip"),
        fake_trainer(module, optimizer, logger),
        module,
        optimizer,
    )

    for before, after in zip(weights, module.parameters(), strict=True):
        assert torch.equal(before, after)
    metrics = logger.rows[0][1]
    assert metrics["grad_norm/nonfinite_params"] == 1.0
    # A skipped step logs no norms, so its inf reaches no chart or average.
    assert "grad_norm/total" not in metrics


def test_nonfinite_warn_counts_and_names_first():
    module = TwoLayers()
    optimizer = torch.optim.SGD([q for q in module.parameters() if q.requires_grad], lr=0.1)
    logger = RecordingLogger()
    trainer = fake_trainer(module, optimizer, logger, log_every_n_steps=2)
    callback = GradNormMonitor()
    callback.on_train_start(trainer, module)

    with pytest.warns(
        UserWarning,
        match=r"1 parameter tensors held inf or NaN since the last log; the first is out\.bias",
    ):
        for step, put_gradients in enumerate([put_inf_gradient, set_gradients]):
            trainer.global_step = step
            put_gradients(module)
            callback.on_before_optimizer_step(trainer, module, optimizer)
            optimizer.step()
            callback.on_train_batch_end(trainer, module, None, None, 0)

    ((step, metrics),) = logger.rows
    assert step == 1
    assert metrics["grad_norm/nonfinite_params"] == 1.0


# ---------------------------------------------------------------- real Lightning runs


class LeastSquares(pl.LightningModule):
    """``y = x w + b`` with mean squared error: the gradient has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: float, lr: float = 0.01) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], 1)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.fill_(bias)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return ((self.linear(inputs).float() - targets) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def least_squares_data(num_samples: int = 32, dim: int = 5):
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(num_samples, dim, generator=generator)
    targets = inputs @ torch.arange(1.0, dim + 1).unsqueeze(1) + 0.5
    targets = targets + 0.3 * torch.randn(num_samples, 1, generator=generator)
    weight = 0.1 * torch.randn(1, dim, generator=generator)
    return inputs, targets, weight


def closed_form_gradient(inputs, targets, weight, bias) -> torch.Tensor:
    """Gradient of mean((x w^T + b - y)^2) with respect to (w, b): 2/n X_1^T (X_1 theta - y)."""
    residual = inputs @ weight.T + bias - targets
    grad_weight = 2.0 / inputs.shape[0] * (inputs.T @ residual).T
    grad_bias = 2.0 / inputs.shape[0] * residual.sum()
    return torch.cat([grad_weight.reshape(-1), grad_bias.reshape(1)])


def fit(module, loader, callback, logger, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_args,
    )
    trainer.fit(module, loader)
    return trainer


def test_least_squares_norm_matches_closed_form():
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32)
    logger = RecordingLogger()

    fit(LeastSquares(weight, 0.2), loader, GradNormMonitor(), logger, max_steps=1)

    expected = closed_form_gradient(inputs, targets, weight, 0.2).norm().item()
    ((step, metrics),) = logger.rows_with("grad_norm/total")
    assert step == 0
    assert metrics["grad_norm/total"] == pytest.approx(expected, rel=1e-5)
    assert metrics["grad_norm/linear"] == pytest.approx(expected, rel=1e-5)


def test_clipping_logs_norm_before_and_after():
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32)
    logger = RecordingLogger()
    clip = 0.5

    fit(
        LeastSquares(weight, 0.2),
        loader,
        GradNormMonitor(),
        logger,
        max_steps=1,
        gradient_clip_val=clip,
    )

    expected = closed_form_gradient(inputs, targets, weight, 0.2).norm().item()
    assert expected > 10 * clip
    metrics = logger.rows_with("grad_norm/total")[0][1]
    assert metrics["grad_norm/total"] == pytest.approx(expected, rel=1e-5)
    # torch.nn.utils.clip_grad_norm_ scales by clip / (norm + 1e-6).
    assert metrics["grad_norm/total_clipped"] == pytest.approx(clip, rel=1e-5)


def test_accumulation_logs_once_per_step():
    inputs, targets, weight = least_squares_data(num_samples=32)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8)
    logger = RecordingLogger()
    k = 2

    fit(
        LeastSquares(weight, 0.2),
        loader,
        GradNormMonitor(noise_scale_ema=0.0),
        logger,
        max_epochs=1,
        accumulate_grad_batches=k,
    )

    # 32 samples in micro-batches of 8, two per optimizer step: 2 steps, one row each.
    rows = logger.rows_with("grad_norm/total")
    assert [step for step, _ in rows] == [0, 1]
    # The first step's gradient is the mean of its two micro-batch gradients, taken at the
    # initial weights (before the optimizer step): the closed form on the first 16 samples.
    micro = [
        closed_form_gradient(inputs[i : i + 8], targets[i : i + 8], weight, 0.2) for i in (0, 8)
    ]
    accumulated = (micro[0] + micro[1]) / 2
    assert rows[0][1]["grad_norm/total"] == pytest.approx(accumulated.norm().item(), rel=1e-5)

    # Noise scale from the micro-batches (B = 8) against the accumulated gradient (B = 16). With
    # noise_scale_ema=0 the logged values are the latest step's estimates.
    small_sq = (micro[0].square().sum() + micro[1].square().sum()) / 2
    grad_sq, trace_sigma = estimate_noise_scale(small_sq, accumulated.square().sum(), 8, 16)
    assert rows[0][1]["noise_scale/grad_sq"] == pytest.approx(grad_sq.item(), rel=1e-4)
    assert rows[0][1]["noise_scale/trace_sigma"] == pytest.approx(trace_sigma.item(), rel=1e-4)
    expected_b_simple = (trace_sigma / grad_sq).item()
    assert rows[0][1]["noise_scale/b_simple"] == pytest.approx(expected_b_simple, rel=1e-4)


def test_bf16_mixed_matches_closed_form():
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32)
    logger = RecordingLogger()

    fit(
        LeastSquares(weight, 0.2),
        loader,
        GradNormMonitor(),
        logger,
        max_steps=1,
        precision="bf16-mixed",
    )

    expected = closed_form_gradient(inputs, targets, weight, 0.2).norm().item()
    # bfloat16 keeps 8 bits of mantissa, so the forward pass is off by about 1% (an estimate).
    assert logger.rows_with("grad_norm/total")[0][1]["grad_norm/total"] == pytest.approx(
        expected, rel=2e-2
    )


def test_fp16_mixed_cpu_matches_closed_form():
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32)
    logger = RecordingLogger()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    fit(
        LeastSquares(weight, 0.2),
        loader,
        GradNormMonitor(),
        logger,
        max_steps=1,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
    )

    expected = closed_form_gradient(inputs, targets, weight, 0.2).norm().item()
    metrics = logger.rows_with("grad_norm/total")[0][1]
    # The logged norm is of the unscaled gradients, and float16 keeps 11 bits of mantissa.
    assert metrics["grad_norm/total"] == pytest.approx(expected, rel=1e-2)
    assert metrics["amp/loss_scale"] == 2.0**8
    assert metrics["amp/skipped_steps"] == 0.0


def test_fp16_skipped_steps_not_logged():
    # A loss scale of 2^24 overflows float16 in the backward pass: the scaler skips steps and
    # halves the scale until the gradients fit.
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8)
    logger = RecordingLogger()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    callback = GradNormMonitor()
    max_steps = 20

    fit(
        LeastSquares(weight, 0.2),
        loader,
        callback,
        logger,
        max_steps=max_steps,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
        accumulate_grad_batches=2,
    )

    amp_rows = logger.rows_with("amp/loss_scale")
    assert len(amp_rows) == max_steps
    first = amp_rows[0][1]
    assert first["amp/skipped_steps"] == 1.0
    # The scale logged is the one after the scaler's update: halved by the skip.
    assert first["amp/loss_scale"] == 2.0**23
    assert "grad_norm/total" not in first
    norm_rows = logger.rows_with("grad_norm/total")
    skipped = sum(metrics["amp/skipped_steps"] for _, metrics in amp_rows)
    assert 0 < len(norm_rows) == max_steps - skipped
    for _, metrics in norm_rows:
        assert math.isfinite(metrics["grad_norm/total"])
        assert math.isfinite(metrics["noise_scale/b_simple"])
    assert math.isfinite(callback.last_total_norm.item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed with a CUDA GradScaler")
def test_fp16_mixed_cuda_matches_closed_form():
    inputs, targets, weight = least_squares_data()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32)
    logger = RecordingLogger()

    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        logger=logger,
        max_steps=1,
        callbacks=[GradNormMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(LeastSquares(weight, 0.2), loader)

    expected = closed_form_gradient(inputs, targets, weight, 0.2).norm().item()
    metrics = logger.rows_with("grad_norm/total")[0][1]
    # float16 keeps 11 bits of mantissa, so the norm of the unscaled gradients is within 1%.
    assert metrics["grad_norm/total"] == pytest.approx(expected, rel=1e-2)
    assert metrics["amp/loss_scale"] > 1.0
