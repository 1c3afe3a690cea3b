"""Show the composed config as a rich tree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

FIRST_KEYS = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


def print_config_tree(
    cfg: DictConfig, save_to: Path | None = None, order: Sequence[str] = FIRST_KEYS
) -> None:
    """Print ``cfg`` with one branch per top-level key, and save the same text to ``save_to``."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [key for key in order if key in cfg] + [key for key in cfg if key not in order]
    for key in keys:
        branch = tree.add(key, style="bold", guide_style="dim")
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml"))

    Console().print(tree)
    if save_to is not None:
        with open(save_to, "w") as file:
            Console(file=file, width=120).print(tree)
