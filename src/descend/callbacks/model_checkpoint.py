"""Lightning's ModelCheckpoint, with ``last.ckpt`` always holding the latest training state."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` whose ``last.ckpt`` is always current.

    Lightning 2.6 differs from that in two places, and this class restores the expected meaning
    of ``last.ckpt``:

    * After a validation (or at an epoch's end), it writes ``last.ckpt`` only when a top-k
      checkpoint was saved at the same step. After an epoch that did not improve the monitored
      metric, ``last.ckpt`` would still hold the best epoch, and resuming from it would repeat
      the later epochs. Here ``last.ckpt`` is written at every such save point.
    * It defers an ``every_n_train_steps`` save, ``last.ckpt`` included, to the next validation
      while the monitored metric (``val/acc``) has not been logged yet. A run killed during its
      first epoch would then leave nothing to resume from. Here, at such a deferred step,
      ``last.ckpt`` is written anyway; the top-k choice still waits for the metric.

    All arguments are those of Lightning's class.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._keep_last_current(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._keep_last_current(trainer)

    def _keep_last_current(self, trainer: pl.Trainer) -> None:
        # `_should_skip_saving_checkpoint` is true when Lightning already saved at this step.
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._is_deferred_step(trainer):
            return
        metrics: dict[str, Any] = dict(trainer.callback_metrics)
        metrics.update(
            epoch=torch.tensor(trainer.current_epoch), step=torch.tensor(trainer.global_step)
        )
        path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        # Every rank calls save_checkpoint (it is collective); rank 0 writes the file.
        trainer.save_checkpoint(path, self.save_weights_only)
        self.last_model_path = path

    def _is_deferred_step(self, trainer: pl.Trainer) -> bool:
        # Lightning 2.6 exposes the step interval only as this private attribute.
        every_n = self._every_n_train_steps
        return (
            bool(self.save_last)
            and every_n >= 1
            and trainer.global_step % every_n == 0
            and self.monitor is not None
            and self.monitor not in trainer.callback_metrics
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
        )
