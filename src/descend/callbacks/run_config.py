"""Store the run's resolved config inside every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

CHECKPOINT_KEY = "descend_config"


class StoreRunConfig(pl.Callback):
    """Add the resolved config (a plain dict) to each checkpoint under ``"descend_config"``.

    ``descend-eval`` and ``descend-landscape`` rebuild the data and the model from it, so a
    checkpoint of any experiment evaluates without repeating its overrides.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = self.config
