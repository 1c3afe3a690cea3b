"""LightningModule for regression with a scalar target."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from descend.models.classifier import OptimizerFactory, SchedulerFactory


class RegressionModule(pl.LightningModule):
    """Train ``net`` with ``loss`` (e.g. mean squared error) and log the loss on every split.

    Logged keys: ``train/loss`` every ``trainer.log_every_n_steps`` optimizer steps, and
    ``val/loss`` and ``test/loss`` per evaluation (averaged over ranks under DDP). Arguments
    mean what they mean for :class:`~descend.models.ClassificationModule`, which has no
    regression counterpart of accuracy to log.

    Args:
        net: network that maps a batch of inputs to predictions of the targets' shape.
        loss: criterion applied to ``(predictions, targets)``, e.g. ``nn.MSELoss()``.
        optimizer: callable that takes the parameters and returns an optimizer.
        scheduler: optional callable that takes the optimizer and returns a scheduler.
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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        loss = self.loss(self(inputs), targets)
        # As in ClassificationModule, `self.log` runs only on the steps the loggers write.
        every = self.trainer.log_every_n_steps
        if self.trainer.fast_dev_run or (every > 0 and (self.global_step + 1) % every == 0):
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        self.log("val/loss", self.loss(self(inputs), targets), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        self.log("test/loss", self.loss(self(inputs), targets), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
