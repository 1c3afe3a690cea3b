"""Lightning callback that runs the convergence detectors during training."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from descend.callbacks.grad_norm import GradNormMonitor
from descend.convergence import (
    ConvergenceReason,
    Detection,
    DivergenceDetector,
    PflugDetector,
    PlateauDetector,
    StationaryPointDetector,
)

log = logging.getLogger(__name__)

# Columns of one per-step record: training loss, gradient norm, inner product of this step's
# gradient with the previous one, and 1 where the gradient columns are available.
LOSS, GRAD_NORM, INNER_PRODUCT, HAS_GRAD = range(4)


class Action(Enum):
    """Response of the callback to a detection."""

    LOG = "log"
    STOP = "stop"
    REDUCE_LR = "reduce_lr"


# Default of each detector argument: the detector on, with its own defaults.
DEFAULT_SETTINGS: Mapping[str, Any] = MappingProxyType({})

DETECTOR_CLASSES = {
    "stationary_point": StationaryPointDetector,
    "plateau": PlateauDetector,
    "stationary_phase": PflugDetector,
    "divergence": DivergenceDetector,
}
DEFAULT_ACTIONS = {
    "stationary_point": Action.STOP,
    "plateau": Action.LOG,
    "stationary_phase": Action.LOG,
    "divergence": Action.STOP,
}


class ConvergenceDetection(Callback):
    """Detect a stationary point, a loss plateau, the stationary phase of SGD, or divergence.

    Each detector argument is a mapping of that detector's arguments plus an optional
    ``action`` (``"log"``, ``"stop"`` or ``"reduce_lr"``), or ``None`` to switch it off. By
    default every detector is on with its own defaults:

    - ``stationary_point``: :class:`~descend.convergence.StationaryPointDetector`
      (``grad_tol``, ``relative``); default action ``stop``.
    - ``plateau``: :class:`~descend.convergence.PlateauDetector` (``window``, ``rel_tol``,
      ``level``); default action ``log``.
    - ``stationary_phase``: :class:`~descend.convergence.PflugDetector` (``window``,
      ``level``, ``burnin``); default action ``log``, because on a network it also fires while
      the loss still falls (see docs/convergence.md). Only while it is on does the callback
      keep one flat copy of the previous gradient (as many numbers as the model has
      parameters).
    - ``divergence``: :class:`~descend.convergence.DivergenceDetector` (``divergence_factor``);
      action ``stop`` (default) or ``log``. On a stop the trainer's ``min_epochs`` /
      ``min_steps`` are lifted and every ``ModelCheckpoint`` stops writing, so ``last.ckpt`` and
      the best checkpoint stay the last ones written before the divergence.

    ``stop`` sets ``trainer.should_stop``: training ends after the current step, unless the
    trainer's ``min_epochs`` / ``min_steps`` are not reached yet, in which case Lightning keeps
    training until they are and then stops (nothing is trained twice). ``reduce_lr``
    multiplies the learning rate of every parameter group by ``lr_factor`` and resets that
    detector. NOTE: a scheduler that sets the learning rate from its base value (``LambdaLR``,
    ``OneCycleLR``) overwrites that reduction at its next step, while ``StepLR``, which
    multiplies the current learning rate, keeps it.

    The loss (from ``training_step``'s output) and the gradient statistics (in
    ``on_before_optimizer_step``, before gradient clipping) stay on the device as one small
    tensor per step. Checks come every ``check_every_n_steps`` optimizer steps, at the last batch
    of each epoch, at steps where a ``ModelCheckpoint`` saves every n training steps, and at the
    end of training. A check averages the pending records over ranks (one all-reduce under DDP),
    copies them to the host (one sync) and runs the detectors on each step in order. So a
    detection names the exact step, while the action comes at the check. Under DDP the gradient
    statistics are those of the already averaged gradient and the loss is the mean over ranks,
    in which a non-finite value on any rank makes the mean non-finite. So every rank reaches the
    same decision at the same step and no rank waits on another. When the stationary-phase
    detector is off and a :class:`~descend.callbacks.grad_norm.GradNormMonitor` with
    ``norm_type=2`` runs earlier in the callback list, its total norm of the step is reused.

    Logged: ``convergence/grad_norm``, ``convergence/plateau``, ``convergence/stationary_phase``
    and ``convergence/loss_ratio`` (each detector's statistic, at checks, on Lightning's logging
    schedule); at each detection ``convergence/step`` and ``convergence/reason`` (the
    :class:`~descend.convergence.ConvergenceReason` code: 1 stationary point, 2 plateau,
    3 stationary phase, 4 divergence), written to the loggers at once. At the end a one-line
    summary is logged and kept in ``summary``.

    Args:
        stationary_point, plateau, stationary_phase, divergence: detector settings, see above.
        lr_factor: learning-rate multiplier of the ``reduce_lr`` action, in (0, 1).
        check_every_n_steps: optimizer steps between two checks (each check is one host sync).
        testing_nan_step: for tests only; replaces the loss seen by the detectors at this
            optimizer step with NaN (training itself is untouched).
        testing_nan_rank: for tests only; the rank where ``testing_nan_step`` applies (``None``:
            every rank).
    """

    def __init__(
        self,
        stationary_point: Mapping[str, Any] | None = DEFAULT_SETTINGS,
        plateau: Mapping[str, Any] | None = DEFAULT_SETTINGS,
        stationary_phase: Mapping[str, Any] | None = DEFAULT_SETTINGS,
        divergence: Mapping[str, Any] | None = DEFAULT_SETTINGS,
        lr_factor: float = 0.5,
        check_every_n_steps: int = 10,
        testing_nan_step: int | None = None,
        testing_nan_rank: int | None = None,
    ) -> None:
        if not 0 < lr_factor < 1:
            raise ValueError(f"lr_factor={lr_factor} is invalid: it must lie in (0, 1)")
        if int(check_every_n_steps) != check_every_n_steps or check_every_n_steps < 1:
            raise ValueError(
                f"check_every_n_steps={check_every_n_steps} is invalid: it must be a positive integer"
            )
        self.lr_factor = float(lr_factor)
        self.check_every_n_steps = int(check_every_n_steps)
        self.testing_nan_step = testing_nan_step
        self.testing_nan_rank = testing_nan_rank

        self.detectors: dict[str, Any] = {}
        self.actions: dict[str, Action] = {}
        settings = {
            "stationary_point": stationary_point,
            "plateau": plateau,
            "stationary_phase": stationary_phase,
            "divergence": divergence,
        }
        for name, options in settings.items():
            if options is None:
                continue
            self._add_detector(name, dict(options))

        self.detections: list[Detection] = []
        self.summary = ""
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._step_grad_stats: torch.Tensor | None = None
        self._previous_grad: torch.Tensor | None = None
        self._last_recorded_step = -1

    def _add_detector(self, name: str, options: dict[str, Any]) -> None:
        action_name = options.pop("action", DEFAULT_ACTIONS[name].value)
        try:
            action = Action(action_name)
        except ValueError:
            choices = ", ".join(a.value for a in Action)
            raise ValueError(
                f"{name}.action={action_name!r} is invalid: use one of {choices}"
            ) from None
        if name == "divergence" and action is Action.REDUCE_LR:
            raise ValueError(
                "divergence.action='reduce_lr' is invalid: diverged weights cannot be repaired by a "
                "smaller learning rate; use 'stop' or 'log'"
            )
        detector_class = DETECTOR_CLASSES[name]
        try:
            self.detectors[name] = detector_class(**options)
        except TypeError as error:
            settings = ", ".join(inspect.signature(detector_class).parameters)
            raise TypeError(
                f"callbacks.convergence.{name} has an invalid setting ({error}); "
                f"{detector_class.__name__} takes {settings}, plus 'action'"
            ) from error
        self.actions[name] = action

    @property
    def convergence(self) -> Detection | None:
        """The first detection, if it is a convergence (not a divergence)."""
        if not self.detections or not self.detections[0].reason.is_convergence:
            return None
        return self.detections[0]

    @property
    def divergence(self) -> Detection | None:
        for detection in self.detections:
            if detection.reason is ConvergenceReason.DIVERGENCE:
                return detection
        return None

    # Recording, on the device.

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            self._step_grad_stats = None
            return

        if "stationary_phase" in self.detectors:
            flat = torch.cat([g.reshape(-1) for g in grads]).float()
            grad_norm = torch.linalg.vector_norm(flat)
            previous = self._previous_grad
            if previous is not None and previous.shape == flat.shape:
                inner_product = torch.dot(flat, previous.to(flat.device))
            else:
                inner_product = torch.full_like(grad_norm, math.nan)
            self._previous_grad = flat
        else:
            grad_norm = self._shared_grad_norm(trainer)
            if grad_norm is None:
                norms = torch._foreach_norm(grads)
                grad_norm = torch.linalg.vector_norm(torch.stack(norms).float())
            inner_product = torch.full_like(grad_norm, math.nan)
        self._step_grad_stats = torch.stack([grad_norm, inner_product])

    @staticmethod
    def _shared_grad_norm(trainer: pl.Trainer) -> torch.Tensor | None:
        """Return this step's total 2-norm from a gradient-norm monitor that ran earlier.

        Reusing it avoids reading the gradients twice. Returns ``None`` when there is none.
        """
        for callback in trainer.callbacks:
            if (
                isinstance(callback, GradNormMonitor)
                and callback.norm_type == 2.0
                and callback.last_total_norm_step == trainer.global_step
                and callback.last_total_norm is not None
            ):
                return callback.last_total_norm.float()
        return None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last_recorded_step:
            return  # a micro-batch of gradient accumulation: no optimizer step yet
        self._last_recorded_step = step
        self._pending.append((step, self._step_record(trainer, pl_module, outputs, step)))
        self._step_grad_stats = None

        if self._check_due(trainer, step):
            self._check(trainer, pl_module, act=True)

    def _step_record(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, step: int
    ) -> torch.Tensor:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float().reshape(())
        else:
            loss = torch.tensor(math.nan if loss is None else float(loss), device=pl_module.device)
        if step == self.testing_nan_step and self.testing_nan_rank in (None, trainer.global_rank):
            loss = loss * math.nan

        if self._step_grad_stats is None:
            grad_stats = torch.full((2,), math.nan, device=loss.device)
            has_grad = torch.zeros((), device=loss.device)
        else:
            grad_stats = self._step_grad_stats.to(loss.device)
            has_grad = torch.ones((), device=loss.device)
        return torch.cat([loss.view(1), grad_stats, has_grad.view(1)])

    def _check_due(self, trainer: pl.Trainer, step: int) -> bool:
        if step % self.check_every_n_steps == 0:
            return True
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        if trainer.max_steps > 0 and step >= trainer.max_steps:
            return True
        for checkpoint in trainer.checkpoint_callbacks:
            # NOTE: ModelCheckpoint exposes its every_n_train_steps only as a private attribute.
            every_n = getattr(checkpoint, "_every_n_train_steps", 0) or 0
            if every_n > 0 and step % every_n == 0:
                return True
        return False

    # Deciding, on the host.

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, act: bool) -> None:
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        records = torch.stack([record.to(pl_module.device) for _, record in self._pending])
        self._pending = []

        # The largest absolute weight is finite exactly when every weight is (a 2-norm could
        # overflow on large but finite weights).
        weights = [p.detach() for p in pl_module.parameters()]
        largest_weight = torch.stack(torch._foreach_norm(weights, math.inf)).max().float()
        packed = torch.cat([records.reshape(-1), largest_weight.to(records.device).view(1)])
        packed = trainer.strategy.reduce(packed, reduce_op="mean")
        values = packed.cpu().tolist()  # the one host sync of this check
        weights_finite = math.isfinite(values[-1])
        rows = [values[i * 4 : i * 4 + 4] for i in range(len(steps))]

        for index, (step, row) in enumerate(zip(steps, rows, strict=True)):
            is_last = index == len(steps) - 1
            for detection in self._update_detectors(step, row, weights_finite or not is_last):
                self._on_detection(trainer, pl_module, detection, act)
        if act:
            self._log_statistics(pl_module)

    def _update_detectors(
        self, step: int, row: list[float], weights_finite: bool
    ) -> list[Detection]:
        loss = row[LOSS]
        has_grad = row[HAS_GRAD] > 0.5
        grad_norm = row[GRAD_NORM] if has_grad else None
        detections = []

        divergence = self.detectors.get("divergence")
        if divergence is not None:
            detection = divergence.update(step, loss, grad_norm, weights_finite)
            if detection is not None:
                return [detection]
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return []  # a non-finite value is never a convergence

        if "stationary_point" in self.detectors and grad_norm is not None:
            detections.append(self.detectors["stationary_point"].update(step, grad_norm))
        if "plateau" in self.detectors:
            detections.append(self.detectors["plateau"].update(step, loss))
        if "stationary_phase" in self.detectors and has_grad:
            detections.append(self.detectors["stationary_phase"].update(step, row[INNER_PRODUCT]))
        return [d for d in detections if d is not None]

    def _on_detection(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, detection: Detection, act: bool
    ) -> None:
        name = next(n for n, d in self.detectors.items() if d.reason is detection.reason)
        action = self.actions[name]
        self.detections.append(detection)
        for logger in trainer.loggers:
            metrics = {
                "convergence/step": detection.step,
                "convergence/reason": detection.reason.code,
            }
            logger.log_metrics(metrics, step=trainer.global_step)

        if detection.reason is ConvergenceReason.DIVERGENCE:
            self._on_divergence(trainer, detection, stop=act and action is Action.STOP)
            return
        if trainer.is_global_zero:
            log.info(
                "Detected %s at step %d: %s",
                detection.reason.value,
                detection.step,
                detection.description,
            )
        if not act:
            return
        if action is Action.STOP:
            self._request_stop(trainer, detection)
        elif action is Action.REDUCE_LR:
            self._reduce_lr(trainer, name)

    def _on_divergence(self, trainer: pl.Trainer, detection: Detection, stop: bool) -> None:
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        lr_text = ", ".join(f"{lr:g}" for lr in lrs) or "unknown"
        message = (
            f"Training diverged at step {detection.step}: {detection.description}. The likely cause "
            f"is a learning rate ({lr_text}) too large for this model and batch size: lower "
            "model.optimizer.lr (e.g. 10x) or clip gradients (trainer.gradient_clip_val)."
        )
        if not stop:
            if trainer.is_global_zero:
                log.warning(message)
            return

        paths = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        paths = [path for path in paths if path]
        message += " Stopping; the checkpoints written before this step are kept"
        message += f" ({', '.join(paths)})." if paths else " (none was written yet)."
        if trainer.is_global_zero:
            log.error(message)

        # Diverged weights must not reach a checkpoint, and training on them must not continue
        # just because min_epochs / min_steps are not reached yet.
        for checkpoint in trainer.checkpoint_callbacks:
            checkpoint.save_last = False
            checkpoint.save_top_k = 0
        trainer.fit_loop.min_epochs = 0
        trainer.fit_loop.epoch_loop.min_steps = 0
        trainer.should_stop = True

    def _request_stop(self, trainer: pl.Trainer, detection: Detection) -> None:
        trainer.should_stop = True
        min_epochs = trainer.fit_loop.min_epochs or 0
        min_steps = trainer.fit_loop.epoch_loop.min_steps or 0
        epochs_done = trainer.current_epoch + 1
        if trainer.is_global_zero and (epochs_done < min_epochs or trainer.global_step < min_steps):
            log.info(
                "Stop requested at step %d (%s); training continues until trainer.min_epochs=%d "
                "and trainer.min_steps=%d are reached",
                detection.step,
                detection.reason.value,
                min_epochs,
                min_steps,
            )

    def _reduce_lr(self, trainer: pl.Trainer, name: str) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        self.detectors[name].reset()
        if trainer.is_global_zero:
            lrs = sorted({g["lr"] for opt in trainer.optimizers for g in opt.param_groups})
            log.info(
                "Learning rate multiplied by %g to %s; %s detector reset", self.lr_factor, lrs, name
            )

    def _log_statistics(self, pl_module: pl.LightningModule) -> None:
        keys = {
            "stationary_point": "convergence/grad_norm",
            "plateau": "convergence/plateau",
            "stationary_phase": "convergence/stationary_phase",
            "divergence": "convergence/loss_ratio",
        }
        for name, detector in self.detectors.items():
            if math.isfinite(detector.statistic):
                pl_module.log(keys[name], detector.statistic, on_step=True, on_epoch=False)

    # End of training and checkpoints.

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, act=False)
        self.summary = self._summarise(trainer)
        if trainer.is_global_zero:
            log.info("Convergence: %s", self.summary)

    def _summarise(self, trainer: pl.Trainer) -> str:
        divergence = self.divergence
        if divergence is not None:
            return f"diverged at step {divergence.step} ({divergence.description})"
        convergence = self.convergence
        if convergence is not None:
            action = self.actions.get(convergence.reason.value)
            if action is Action.STOP:
                text = f"converged at step {convergence.step} ({convergence.description})"
            else:
                # A detector that only logs must not read as the end of training.
                reason = convergence.reason.value.replace("_", " ")
                text = (
                    f"{reason} detected at step {convergence.step} ({convergence.description}); "
                    f"training continued to step {trainer.global_step} "
                    f"(action: {action.value if action else 'log'})"
                )
            others = [f"{d.reason.value} at step {d.step}" for d in self.detections[1:]]
            return text + (f"; also {', '.join(others)}" if others else "")
        latest = [
            f"{name} statistic {d.statistic:.3g}"
            for name, d in self.detectors.items()
            if math.isfinite(d.statistic)
        ]
        text = f"no convergence detected within {trainer.global_step} steps"
        return text + (f" ({', '.join(latest)})" if latest else "")

    def state_dict(self) -> dict[str, Any]:
        # NOTE: pending records are the saving rank's own; under DDP a resume mid-interval
        # replaces the other ranks' losses of those few steps by rank 0's.
        pending = [(step, record.detach().cpu().tolist()) for step, record in self._pending]
        previous = None if self._previous_grad is None else self._previous_grad.detach().cpu()
        return {
            "detectors": {name: d.state_dict() for name, d in self.detectors.items()},
            "detections": [d.state_dict() for d in self.detections],
            "pending": pending,
            "previous_grad": previous,
            "last_recorded_step": self._last_recorded_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, state in state_dict["detectors"].items():
            if name in self.detectors:
                self.detectors[name].load_state_dict(state)
        self.detections = [Detection.from_state_dict(d) for d in state_dict["detections"]]
        self._pending = [(step, torch.tensor(values)) for step, values in state_dict["pending"]]
        self._previous_grad = state_dict["previous_grad"]
        self._last_recorded_step = int(state_dict["last_recorded_step"])
