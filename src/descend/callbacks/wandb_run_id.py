"""Remember the W&B run in each checkpoint so that a resume can continue it."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

CHECKPOINT_KEY = "descend_wandb_run_id"


class StoreWandbRunId(pl.Callback):
    """Add the id of the run's W&B run to each checkpoint under ``"descend_wandb_run_id"``.

    ``descend-train ckpt_path=... logger.wandb.resume=allow`` reads it back and passes it to
    ``wandb.init(id=..., resume=...)``, so the resumed training appends to the same W&B run.
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_KEY] = logger.version
                return
