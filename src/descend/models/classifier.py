"""LightningModule for multi-class classification."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from descend.models.supervised import OptimizerFactory, SchedulerFactory, SupervisedModule


class ClassificationModule(SupervisedModule):
    """Train ``net`` with ``loss`` and log loss and accuracy on every split.

    Logged keys: ``train/loss`` every ``trainer.log_every_n_steps`` optimizer steps, ``train/acc``
    per epoch, and ``val/loss``,
    ``val/acc``, ``test/loss``, ``test/acc`` per evaluation. Accuracy is torchmetrics'
    micro-averaged ``MulticlassAccuracy``; under DDP it is reduced over all ranks. Values stay on
    the device between logging steps, so the training step itself causes no host sync.

    Args:
        net: network that maps a batch of inputs to ``num_classes`` logits.
        loss: criterion applied to ``(logits, targets)``, e.g. ``nn.CrossEntropyLoss()``.
        optimizer: callable that takes the parameters and returns an optimizer (a Hydra partial,
            e.g. ``torch.optim.SGD`` with ``lr`` bound).
        num_classes: number of classes, for the accuracy metrics.
        scheduler: optional callable that takes the optimizer and returns a scheduler, stepped
            once per ``scheduler_interval``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__(net, loss, optimizer, scheduler, scheduler_interval)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        inputs, targets = batch
        logits = self(inputs)
        return self.loss(logits, targets), logits, targets

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, logits, targets = self._shared_step(batch)
        # `update` only accumulates counts; the epoch's accuracy is computed once at its end.
        self.train_acc.update(logits.detach(), targets)
        if self.logs_this_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # compute() already reduces over DDP ranks; sync_dist only keeps Lightning from warning
        # about an unsynchronised epoch-level value (averaging equal values changes nothing).
        self.log("train/acc", self.train_acc.compute(), sync_dist=True)
        self.train_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, logits, targets = self._shared_step(batch)
        self.val_acc(logits, targets)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, logits, targets = self._shared_step(batch)
        self.test_acc(logits, targets)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)
