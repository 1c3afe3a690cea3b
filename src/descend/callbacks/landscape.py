"""Loss landscapes around the trained weights, with the optimiser's path drawn on them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from descend.landscape.evaluation import BatchNormMode, Evaluator, make_eval_batches
from descend.landscape.parameters import ParameterSpace
from descend.landscape.report import (
    LandscapeSettings,
    compute_landscapes,
    summary_metrics,
    write_landscapes,
)
from descend.landscape.results import Curve, Surface
from descend.landscape.state import preserved_model_state, preserved_rng_state

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SNAPSHOTS_FILE = "snapshots.npz"


class LossLandscape(pl.Callback):
    """Record weight snapshots during fit and compute loss landscapes at its end.

    Snapshots (flat float32 copies of all parameters, kept on the CPU) are taken before the
    first step and every ``snapshot_every_n_steps`` optimizer steps. When they would exceed
    ``snapshot_memory_mb``, every second snapshot is dropped and the interval doubles, so
    memory stays under the budget for any run length. At the end of fit (and every
    ``every_n_epochs`` training epochs, when set) the surfaces of ``settings`` are computed on a
    fixed evaluation subset and written to ``output_dir``: ``<name>.npz``, PNG figures and
    ``trajectory_path.csv``. Figures go to W&B as images and the 1-D curves as line plots;
    scalars (explained variance, barrier height, ...) go to every logger under
    ``landscape/``.

    The callback has no side effects on training. Parameters, buffers, ``training`` and
    ``requires_grad`` flags, BatchNorm momenta and the torch, numpy and Python random streams
    are restored bit for bit. Random directions come from a private ``torch.Generator``, and
    the optimizer is never touched.

    Under DDP every rank takes part (each evaluates a share of the grid points and the results
    are gathered), and only rank 0 writes files and logs.

    Args:
        surfaces, grid_points, random_extent, trajectory_margin, line_points,
            interpolation_margin, normalization, ignore_bias_and_bn, seed: see
            :class:`~descend.landscape.report.LandscapeSettings`.
        output_dir: directory for the files (the run directory's ``landscape/`` in the config).
        split: data split of the evaluation subset, ``train``, ``val`` or ``test``.
        num_samples: samples in the evaluation subset (null: the whole split).
        batch_size: samples per evaluation batch; the per-point standard error comes from the
            spread of the per-batch losses.
        snapshot_every_n_steps: optimizer steps between weight snapshots.
        snapshot_memory_mb: memory budget of the snapshots in MiB (CPU memory).
        every_n_epochs: also compute the landscapes every N training epochs (null: only at
            the end of fit).
        bn_mode: ``trained`` (running statistics of the trained weights) or ``recompute``
            (re-estimated at each point on ``num_bn_batches`` training batches).
        num_bn_batches: training batches of ``batch_size`` used by ``bn_mode=recompute``.
        method: ``auto``, ``vmap`` or ``loop``, see :mod:`descend.landscape.evaluation`.
        chunk_size: grid points per vmapped forward pass.
        save_figures: draw PNG figures (about 0.2 s each).
        save_snapshots: write the snapshots to ``snapshots.npz`` at the end of fit (float32,
            at most ``snapshot_memory_mb``), so ``descend-landscape`` can redraw the path.
        loss_fn: loss of ``(outputs, targets)``; ``None`` uses the module's ``loss`` attribute.
    """

    def __init__(
        self,
        output_dir: str,
        surfaces: Sequence[str] = ("trajectory", "interpolation"),
        grid_points: Sequence[int] | int = (21, 21),
        random_extent: Sequence[float] | float = (1.0, 1.0),
        trajectory_margin: float = 1.25,
        line_points: int = 41,
        interpolation_margin: float = 0.25,
        normalization: str = "filter",
        ignore_bias_and_bn: bool = True,
        seed: int = 0,
        split: str = "train",
        num_samples: int | None = 512,
        batch_size: int = 64,
        snapshot_every_n_steps: int = 10,
        snapshot_memory_mb: float = 256.0,
        every_n_epochs: int | None = None,
        bn_mode: str = "trained",
        num_bn_batches: int = 8,
        method: str = "auto",
        chunk_size: int = 32,
        save_figures: bool = True,
        save_snapshots: bool = True,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"callbacks.landscape.split={split!r} is invalid: use one of {SPLITS}")
        if snapshot_every_n_steps < 1:
            raise ValueError(
                f"callbacks.landscape.snapshot_every_n_steps={snapshot_every_n_steps} is "
                "invalid: it must be a positive integer"
            )
        if not snapshot_memory_mb > 0:
            raise ValueError(
                f"callbacks.landscape.snapshot_memory_mb={snapshot_memory_mb} is invalid: it "
                "must be a positive number of MiB"
            )
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(
                f"callbacks.landscape.every_n_epochs={every_n_epochs} is invalid: use a "
                "positive integer, or null to compute only at the end of fit"
            )
        if num_bn_batches < 1:
            raise ValueError(
                f"callbacks.landscape.num_bn_batches={num_bn_batches} is invalid: it must be "
                "a positive integer"
            )

        self.settings = LandscapeSettings(
            surfaces=tuple(surfaces),
            grid_points=grid_points,
            random_extent=random_extent,
            trajectory_margin=trajectory_margin,
            line_points=line_points,
            interpolation_margin=interpolation_margin,
            normalization=normalization,
            ignore_bias_and_bn=ignore_bias_and_bn,
            seed=seed,
        )
        self.output_dir = Path(output_dir)
        self.split = split
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_memory_mb = snapshot_memory_mb
        self.every_n_epochs = every_n_epochs
        self.bn_mode = BatchNormMode(bn_mode)
        self.num_bn_batches = num_bn_batches
        self.method = method
        self.chunk_size = chunk_size
        self.save_figures = save_figures
        self.save_snapshots = save_snapshots
        self.loss_fn = loss_fn

        self.interval = snapshot_every_n_steps
        self.snapshots: list[torch.Tensor] = []
        self.snapshot_steps: list[int] = []
        self.max_snapshots = 0
        self.results: dict[str, Surface | Curve] = {}

    # Snapshots ---------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # NOTE: after a resume from a checkpoint the path (and the "initial" weights of the
        # interpolation) start at the resumed step, because snapshots are not checkpointed.
        space = ParameterSpace.of(pl_module)
        bytes_per_snapshot = 4 * space.size
        self.max_snapshots = int(self.snapshot_memory_mb * 2**20 // bytes_per_snapshot)
        if self.max_snapshots < 4:
            raise ValueError(
                f"callbacks.landscape.snapshot_memory_mb={self.snapshot_memory_mb} fits only "
                f"{self.max_snapshots} snapshots of {space.size} parameters "
                f"({bytes_per_snapshot / 2**20:.1f} MiB each): raise it to at least "
                f"{4 * bytes_per_snapshot / 2**20:.1f}"
            )
        self.interval = self.snapshot_every_n_steps
        self.snapshots, self.snapshot_steps = [], []
        self._take_snapshot(pl_module, trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.interval == 0 and self.snapshot_steps[-1] != step:
            self._take_snapshot(pl_module, step)

    def _take_snapshot(self, pl_module: pl.LightningModule, step: int) -> None:
        if len(self.snapshots) >= self.max_snapshots:
            self.snapshots = self.snapshots[::2]
            self.snapshot_steps = self.snapshot_steps[::2]
            self.interval *= 2
            log.info(
                "Landscape snapshots reached their budget of %.0f MiB: kept every second one, "
                "now one every %d steps",
                self.snapshot_memory_mb,
                self.interval,
            )
            if step % self.interval != 0:
                return
        with torch.no_grad():
            vector = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
        self.snapshots.append(vector.to("cpu", torch.float32, copy=True))
        self.snapshot_steps.append(step)

    # Landscapes --------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is None or trainer.fast_dev_run:
            return
        epoch = trainer.current_epoch + 1
        # The last epoch is left to on_train_end, which draws the final landscapes.
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        if epoch % self.every_n_epochs == 0 and not last_epoch:
            self._compute(trainer, pl_module, suffix=f"_epoch{epoch:03d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        self._compute(trainer, pl_module, suffix="")

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, suffix: str) -> None:
        started = time.perf_counter()
        with preserved_rng_state(), preserved_model_state(pl_module):
            evaluator = self._evaluator(trainer, pl_module)
            snapshots, steps = self._trajectory(pl_module, trainer.global_step)
            self.results = compute_landscapes(
                evaluator, self.settings, initial=snapshots[0], snapshots=snapshots, steps=steps
            )
            if trainer.is_global_zero:
                if self.save_snapshots and not suffix:
                    save_snapshots(self.output_dir / SNAPSHOTS_FILE, snapshots, steps)
                figures = write_landscapes(self.results, self.output_dir, suffix, self.save_figures)
                self._log(trainer, figures, suffix)
        log.info(
            "Loss landscapes (%s) written to %s in %.2f s",
            ", ".join(self.results),
            self.output_dir,
            time.perf_counter() - started,
        )

    def _trajectory(
        self, pl_module: pl.LightningModule, step: int
    ) -> tuple[torch.Tensor, np.ndarray]:
        snapshots = list(self.snapshots)
        steps = list(self.snapshot_steps)
        if steps[-1] != step:
            with torch.no_grad():
                final = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
            snapshots.append(final.to("cpu", torch.float32, copy=True))
            steps.append(step)
        return torch.stack(snapshots), np.asarray(steps)

    def _evaluator(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Evaluator:
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(pl_module, "loss", None)
        if not callable(loss_fn):
            raise ValueError(
                f"{type(pl_module).__name__} has no callable `loss` attribute: pass "
                "callbacks.landscape.loss_fn (e.g. {_target_: torch.nn.CrossEntropyLoss})"
            )
        inputs, targets = split_tensors(trainer.datamodule, self.split)
        device = pl_module.device
        batches = make_eval_batches(
            inputs, targets, self.num_samples, self.batch_size, self.settings.seed, device
        )
        bn_batches = []
        if self.bn_mode is BatchNormMode.RECOMPUTE:
            train_inputs, train_targets = split_tensors(trainer.datamodule, "train")
            bn_batches = make_eval_batches(
                train_inputs,
                train_targets,
                self.num_bn_batches * self.batch_size,
                self.batch_size,
                self.settings.seed + 1,
                device,
            )
        return Evaluator(
            pl_module,
            loss_fn,
            batches,
            method=self.method,
            chunk_size=self.chunk_size,
            bn_mode=self.bn_mode,
            bn_batches=bn_batches,
            distributed=trainer.world_size > 1,
        )

    def _log(self, trainer: pl.Trainer, figures: dict[str, list[Path]], suffix: str) -> None:
        metrics = summary_metrics(self.results, prefix=f"landscape{suffix}")
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                log_to_wandb(logger, self.results, figures, suffix, step)


def save_snapshots(path: Path, snapshots: torch.Tensor, steps: np.ndarray) -> None:
    """Write the weight snapshots ``[n, size]`` and their optimizer steps to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, snapshots=snapshots.numpy(), steps=np.asarray(steps))


def load_snapshots(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Read a file written by :func:`save_snapshots`."""
    with np.load(Path(path)) as data:
        return torch.from_numpy(data["snapshots"]), data["steps"]


def split_tensors(
    datamodule: pl.LightningDataModule | None, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``(inputs, targets)`` tensors of ``split`` from ``datamodule``.

    Data modules that keep their splits as tensors (``InMemoryDataModule``) are read directly.
    For others the split's dataloader is iterated once, so the caller must restore the random
    streams.
    """
    if datamodule is None:
        raise ValueError(
            "the landscape callback needs a LightningDataModule: pass datamodule= to fit"
        )
    splits = getattr(datamodule, "splits", None)
    if isinstance(splits, dict) and split in splits:
        return splits[split]
    loader = getattr(datamodule, f"{split}_dataloader")()
    inputs, targets = [], []
    for batch_inputs, batch_targets in loader:
        inputs.append(batch_inputs)
        targets.append(batch_targets)
    return torch.cat(inputs), torch.cat(targets)


def log_to_wandb(
    logger: WandbLogger,
    results: dict[str, Surface | Curve],
    figures: dict[str, list[Path]],
    suffix: str,
    step: int,
) -> None:
    """Log the figures as images, the curves as line plots and the path as a table."""
    import wandb

    # One key per figure: W&B shows the images of one key side by side only when their sizes
    # match, and the contour and surface figures differ.
    for paths in figures.values():
        for path in paths:
            logger.log_image(key=f"landscape/{path.stem}", images=[str(path)], step=step)

    payload = {}
    for name, result in results.items():
        if isinstance(result, Curve):
            table = wandb.Table(
                columns=["alpha", "loss", "accuracy"],
                data=[
                    [float(alpha), float(loss), float(accuracy)]
                    for alpha, loss, accuracy in zip(
                        result.alpha, result.loss, result.accuracy, strict=True
                    )
                ],
            )
            payload[f"landscape{suffix}/{name}_curve"] = wandb.plot.line(
                table, "alpha", "loss", title=f"Loss along the {name.replace('_', ' ')}"
            )
        elif result.trajectory is not None:
            path = result.trajectory
            payload[f"landscape{suffix}/{name}_path"] = wandb.Table(
                columns=["step", "a", "b", "true_loss", "plane_loss", "residual"],
                data=[
                    [int(s), float(c[0]), float(c[1]), float(t), float(p), float(r)]
                    for s, c, t, p, r in zip(
                        path.steps,
                        path.coordinates,
                        path.true_loss,
                        path.plane_loss,
                        path.residual,
                        strict=True,
                    )
                ],
            )
    if payload:
        logger.experiment.log(payload)
