"""Read the run config stored in a checkpoint."""

from __future__ import annotations

import os
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
            f"checkpoint {path} contains no run config (key {CHECKPOINT_KEY!r}): it was not "
            "written by descend-train"
        )
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY])


LAST_CHECKPOINT_NAME = "last.ckpt"
RESUME_PATH_ENV = "DESCEND_RESUME_PATH"


def find_last_checkpoint(log_dir: str | Path) -> Path:
    """Return the most recently modified ``last.ckpt`` below ``log_dir``."""
    log_dir = Path(log_dir)
    candidates = [path for path in log_dir.rglob(LAST_CHECKPOINT_NAME) if path.is_file()]
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last found no {LAST_CHECKPOINT_NAME} under {log_dir}: train with "
            "callbacks.model_checkpoint.save_last=true first, or pass ckpt_path=<path to a .ckpt file>"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)


def resolve_resume_path(ckpt_path: str | None, log_dir: str | Path) -> Path | None:
    """Turn the ``ckpt_path`` setting into the checkpoint file to resume from (``None``: no resume).

    ``"last"`` means the newest ``last.ckpt`` below ``log_dir``; any other value is a file path.
    """
    if ckpt_path is None or str(ckpt_path) == "":
        return None
    if str(ckpt_path) == "last":
        # DDP processes that Lightning starts re-run this; they reuse rank 0's choice, because a
        # newer last.ckpt may have appeared under log_dir since rank 0 looked.
        inherited = os.environ.get(RESUME_PATH_ENV)
        if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
            return Path(inherited)
        path = find_last_checkpoint(log_dir)
        os.environ[RESUME_PATH_ENV] = str(path)
        return path
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} is invalid: no such file (pass a .ckpt file, or "
            "ckpt_path=last for the newest last.ckpt under logs/)"
        )
    return path


def check_checkpoint_matches_model(
    checkpoint: dict[str, Any], model: torch.nn.Module, path: str | Path
) -> None:
    """Raise ``ValueError`` unless ``checkpoint`` contains weights for exactly ``model``'s parameters.

    Compares names and shapes of the state dict, so a checkpoint of another network (``mlp``
    against ``cnn``, another width) is rejected before training starts, with the differences.
    """
    if "state_dict" not in checkpoint:
        raise ValueError(
            f"checkpoint {path} contains no model weights (key 'state_dict'): it is not a Lightning checkpoint"
        )
    stored = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}

    missing = sorted(expected.keys() - stored.keys())
    unexpected = sorted(stored.keys() - expected.keys())
    reshaped = sorted(
        f"{name} {stored[name]} vs {expected[name]}"
        for name in expected.keys() & stored.keys()
        if stored[name] != expected[name]
    )
    if missing or unexpected or reshaped:
        details = []
        if missing:
            details.append(f"missing {_first(missing)}")
        if unexpected:
            details.append(f"unexpected {_first(unexpected)}")
        if reshaped:
            details.append(f"other shapes (checkpoint vs model) {_first(reshaped)}")
        raise ValueError(
            f"checkpoint {path} is from a different model: {'; '.join(details)}. Resume with "
            "the model settings of the run that wrote it (see its config.yaml)"
        )


def _first(names: list[str], limit: int = 5) -> str:
    listed = ", ".join(names[:limit])
    return listed if len(names) <= limit else f"{listed} and {len(names) - limit} more"
