"""Optional steps before a run: warnings filter and the printed config tree."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from descend.utils.config_tree import print_config_tree

log = logging.getLogger(__name__)


def apply_extras(cfg: DictConfig) -> None:
    """Apply ``cfg.extras``: ``ignore_warnings`` hides Python warnings, ``print_config`` prints
    the config tree and saves it as ``config_tree.log`` in the run directory (rank 0 only)."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config") and rank_zero_only.rank == 0:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
