"""Read the run config stored in a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from descend.callbacks.run_config import CHECKPOINT_KEY


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass the path of a .ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {error}); the file may "
            "be truncated or not a checkpoint"
        ) from error


def stored_run_config(checkpoint: dict[str, Any], path: str | Path) -> DictConfig:
    """Return the resolved run config that ``descend-train`` stored in ``checkpoint``."""
    if CHECKPOINT_KEY not in checkpoint:
        raise KeyError(
            f"checkpoint {path} holds no run config (key {CHECKPOINT_KEY!r}): it was not "
            "written by descend-train"
        )
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY])
