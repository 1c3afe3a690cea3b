"""Fixtures that compose the project's Hydra configs in-process, as the entry points do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from descend.utils.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
VENV_BIN = Path(sys.executable).parent

# Settings that keep in-process test runs small and quiet: no W&B, no progress bar, few epochs.
QUIET_OVERRIDES = (
    "logger=csv",
    "extras.print_config=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "+trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "seed=0",
)

register_resolvers()


def compose_config(
    config_name: str, output_dir: Path, overrides: Sequence[str] = (), quiet: bool = True
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as ``@hydra.main`` would, with the run directory
    set to ``output_dir``; the Hydra node is registered globally and removed from the result."""
    GlobalHydra.instance().clear()
    all_overrides = [*(QUIET_OVERRIDES if quiet else ()), *overrides]
    if config_name != "train":
        all_overrides = [
            o
            for o in all_overrides
            if not o.startswith(("~callbacks", "seed=", "trainer.max_epochs"))
        ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=all_overrides, return_hydra_config=True)

    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Return ``make(*overrides, name="train")`` composing a config whose run dir is in tmp_path."""
    counter = iter(range(1000))

    def make(*overrides: str, name: str = "train", quiet: bool = True) -> DictConfig:
        return compose_config(name, tmp_path / f"run{next(counter)}", overrides, quiet)

    return make


def run_command(
    args: Sequence[str], cwd: Path, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """Run a console script of this venv (e.g. ``descend-train``) and capture its output.

    W&B runs offline unless ``env`` sets WANDB_MODE; a ``None`` value in ``env`` unsets that
    variable.
    """
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}
    command = [str(VENV_BIN / args[0]), *args[1:]]
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
