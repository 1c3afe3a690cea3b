"""Gradient norms, weight norms, update ratios and the gradient noise scale, logged during fit."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size

from descend.gradients.local_norms import LocalGradientNorms
from descend.gradients.noise_scale import NoiseScaleEMA, b_simple, estimate_noise_scale
from descend.gradients.norms import (
    GroupLayout,
    check_norm_type,
    combine_host_norms,
    combine_norms,
    group_parameter_names,
    tensor_norms,
)

log = logging.getLogger(__name__)


class NonFinitePolicy(str, Enum):
    """Action taken when a gradient contains inf or NaN (outside 16-bit AMP)."""

    WARN = "warn"
    SKIP = "skip"
    RAISE = "raise"


@dataclass
class _StepRecord:
    """Measurements of one optimizer step, taken before it and finished after it."""

    step: int
    names: list[str]
    params: list[torch.Tensor]
    norms: torch.Tensor
    total: torch.Tensor
    log_now: bool
    skipped_by_policy: bool = False
    # A copy of the parameters before the step (logging steps only).
    weights_before: list[torch.Tensor] | None = None


class GradNormMonitor(pl.Callback):
    """Log how large each gradient-descent step is and where it comes from.

    On every optimizer step the callback measures the p-norm of each parameter's gradient with one
    fused ``torch._foreach_norm`` call and keeps the results on the device. Every
    ``log_every_n_steps`` optimizer steps it copies them to the host in one transfer and logs:

    - ``grad_norm/total``: the norm of all gradients as one vector, and ``grad_norm/<group>`` per
      layer (module) or per parameter tensor. Gradients are read in ``on_before_optimizer_step``:
      after gradient accumulation and the DDP all-reduce, unscaled under 16-bit AMP, before
      clipping. Parameters without a gradient (frozen or unused) are left out, not counted as 0.
    - ``grad_norm/total_clipped``: the total norm after Lightning's gradient clipping, when
      ``trainer.gradient_clip_val`` is set.
    - ``weight_norm/total`` and ``weight_norm/<group>``: norms of the parameters before the step.
    - ``update_ratio/total`` and ``update_ratio/<group>``: ``||theta_after - theta_before|| /
      ||theta_before||`` across the optimizer step, whatever the optimizer did (momentum, Adam,
      weight decay).
    - ``amp/loss_scale`` and ``amp/skipped_steps`` under 16-bit AMP with a gradient scaler.
    - ``grad_norm/nonfinite_params``: parameter tensors whose gradient held inf or NaN on some
      step since the previous log (not under 16-bit AMP, where the scaler handles them).
    - ``noise_scale/b_simple``, ``noise_scale/grad_sq`` and ``noise_scale/trace_sigma``: the
      gradient noise scale of McCandlish et al. (2018), see :mod:`descend.gradients.noise_scale`.
      It needs gradients at two batch sizes, so it is logged only under DDP (per-rank vs
      all-reduced gradient) or with ``accumulate_grad_batches > 1`` (micro-batch vs accumulated
      gradient). The small-batch norms come from tensor hooks on the parameters, which see each
      micro-batch's local gradient before accumulation and before the all-reduce.

    A step that was skipped (by the AMP gradient scaler or by ``nonfinite="skip"``) logs no
    gradient, weight or update values and does not enter the noise-scale average, so its infinite
    norm cannot poison an average. Under DDP every rank computes the same norms (the gradients are
    already all-reduced) and only rank 0 logs them.

    Args:
        norm_type: p of the p-norm: 1, 2 or ``"inf"``. The noise scale always uses p = 2.
        group_by: ``"layer"`` (one key per module, the default) or ``"parameter"`` (one key per
            parameter tensor, such as ``net.layers.0.weight``).
        max_groups: maximum number of per-group keys logged under each prefix. Further groups
            (in parameter order) are left out with a warning; ``total`` keys cover them all.
        log_every_n_steps: optimizer steps between two logs; ``None`` follows
            ``trainer.log_every_n_steps``, so the values line up with ``train/loss``.
        log_weight_norm: log ``weight_norm/...``.
        log_update_ratio: log ``update_ratio/...``; this copies the parameters on logging steps.
        noise_scale: estimate the gradient noise scale when two batch sizes are available.
        noise_scale_ema: decay of the moving average of the noise-scale estimates, in [0, 1).
        nonfinite: ``"warn"`` (log a warning at the next logging step), ``"skip"`` (drop all
            gradients so the optimizer leaves the weights unchanged) or ``"raise"`` (stop with a
            ``FloatingPointError``). ``"skip"`` and ``"raise"`` read one value back to the host on
            every step to decide; ``"warn"`` does not. Under 16-bit AMP the gradient scaler
            already skips such steps, so the policy does not apply there.

    Attributes:
        last_total_norm: the total gradient norm of the latest optimizer step as a 0-dim tensor on
            the training device (``None`` before the first step). It is set in
            ``on_before_optimizer_step``, so callbacks listed after this one read the current
            step's value in their own ``on_before_optimizer_step``. It is inf or NaN on a step
            with non-finite gradients, which the AMP scaler or ``nonfinite="skip"`` then skips.
            Reading it with ``float()`` costs one host sync.
    """

    def __init__(
        self,
        norm_type: float | int | str = 2,
        group_by: str = "layer",
        max_groups: int = 32,
        log_every_n_steps: int | None = None,
        log_weight_norm: bool = True,
        log_update_ratio: bool = True,
        noise_scale: bool = True,
        noise_scale_ema: float = 0.95,
        nonfinite: str = "warn",
    ) -> None:
        self.norm_type = check_norm_type(norm_type)
        group_parameter_names([], group_by)
        if not isinstance(max_groups, int) or max_groups < 0:
            raise ValueError(
                f"max_groups={max_groups!r} is invalid: it must be a non-negative integer "
                "(0 logs only the totals)"
            )
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int) or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is invalid: it must be a positive "
                "integer, or null to follow trainer.log_every_n_steps"
            )
        try:
            self.nonfinite = NonFinitePolicy(nonfinite)
        except ValueError:
            raise ValueError(
                f"nonfinite={nonfinite!r} is invalid: use 'warn', 'skip' or 'raise'"
            ) from None

        self.group_by = group_by
        self.max_groups = max_groups
        self.log_every_n_steps = log_every_n_steps
        self.log_weight_norm = log_weight_norm
        self.log_update_ratio = log_update_ratio
        self.noise_scale = noise_scale
        self.noise_ema = NoiseScaleEMA(noise_scale_ema)

        self.last_total_norm: torch.Tensor | None = None
        self.last_total_norm_step: int | None = None
        self._named_params: list[tuple[str, torch.nn.Parameter]] = []
        self._layouts: dict[tuple[str, ...], GroupLayout] = {}
        self._warned_cap = False
        self._record: _StepRecord | None = None
        self._step_taken = False
        self._optimizer_hooks: list[Any] = []
        self._skipped_steps = 0

        # Elementwise maximum of the per-tensor norms since the last log, for policy "warn".
        self._nonfinite_names: list[str] = []
        self._nonfinite_norms: torch.Tensor | None = None

        # Micro-batch (and per-rank) gradient norms of the current optimizer step.
        self._local_norms = LocalGradientNorms()
        self._micro_batch_sizes: list[int] = []

    # ------------------------------------------------------------------ setup and teardown

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._named_params = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        for optimizer in trainer.optimizers:
            self._optimizer_hooks.append(optimizer.register_step_post_hook(self._on_step_taken))

        if not self.noise_scale:
            return
        if trainer.world_size == 1 and trainer.accumulate_grad_batches == 1:
            log.info(
                "The gradient noise scale is not logged: it needs two batch sizes, from DDP "
                "(trainer.devices > 1) or from trainer.accumulate_grad_batches > 1"
            )
            return
        # NOTE: any other backward pass during training (a second loss, a probe of another
        # callback) also reaches these hooks and counts as a micro-batch.
        self._local_norms.attach(p for _, p in self._named_params)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        self._local_norms.detach()

    def _on_step_taken(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step_taken = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._local_norms.attached:
            self._micro_batch_sizes.append(extract_batch_size(batch))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._local_norms.attached:
            self._local_norms.end_pass()

    # ------------------------------------------------------------------ every optimizer step

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        names, params = [], []
        for name, param in self._named_params:
            if param.grad is not None:
                names.append(name)
                params.append(param)
        grads = [p.grad for p in params]
        norms = tensor_norms(grads, self.norm_type)
        total = combine_norms(norms, self.norm_type)

        step = trainer.global_step
        every_n = self.log_every_n_steps or trainer.log_every_n_steps
        log_now = every_n > 0 and (step + 1) % every_n == 0
        record = _StepRecord(step, names, params, norms, total, log_now)
        if params:
            self.last_total_norm = total
            self.last_total_norm_step = step

        if params and self._scaler(trainer) is None:
            record.skipped_by_policy = self._check_finite(record, pl_module)
        if self._local_norms.attached:
            self._update_noise_scale(trainer, grads, total)
        wants_weights = self.log_weight_norm or self.log_update_ratio
        if log_now and params and wants_weights and not record.skipped_by_policy:
            record.weights_before = [p.detach().clone() for p in params]

        self._record = record
        self._step_taken = False

    def _check_finite(self, record: _StepRecord, pl_module: pl.LightningModule) -> bool:
        """Record non-finite gradients on the device; return True when the step must be skipped."""
        if self._nonfinite_norms is None or self._nonfinite_names != record.names:
            self._report_nonfinite()
            self._nonfinite_norms = torch.zeros_like(record.norms)
            self._nonfinite_names = record.names
        # torch.maximum keeps any inf and propagates NaN, so the next log finds which parameters
        # had non-finite gradients without a host sync on this step.
        self._nonfinite_norms = torch.maximum(self._nonfinite_norms, record.norms)

        if self.nonfinite is NonFinitePolicy.WARN or math.isfinite(record.total.item()):
            return False
        names = _nonfinite_names(record.names, record.norms)
        message = (
            f"step {record.step}: the gradients of {len(names)} parameter tensors hold inf or "
            f"NaN, the first is {names[0]}"
        )
        if self.nonfinite is NonFinitePolicy.RAISE:
            raise FloatingPointError(
                f"{message}. Lower the learning rate, clip gradients (trainer.gradient_clip_val) "
                "or set callbacks.grad_norm.nonfinite=skip"
            )
        log.warning(
            "%s: skipping this optimizer step (callbacks.grad_norm.nonfinite=skip)", message
        )
        # Optimizers leave parameters without a gradient untouched (no momentum, no decay).
        for param in pl_module.parameters():
            param.grad = None
        return True

    def _update_noise_scale(
        self, trainer: pl.Trainer, grads: list[torch.Tensor], total: torch.Tensor
    ) -> None:
        micro_sq_sum, num_micro = self._local_norms.pop()
        batch_sizes = self._micro_batch_sizes
        self._micro_batch_sizes = []

        world_size = trainer.world_size
        if micro_sq_sum is None or num_micro * world_size < 2:
            return
        if len(set(batch_sizes)) != 1:
            # Micro-batches of unequal size (the end of an epoch) are left out. NOTE: the ranks'
            # batch sizes are assumed equal, as the project's loaders make them.
            return

        # Lightning divides the loss by accumulate_grad_batches, so each micro-batch gradient and
        # the accumulated .grad are 1/k of their means. A 16-bit AMP scaler also multiplies the
        # micro-batch gradients by its scale, while the .grad here is already unscaled.
        k = trainer.accumulate_grad_batches
        small_sq = micro_sq_sum * (k * k) / num_micro
        scaler = self._scaler(trainer)
        if scaler is not None and scaler._scale is not None:
            small_sq = small_sq / scaler._scale.float().square().to(small_sq.device)
        total_2 = total if self.norm_type == 2.0 else combine_norms(tensor_norms(grads, 2.0), 2.0)
        big_sq = total_2.square() * (k / num_micro) ** 2

        b_small = batch_sizes[0]
        b_big = b_small * num_micro * world_size
        grad_sq, trace_sigma = estimate_noise_scale(small_sq, big_sq, b_small, b_big)
        self.noise_ema.update(grad_sq, trace_sigma)

    # ------------------------------------------------------------------ after the step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        record = self._record
        if record is None:
            return
        self._record = None

        skipped = record.skipped_by_policy or not self._step_taken
        if skipped:
            self._skipped_steps += 1
        if record.log_now:
            self._log(trainer, record, skipped)

    def _log(self, trainer: pl.Trainer, record: _StepRecord, skipped: bool) -> None:
        # Everything this step logs goes to the host in one transfer. The few per-tensor values
        # are then combined into totals and groups in Python, which costs less than more kernels.
        rows: dict[str, torch.Tensor] = {}
        if record.params and not skipped:
            rows.update(self._per_tensor_rows(trainer, record))
        if self._nonfinite_norms is not None:
            rows["nonfinite"] = self._nonfinite_norms
        noise = self._noise_scale_values(trainer) if self._local_norms.attached else None
        if noise is not None:
            rows["noise_scale"] = noise

        host: dict[str, list[float]] = {}
        if rows:
            device = record.norms.device
            flat = torch.cat([row.to(device, torch.float32) for row in rows.values()]).tolist()
            position = 0
            for name, row in rows.items():
                host[name] = flat[position : position + row.numel()]
                position += row.numel()

        metrics = self._step_metrics(record, host)
        if "noise_scale" in host:
            b_simple_value, grad_sq, trace_sigma = host["noise_scale"]
            metrics["noise_scale/b_simple"] = b_simple_value
            metrics["noise_scale/grad_sq"] = grad_sq
            metrics["noise_scale/trace_sigma"] = trace_sigma
        if "nonfinite" in host:
            num_nonfinite = sum(not math.isfinite(value) for value in host["nonfinite"])
            metrics["grad_norm/nonfinite_params"] = float(num_nonfinite)
            if num_nonfinite:
                self._report_nonfinite(host["nonfinite"])
        scaler = self._scaler(trainer)
        if scaler is not None:
            # The scale after the scaler's update: halved after a skipped step.
            metrics["amp/loss_scale"] = scaler.get_scale()
            metrics["amp/skipped_steps"] = float(self._skipped_steps)
        self._skipped_steps = 0

        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record.step)

    def _per_tensor_rows(self, trainer: pl.Trainer, record: _StepRecord) -> dict[str, torch.Tensor]:
        """Return the per-tensor norms to log: gradients, weights, updates and clipped gradients."""
        rows = {"grad_norm": record.norms}
        if record.weights_before is not None:
            parts = list(record.weights_before)
            if self.log_update_ratio:
                current = [p.detach() for p in record.params]
                parts.extend(torch._foreach_sub(current, record.weights_before))
            norms = tensor_norms(parts, self.norm_type)
            num_params = len(record.params)
            rows["weight_norm"] = norms[:num_params]
            if self.log_update_ratio:
                rows["update"] = norms[num_params:]
        if trainer.gradient_clip_val:
            # NOTE: read after the optimizer step, which assumes the optimizer leaves .grad as
            # clipping left it (torch.optim's optimizers do).
            rows["clipped"] = tensor_norms([p.grad for p in record.params], self.norm_type)
        return rows

    def _step_metrics(self, record: _StepRecord, host: dict[str, list[float]]) -> dict[str, float]:
        """Turn the per-tensor norms read back to the host into totals and group keys."""
        if "grad_norm" not in host:
            return {}
        layout = self._layout(record.names)
        logged_groups = layout.names[: self.max_groups]
        p = self.norm_type
        metrics = {"grad_norm/total": combine_host_norms(host["grad_norm"], p)}
        for name, value in zip(logged_groups, layout.group_norms(host["grad_norm"]), strict=False):
            metrics[f"grad_norm/{name}"] = value
        if "clipped" in host:
            metrics["grad_norm/total_clipped"] = combine_host_norms(host["clipped"], p)
        if "weight_norm" not in host:
            return metrics

        weight_total = combine_host_norms(host["weight_norm"], p)
        weight_groups = layout.group_norms(host["weight_norm"])
        if self.log_weight_norm:
            metrics["weight_norm/total"] = weight_total
            for name, value in zip(logged_groups, weight_groups, strict=False):
                metrics[f"weight_norm/{name}"] = value
        if "update" in host:
            metrics["update_ratio/total"] = _ratio(
                combine_host_norms(host["update"], p), weight_total
            )
            update_groups = layout.group_norms(host["update"])
            for name, update, weight in zip(
                logged_groups, update_groups, weight_groups, strict=False
            ):
                metrics[f"update_ratio/{name}"] = _ratio(update, weight)
        return metrics

    def _layout(self, names: list[str]) -> GroupLayout:
        key = tuple(names)
        layout = self._layouts.get(key)
        if layout is None:
            layout = GroupLayout(group_parameter_names(names, self.group_by), self.norm_type)
            self._layouts[key] = layout
            if len(layout.names) > self.max_groups and not self._warned_cap:
                rank_zero_warn(
                    f"{len(layout.names)} {self.group_by} groups exceed "
                    f"callbacks.grad_norm.max_groups={self.max_groups}: only the first "
                    f"{self.max_groups} get their own keys (the totals cover all of them)"
                )
                self._warned_cap = True
        return layout

    def _noise_scale_values(self, trainer: pl.Trainer) -> torch.Tensor | None:
        """Return ``[B_simple, |G|^2, tr(S)]`` from the moving averages (None before any)."""
        averages = self.noise_ema.averages()
        if averages is None:
            return None
        if trainer.world_size > 1:
            # Each rank averaged its own small-batch norms. The estimates are linear in them, so
            # the mean over ranks of the averages is the average of the rank-mean estimates.
            averages = trainer.strategy.reduce(averages.clone(), reduce_op="mean")
        return torch.cat([b_simple(averages).reshape(1), averages])

    def _report_nonfinite(self, norms: list[float] | None = None) -> None:
        """Warn (policy "warn") about the parameters recorded since the last log; reset."""
        if self._nonfinite_norms is None:
            return
        if norms is None:
            norms = self._nonfinite_norms.tolist()
        names = [
            n for n, v in zip(self._nonfinite_names, norms, strict=True) if not math.isfinite(v)
        ]
        if names and self.nonfinite is NonFinitePolicy.WARN:
            rank_zero_warn(
                f"the gradients of {len(names)} parameter tensors held inf or NaN since the last "
                f"log; the first is {names[0]}. Lower the learning rate or clip gradients "
                "(trainer.gradient_clip_val)"
            )
        self._nonfinite_norms = torch.zeros_like(self._nonfinite_norms)

    @staticmethod
    def _scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
        return getattr(trainer.precision_plugin, "scaler", None)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"noise_ema": self.noise_ema.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "noise_ema" in state_dict:
            self.noise_ema.load_state_dict(state_dict["noise_ema"])


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0.0 else math.nan


def _nonfinite_names(names: list[str], norms: torch.Tensor) -> list[str]:
    finite = torch.isfinite(norms).tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]
