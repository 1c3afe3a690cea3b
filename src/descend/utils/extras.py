"""Optional steps before a run: warnings filter and the printed config tree."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from descend.utils.config_tree import print_config_tree

log = logging.getLogger(__name__)

# Warnings that Lightning 2.6.6 raises from its own code on every run with torch 2.14. A user
# cannot act on them, so they are hidden and the warnings that remain are about the run.
UPSTREAM_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)


def apply_extras(cfg: DictConfig) -> None:
    """Hide :data:`UPSTREAM_WARNINGS` and apply ``cfg.extras``: ``ignore_warnings`` hides all
    Python warnings, ``print_config`` prints the config tree and saves it as
    ``config_tree.log`` in the run directory (rank 0 only)."""
    for message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config") and rank_zero_only.rank == 0:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
