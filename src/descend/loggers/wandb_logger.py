"""A W&B logger that runs online with credentials and offline without, never prompting."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

from descend.callbacks.wandb_run_id import CHECKPOINT_KEY as WANDB_RUN_ID_KEY

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    """Return whether an API key is set in ``WANDB_API_KEY`` or stored in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not netrc_path.is_file():
        return False
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """Turn ``mode`` into ``online``, ``offline`` or ``disabled``.

    ``auto`` follows the ``WANDB_MODE`` environment variable when it is set, and otherwise runs
    online only when credentials exist, so a machine without an account never gets a login prompt.
    """
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is invalid: use one of {MODES}")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


def build_wandb_logger(mode: str = "auto", **kwargs) -> WandbLogger:
    """Create a ``WandbLogger`` in the mode :func:`resolve_wandb_mode` picks.

    Keyword arguments go to ``WandbLogger`` (``project``, ``save_dir``, ``name``, ``tags``, ...).
    Offline runs are stored under ``<save_dir>/wandb/offline-run-*``; ``make sync`` uploads them.
    """
    resolved = resolve_wandb_mode(mode)
    if resolved == "offline":
        log.info("W&B runs offline (no credentials found); upload later with `make sync`")
    # The mode goes to `wandb.init` directly: WandbLogger(offline=True) would also set
    # WANDB_MODE in this process's environment, which leaks into later runs of a multirun.
    return WandbLogger(mode=resolved, **kwargs)


def continue_wandb_run(cfg: DictConfig, checkpoint: dict[str, Any] | None) -> None:
    """Point ``logger.wandb.id`` at the checkpoint's W&B run when ``logger.wandb.resume`` is set.

    Without ``resume`` a resumed training starts a new W&B run, because reusing an id silently
    would mix two trainings' histories.
    """
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, DictConfig) or not wandb_cfg.get("resume"):
        return
    if wandb_cfg.get("id"):
        return
    run_id = checkpoint.get(WANDB_RUN_ID_KEY) if checkpoint is not None else None
    if run_id is None:
        raise ValueError(
            f"logger.wandb.resume={wandb_cfg.resume} needs a W&B run id: pass ckpt_path=<a "
            "checkpoint written with the W&B logger> or logger.wandb.id=<run id>"
        )
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
    log.info("Continuing W&B run %s", run_id)
