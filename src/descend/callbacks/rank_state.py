"""Carry each rank's random generators and partly accumulated metrics through checkpoints."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics import Metric

from descend.utils.seeding import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "descend_rank_states"


def collect_rng_states() -> dict[str, Any]:
    """Return the states of Python's, NumPy's, PyTorch's CPU and every CUDA device's generator.

    Only tensors, numbers, strings and tuples appear, so ``torch.load(weights_only=True)``
    (Lightning's default for resuming with torch >= 2.6) accepts the checkpoint.
    """
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to ``states`` as returned by :func:`collect_rng_states`."""
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_generators(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and all CUDA devices) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def collect_metric_states(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Return the accumulated state of every torchmetrics ``Metric`` inside ``module``, by name.

    These states are not in the module's ``state_dict`` (torchmetrics registers them as
    non-persistent), so without this an epoch-level metric such as ``train/acc`` would cover
    only the batches after a mid-epoch resume.
    """
    # NOTE: reads torchmetrics' private `_defaults` (the state names) and `_update_count`;
    # checked with torchmetrics 1.9.
    states = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric):
            values = {key: _detach(getattr(metric, key)) for key in metric._defaults}
            states[name] = {"values": values, "update_count": metric._update_count}
    return states


def restore_metric_states(module: torch.nn.Module, states: dict[str, dict[str, Any]]) -> None:
    metrics = dict(module.named_modules())
    for name, state in states.items():
        metric = metrics.get(name)
        if not isinstance(metric, Metric):
            log.warning(
                "The checkpoint contains the state of metric %r, but the model has no such metric",
                name,
            )
            continue
        for key, value in state["values"].items():
            setattr(metric, key, _to_device(value, metric.device))
        metric._update_count = state["update_count"]
        metric._computed = None


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_detach(item) for item in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value


class RankStateCheckpoint(pl.Callback):
    """Seed each rank's generators apart; save their states and the metric accumulators in
    checkpoints and restore them on resume.

    With ``seed`` set, ``on_fit_start`` (after the model is built, so every rank initialises the
    same weights from the run's seed) reseeds Python's, NumPy's and PyTorch's global generators
    of rank ``r`` with :func:`~descend.utils.seeding.derive_seed` of ``(seed, r)``: dropout and
    augmentation in the training process then draw different numbers on every rank, and the
    same numbers in every run with that seed.

    Lightning 2.6's checkpoints hold neither: the global generators (Python, NumPy, PyTorch CPU
    and CUDA) decide dropout masks and augmentations, and the torchmetrics states hold what an
    epoch-level metric has accumulated so far. Both differ between DDP ranks, so every rank's
    states are gathered into the checkpoint (a collective call: every rank must save, as
    ``Trainer.save_checkpoint`` requires anyway) and each rank restores its own. They are applied
    in ``on_train_start``, after Lightning has built the model, optimizers and data loaders, so
    nothing between the restore and the first resumed step draws from the generators. A
    checkpoint written with another ``world_size`` restores nothing and logs a warning, because
    rank ``r`` of the new run has no counterpart.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._pending: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seed is not None:
            seed_generators(derive_seed(self.seed, trainer.global_rank))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = {"rng": collect_rng_states(), "metrics": collect_metric_states(pl_module)}
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        checkpoint[CHECKPOINT_KEY] = gathered

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        gathered = checkpoint.get(CHECKPOINT_KEY)
        if gathered is None:
            log.warning(
                "The checkpoint contains no random generator or metric states: the resumed run "
                "draws other random numbers than the interrupted one would have"
            )
            return
        if len(gathered) != trainer.world_size:
            log.warning(
                "The checkpoint contains the states of %d ranks but this run has world_size=%d: "
                "random generators keep their seeded states and metrics start empty",
                len(gathered),
                trainer.world_size,
            )
            return
        self._pending = gathered[trainer.global_rank]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        restore_rng_states(self._pending["rng"])
        restore_metric_states(pl_module, self._pending["metrics"])
        self._pending = None
