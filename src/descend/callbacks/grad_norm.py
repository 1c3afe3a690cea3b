"""Gradient norms, weight norms, update ratios and the gradient noise scale, logged during fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size

from descend.gradients.noise_scale import NoiseScaleEMA, b_simple, estimate_noise_scale
from descend.gradients.norms import (
    GroupedNorms,
    check_norm_type,
    combine_norms,
    group_parameter_names,
    tensor_norms,
)

log = logging.getLogger(__name__)


class NonFinitePolicy(str, Enum):
    """What the callback does when a gradient holds inf or NaN (outside 16-bit AMP)."""

    WARN = "warn"
    SKIP = "skip"
    RAISE = "raise"


@dataclass
class _StepRecord:
    """What ``on_before_optimizer_step`` measured, finished after the optimizer step."""

    step: int
    names: list[str]
    params: list[torch.Tensor]
    norms: torch.Tensor
    total: torch.Tensor
    log_now: bool
    skipped_by_policy: bool = False
    weight_norms: torch.Tensor | None = None
    weights_before: list[torch.Tensor] = field(default_factory=list)


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
    - ``grad_norm/nonfinite_steps``: steps since the previous log whose gradients held inf or NaN.
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
        max_groups: the most per-group keys logged under each prefix; further groups are left
            out (in parameter order) with a warning. ``total`` keys are always logged.
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
        last_total_norm: the latest total gradient norm as a 0-dim tensor on the training device
            (``None`` before the first step), updated on every optimizer step that was not
            skipped. Reading it with ``float()`` costs one host sync.
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
        self._named_params: list[tuple[str, torch.nn.Parameter]] = []
        self._groupers: dict[tuple[str, ...], GroupedNorms] = {}
        self._group_names: list[str] = []
        self._warned_cap = False
        self._record: _StepRecord | None = None
        self._step_taken = False
        self._optimizer_hooks: list[Any] = []
        self._skipped_steps = 0

        # Non-finite gradients seen since the last log, tracked on the device (policy "warn").
        self._nonfinite_steps: torch.Tensor | None = None
        self._first_nonfinite_names: list[str] = []
        self._first_nonfinite_norms = torch.zeros(0)

        # Small-batch measurements of the current accumulation window (noise scale).
        self._tensor_hooks: list[Any] = []
        self._micro_parts: list[torch.Tensor] = []
        self._micro_sq_sum: torch.Tensor | None = None
        self._micro_batch_sizes: list[int] = []

    # ------------------------------------------------------------------ setup and teardown

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._named_params = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        for optimizer in trainer.optimizers:
            self._optimizer_hooks.append(optimizer.register_step_post_hook(self._on_step_taken))

        if not self.noise_scale:
            return
        world_size = trainer.world_size
        accumulate = trainer.accumulate_grad_batches
        if world_size == 1 and accumulate == 1:
            log.info(
                "The gradient noise scale is not logged: it needs two batch sizes, from DDP "
                "(trainer.devices > 1) or from trainer.accumulate_grad_batches > 1"
            )
            return
        for _, param in self._named_params:
            self._tensor_hooks.append(param.register_hook(self._measure_micro_gradient))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._optimizer_hooks + self._tensor_hooks:
            handle.remove()
        self._optimizer_hooks = []
        self._tensor_hooks = []

    def _on_step_taken(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step_taken = True

    # ------------------------------------------------------------------ noise-scale inputs

    def _measure_micro_gradient(self, grad: torch.Tensor) -> None:
        # Runs during backward with this rank's gradient of one micro-batch, before it is added to
        # .grad and before DDP averages it.
        self._micro_parts.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._tensor_hooks:
            self._micro_batch_sizes.append(extract_batch_size(batch))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._micro_parts:
            return
        squared = torch.stack(self._micro_parts).square().sum()
        self._micro_parts = []
        if self._micro_sq_sum is None:
            self._micro_sq_sum = squared
        else:
            self._micro_sq_sum = self._micro_sq_sum + squared

    # ------------------------------------------------------------------ every optimizer step

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        names = [n for n, p in self._named_params if p.grad is not None]
        params = [p for _, p in self._named_params if p.grad is not None]
        grads = [p.grad for p in params]
        norms = tensor_norms(grads, self.norm_type)
        total = combine_norms(norms, self.norm_type)

        step = trainer.global_step
        every_n = self.log_every_n_steps or trainer.log_every_n_steps
        log_now = every_n > 0 and (step + 1) % every_n == 0
        record = _StepRecord(step, names, params, norms, total, log_now)

        if params and self._scaler(trainer) is None:
            record.skipped_by_policy = self._check_finite(record, pl_module)
        if self._tensor_hooks:
            self._update_noise_scale(trainer, grads, total)
        if log_now and params and not record.skipped_by_policy:
            if self.log_weight_norm or self.log_update_ratio:
                record.weight_norms = tensor_norms(params, self.norm_type)
            if self.log_update_ratio:
                record.weights_before = [p.detach().clone() for p in params]

        self._record = record
        self._step_taken = False

    def _check_finite(self, record: _StepRecord, pl_module: pl.LightningModule) -> bool:
        """Count non-finite gradients on the device; return True when the step must be skipped."""
        bad = ~torch.isfinite(record.total)
        if self._nonfinite_steps is None or self._first_nonfinite_names != record.names:
            # NOTE: the first offending step is tracked only while the set of parameters with
            # gradients stays the same; a change restarts the tracking.
            self._nonfinite_steps = torch.zeros((), dtype=torch.long, device=bad.device)
            self._first_nonfinite_norms = torch.zeros_like(record.norms)
            self._first_nonfinite_names = record.names
        self._nonfinite_steps += bad
        # Keep the norms of the first non-finite step since the last log, without a host sync.
        seen = ~torch.isfinite(self._first_nonfinite_norms).all()
        keep = seen | ~bad
        self._first_nonfinite_norms = torch.where(keep, self._first_nonfinite_norms, record.norms)

        if self.nonfinite is NonFinitePolicy.WARN or bool(torch.isfinite(record.total)):
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
        micro_sq_sum = self._micro_sq_sum
        batch_sizes = self._micro_batch_sizes
        self._micro_sq_sum = None
        self._micro_batch_sizes = []

        num_micro = len(batch_sizes)
        world_size = trainer.world_size
        if micro_sq_sum is None or num_micro == 0 or num_micro * world_size < 2:
            return
        if len(set(batch_sizes)) > 1:
            # NOTE: micro-batches of unequal size (the end of an epoch) are left out; the ranks'
            # batch sizes are assumed equal, as the project's loaders make them.
            return

        # Lightning divides the loss by accumulate_grad_batches, so each micro-batch gradient and
        # the accumulated .grad are 1/k of their means; a 16-bit AMP scaler multiplies the
        # micro-batch gradients by its scale (the .grad here is already unscaled).
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
        elif record.params:
            self.last_total_norm = record.total
        if record.log_now:
            self._log(trainer, record, skipped)

    def _log(self, trainer: pl.Trainer, record: _StepRecord, skipped: bool) -> None:
        scalars: dict[str, torch.Tensor] = {}
        groups: dict[str, torch.Tensor] = {}
        if record.params and not skipped:
            self._step_values(trainer, record, scalars, groups)
        if self._nonfinite_steps is not None:
            scalars["grad_norm/nonfinite_steps"] = self._nonfinite_steps
        if self._tensor_hooks:
            scalars.update(self._noise_scale_values(trainer))

        metrics = _to_host(scalars, groups, self._group_names[: self.max_groups])
        scaler = self._scaler(trainer)
        if scaler is not None:
            metrics["amp/loss_scale"] = scaler.get_scale()
            metrics["amp/skipped_steps"] = float(self._skipped_steps)
        self._skipped_steps = 0
        self._report_nonfinite(metrics.get("grad_norm/nonfinite_steps", 0.0))

        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record.step)

    def _step_values(
        self,
        trainer: pl.Trainer,
        record: _StepRecord,
        scalars: dict[str, torch.Tensor],
        groups: dict[str, torch.Tensor],
    ) -> None:
        grouper = self._grouper(record.names, record.norms.device)
        scalars["grad_norm/total"] = record.total
        groups["grad_norm/"] = grouper(record.norms)

        if trainer.gradient_clip_val:
            # NOTE: read after the optimizer step, which assumes the optimizer leaves .grad as
            # clipping left it (torch.optim's optimizers do).
            clipped = tensor_norms([p.grad for p in record.params], self.norm_type)
            scalars["grad_norm/total_clipped"] = combine_norms(clipped, self.norm_type)

        weight_norms = record.weight_norms
        if weight_norms is None:
            return
        total_weight = combine_norms(weight_norms, self.norm_type)
        group_weight = grouper(weight_norms)
        if self.log_weight_norm:
            scalars["weight_norm/total"] = total_weight
            groups["weight_norm/"] = group_weight
        if record.weights_before:
            current = [p.detach() for p in record.params]
            update_norms = tensor_norms(
                torch._foreach_sub(current, record.weights_before), self.norm_type
            )
            scalars["update_ratio/total"] = (
                combine_norms(update_norms, self.norm_type) / total_weight
            )
            groups["update_ratio/"] = grouper(update_norms) / group_weight

    def _grouper(self, names: list[str], device: torch.device) -> GroupedNorms:
        key = tuple(names)
        grouper = self._groupers.get(key)
        if grouper is None:
            groups = group_parameter_names(names, self.group_by)
            grouper = GroupedNorms(groups, self.norm_type, device)
            self._groupers[key] = grouper
            if len(grouper.names) > self.max_groups and not self._warned_cap:
                rank_zero_warn(
                    f"{len(grouper.names)} {self.group_by} groups exceed "
                    f"callbacks.grad_norm.max_groups={self.max_groups}: only the first "
                    f"{self.max_groups} get their own keys (the totals cover all of them)"
                )
                self._warned_cap = True
        self._group_names = grouper.names
        return grouper

    def _noise_scale_values(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        averages = self.noise_ema.averages()
        if averages is None:
            return {}
        if trainer.world_size > 1:
            # Each rank averaged its own small-batch norms; the estimates are linear in them, so
            # the mean over ranks of the averages is the average of the rank-mean estimates.
            averages = trainer.strategy.reduce(averages.clone(), reduce_op="mean")
        return {
            "noise_scale/b_simple": b_simple(averages),
            "noise_scale/grad_sq": averages[0],
            "noise_scale/trace_sigma": averages[1],
        }

    def _report_nonfinite(self, count: float) -> None:
        if count > 0 and self.nonfinite is NonFinitePolicy.WARN:
            names = _nonfinite_names(self._first_nonfinite_names, self._first_nonfinite_norms)
            first = names[0] if names else "not recorded"
            rank_zero_warn(
                f"{int(count)} optimizer steps since the last log had inf or NaN gradients; at "
                f"the first, {len(names)} parameter tensors were affected, first {first}. Lower "
                "the learning rate or clip gradients (trainer.gradient_clip_val)"
            )
        if self._nonfinite_steps is not None:
            self._nonfinite_steps = torch.zeros_like(self._nonfinite_steps)
            self._first_nonfinite_norms = torch.zeros_like(self._first_nonfinite_norms)

    @staticmethod
    def _scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
        return getattr(trainer.precision_plugin, "scaler", None)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"noise_ema": self.noise_ema.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "noise_ema" in state_dict:
            self.noise_ema.load_state_dict(state_dict["noise_ema"])


def _to_host(
    scalars: dict[str, torch.Tensor], groups: dict[str, torch.Tensor], group_names: list[str]
) -> dict[str, float]:
    """Copy every value to the host in one transfer; name grouped values ``<prefix><group>``."""
    tensors = [t.detach().reshape(-1).float() for t in [*scalars.values(), *groups.values()]]
    if not tensors:
        return {}
    flat = torch.cat([t.to(tensors[0].device) for t in tensors]).tolist()

    metrics = dict(zip(scalars, flat, strict=False))
    position = len(scalars)
    for prefix, vector in groups.items():
        values = flat[position : position + vector.numel()]
        metrics.update(
            {prefix + name: value for name, value in zip(group_names, values, strict=False)}
        )
        position += vector.numel()
    return metrics


def _nonfinite_names(names: list[str], norms: torch.Tensor) -> list[str]:
    finite = torch.isfinite(norms).tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]
