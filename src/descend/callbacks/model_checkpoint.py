"""Lightning's ModelCheckpoint, with ``last.ckpt`` written every N steps from the first step on."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that keeps ``last.ckpt`` current before the
    monitored metric exists.

    Lightning 2.6 defers an ``every_n_train_steps`` save, ``last.ckpt`` included, to the next
    validation while the monitored metric (``val/acc``) has not been logged yet. A run killed
    during its first epoch would then leave nothing to resume from. Here, at such a deferred
    step, ``last.ckpt`` is written anyway; the top-k choice still waits for the metric. All
    arguments are those of Lightning's class.
    """

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
