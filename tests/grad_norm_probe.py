"""A callback for the DDP test: saves each rank's view of GradNormMonitor to a file."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from descend.callbacks import GradNormMonitor


class GradNormProbe(pl.Callback):
    """Write ``rank<r>.pt`` with the initial network weights and ``last_total_norm`` per step."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.initial_state: dict[str, torch.Tensor] = {}
        self.total_norms: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial_state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        monitor = next(c for c in trainer.callbacks if isinstance(c, GradNormMonitor))
        self.total_norms.append(float(monitor.last_total_norm))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"initial_state": self.initial_state, "total_norms": self.total_norms}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")
