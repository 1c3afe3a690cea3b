"""A W&B logger that runs online with credentials and offline without, never prompting."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

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
    online only when credentials exist, so a machine without an account never sees a login prompt.
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
