"""Record every optimizer step's weights of a small model, for drawing its exact path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

log = logging.getLogger(__name__)

TRAJECTORY_FILE = "trajectory.npz"


class WeightTrajectory(pl.Callback):
    """Keep the flat weights before the first step and after every optimizer step.

    Meant for models with a handful of parameters, whose loss surface is drawn in the weights
    themselves with no projection. The snapshots take ``8 * num_parameters * (steps + 1)``
    bytes (float64), and the callback raises at the start of fit when the model has more than
    ``max_parameters`` parameters. At the end of fit rank 0 writes ``output_dir/trajectory.npz``
    with ``steps`` (``[T]``, ``trainer.global_step`` of each row), ``weights`` (``[T, P]``,
    float64) and ``names`` (the ``P`` parameter names, in ``named_parameters`` order).

    Args:
        output_dir: directory of ``trajectory.npz``.
        max_parameters: largest parameter count accepted.
    """

    def __init__(self, output_dir: str | Path, max_parameters: int = 64) -> None:
        if max_parameters < 1:
            raise ValueError(f"max_parameters={max_parameters} is invalid: it must be positive")
        self.output_dir = Path(output_dir)
        self.max_parameters = max_parameters
        self.steps: list[int] = []
        self.weights: list[torch.Tensor] = []
        self.names: list[str] = []

    def _flat_weights(self, pl_module: pl.LightningModule) -> torch.Tensor:
        vectors = [p.detach().reshape(-1) for p in pl_module.parameters()]
        return torch.cat(vectors).to("cpu", torch.float64)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        count = sum(p.numel() for p in pl_module.parameters())
        if count > self.max_parameters:
            raise ValueError(
                f"WeightTrajectory keeps every step's weights, but the model has {count} "
                f"parameters (max_parameters={self.max_parameters}): use the landscape "
                "callback's snapshots for large models, or raise max_parameters"
            )
        self.names = [name for name, _ in pl_module.named_parameters()]
        self.steps = [trainer.global_step]
        self.weights = [self._flat_weights(pl_module)]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step != self.steps[-1]:
            self.steps.append(step)
            self.weights.append(self._flat_weights(pl_module))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / TRAJECTORY_FILE
        np.savez(
            path,
            steps=np.asarray(self.steps),
            weights=torch.stack(self.weights).numpy(),
            names=np.asarray(self.names),
        )
        log.info("Weight trajectory (%d points) saved to %s", len(self.steps), path)


def load_trajectory(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``trajectory.npz`` written by :class:`WeightTrajectory`."""
    with np.load(path) as data:
        return {key: data[key] for key in ("steps", "weights", "names")}
