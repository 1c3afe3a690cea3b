"""Base LightningModule of the supervised tasks: a network, a loss and an optimiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class SupervisedModule(pl.LightningModule):
    """Base class that stores ``net`` and ``loss`` and builds the optimiser and the scheduler.

    Subclasses write the ``*_step`` methods and choose what to log.

    Args:
        net: network that maps a batch of inputs to predictions.
        loss: criterion applied to ``(predictions, targets)``.
        optimizer: callable that takes the parameters and returns an optimizer (a Hydra partial,
            e.g. ``torch.optim.SGD`` with ``lr`` bound).
        scheduler: optional callable that takes the optimizer and returns a scheduler, stepped
            once per ``scheduler_interval``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        lr = getattr(optimizer, "keywords", {}).get("lr")
        if lr is not None and not lr > 0:
            raise ValueError(
                f"model.optimizer.lr={lr} is invalid: the learning rate must be a positive number"
            )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"model.scheduler_interval={scheduler_interval!r} is invalid: use 'epoch' or 'step'"
            )

        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def logs_this_step(self) -> bool:
        """Return whether the trainer writes this step's metrics to its loggers.

        ``self.log`` costs more than the whole step of a small model on a CPU, so subclasses log
        per-step values only on the steps Lightning writes (every ``log_every_n_steps``
        optimizer steps). Callbacks that need every step's loss read ``outputs["loss"]`` in
        ``on_train_batch_end``.
        """
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
