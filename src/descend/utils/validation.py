"""Reject invalid settings before any work starts, with messages that name key, value and range."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from numbers import Real
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)

ACCELERATOR_ALIASES = ("auto", "gpu")

# Point counts of the loss-landscape grids: one integer or one per axis, each >= 1.
GRID_SIZE_KEYS = ("grid_points", "line_points")
# Half-widths of the random plane and line: one number or one per axis, each > 0.
GRID_EXTENT_KEYS = ("random_extent",)


def validate_train_config(cfg: DictConfig) -> None:
    """Run every check of the training config; each raises ``ValueError`` on the first problem.

    Extend :data:`CONFIG_CHECKS` to add a check that needs only the config.
    """
    for check in CONFIG_CHECKS:
        check(cfg)


def check_learning_rate(cfg: DictConfig) -> None:
    optimizer = cfg.get("model", {}).get("optimizer")
    if not isinstance(optimizer, DictConfig) or "lr" not in optimizer:
        return
    lr = optimizer.lr
    if isinstance(lr, bool) or not isinstance(lr, Real) or not lr > 0:
        raise ValueError(
            f"model.optimizer.lr={lr!r} is invalid: the learning rate must be a number > 0 "
            "(e.g. model.optimizer.lr=0.1)"
        )


def check_batch_size(cfg: DictConfig) -> None:
    """Check ``data.batch_size`` > 0; the upper bound (the train-set size) needs the data, see
    :func:`check_batch_size_fits`."""
    batch_size = cfg.get("data", {}).get("batch_size")
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"data.batch_size={batch_size!r} is invalid: it must be an integer in [1, size of "
            "the training set] (the training-set size gives full-batch gradient descent)"
        )


def check_batch_size_fits(batch_size: int, num_train_samples: int) -> None:
    if batch_size > num_train_samples:
        raise ValueError(
            f"data.batch_size={batch_size} is invalid: it must lie in [1, {num_train_samples}], "
            f"the size of the training set (data.batch_size={num_train_samples} gives full-batch "
            "gradient descent)"
        )


def check_accelerator(cfg: DictConfig) -> None:
    accelerator = cfg.trainer.get("accelerator", "auto")
    if not isinstance(accelerator, str):
        return
    allowed = sorted({*ACCELERATOR_ALIASES, *AcceleratorRegistry.available_accelerators()})
    if accelerator.lower() not in allowed:
        raise ValueError(f"trainer.accelerator={accelerator!r} is invalid: use one of {allowed}")


def available_devices(accelerator: str) -> tuple[str, int] | None:
    """Return a device kind and how many of them this machine has, or ``None`` for no limit.

    CPU runs have no limit: ``devices=N`` there starts N processes, which is valid on any number
    of cores (``trainer=ddp_sim``).
    """
    accelerator = accelerator.lower()
    if accelerator in ("gpu", "cuda"):
        return "CUDA GPU", torch.cuda.device_count()
    if accelerator == "mps":
        return "MPS device", int(torch.backends.mps.is_available())
    if accelerator == "auto" and torch.cuda.is_available():
        return "CUDA GPU", torch.cuda.device_count()
    return None


def requested_device_count(devices: Any) -> int | None:
    """Number of devices ``trainer.devices`` requests; ``None`` for ``auto`` and ``-1`` (all)."""
    if isinstance(devices, (list, ListConfig)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        if text.isdigit():
            return int(text)
        raise ValueError(
            f"trainer.devices={devices!r} is invalid: use a positive integer, a list of device "
            "indices, -1 (all) or 'auto'"
        )
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices == -1:
            return None
        if devices <= 0:
            raise ValueError(
                f"trainer.devices={devices} is invalid: use a positive integer, a list of device "
                "indices, -1 (all) or 'auto'"
            )
        return devices
    raise ValueError(f"trainer.devices={devices!r} is invalid: use an integer, a list or 'auto'")


def check_devices(cfg: DictConfig) -> None:
    requested = requested_device_count(cfg.trainer.get("devices", "auto"))
    accelerator = cfg.trainer.get("accelerator", "auto")
    if requested is None or not isinstance(accelerator, str):
        return
    limit = available_devices(accelerator)
    if limit is None:
        return
    kind, count = limit
    if requested > count:
        raise ValueError(
            f"trainer.devices={cfg.trainer.devices} is invalid for "
            f"trainer.accelerator={accelerator}: this machine has {count} {kind}(s), so use "
            f"a value in [1, {count}]" + ("" if count else ", or trainer.accelerator=cpu")
        )


def _grid_nodes(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    landscape = cfg.get("landscape")
    if isinstance(landscape, DictConfig):
        yield "landscape", landscape
    for name, entry in (cfg.get("callbacks") or {}).items():
        if isinstance(entry, DictConfig) and "landscape" in str(entry.get("_target_", "")).lower():
            yield f"callbacks.{name}", entry


def check_landscape_grids(cfg: DictConfig) -> None:
    """Reject empty loss-landscape grids in ``landscape`` and in landscape callbacks.

    A grid is empty when an axis has no point (:data:`GRID_SIZE_KEYS`) or no width
    (:data:`GRID_EXTENT_KEYS`).
    """
    for prefix, node in _grid_nodes(cfg):
        for key, value in node.items():
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, ListConfig)) else [value]
            if key in GRID_SIZE_KEYS and not all(_is_positive_int(v) for v in values):
                raise ValueError(
                    f"{prefix}.{key}={_show(value)} is invalid: each axis of a grid needs an "
                    "integer number of points >= 1"
                )
            if key in GRID_EXTENT_KEYS and not all(_is_positive_number(v) for v in values):
                raise ValueError(
                    f"{prefix}.{key}={_show(value)} is invalid: each half-width must be a "
                    "number > 0, otherwise the grid is empty"
                )


def _show(value: Any) -> Any:
    return list(value) if isinstance(value, ListConfig) else value


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value > 0


def check_trained(trainer: pl.Trainer) -> None:
    """Raise ``ValueError`` when fit ran no training batch because the loader yielded none.

    Lightning 2.6 only warns in that case and reports a finished fit.
    """
    if trainer.num_training_batches == 0 or trainer.limit_train_batches == 0:
        raise ValueError(
            f"the training loader yielded zero batches (trainer.limit_train_batches="
            f"{trainer.limit_train_batches}), so no optimizer step ran: check data.batch_size "
            "against the training-set size divided by trainer.devices, data.drop_last and "
            "trainer.limit_train_batches"
        )


CONFIG_CHECKS: list[Callable[[DictConfig], None]] = [
    check_learning_rate,
    check_batch_size,
    check_accelerator,
    check_devices,
    check_landscape_grids,
]
