"""LightningModule for regression with a scalar target."""

from __future__ import annotations

import torch

from descend.models.supervised import SupervisedModule


class RegressionModule(SupervisedModule):
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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        loss = self.loss(self(inputs), targets)
        if self.logs_this_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        self.log("val/loss", self.loss(self(inputs), targets), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        self.log("test/loss", self.loss(self(inputs), targets), sync_dist=True)
