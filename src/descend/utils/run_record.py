"""Record what produced a run: command, overrides, code version, packages, machine and seed."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RECORD_FILE = "run_record.json"
DIFF_FILE = "git_diff.patch"
PACKAGES = (
    "descend",
    "torch",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "numpy",
    "wandb",
)

_dirty_warning_shown = False


def git_state(repository: Path) -> dict[str, Any]:
    """Return the commit, whether tracked or untracked files differ from it, and the diff.

    ``commit`` is ``None`` outside a git checkout or without a ``git`` executable.
    """

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repository), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = run("rev-parse", "HEAD").strip()
        status = run("status", "--porcelain")
        diff = run("diff", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "diff": ""}
    return {"commit": commit, "dirty": bool(status.strip()), "diff": diff, "status": status}


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package in :data:`PACKAGES` (``None``: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_names() -> list[str]:
    """Names of the CUDA devices, or of the CPU when there is none."""
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return [platform.processor() or platform.machine()]


def collect_run_record(
    seed: int, overrides: list[str], repository: Path
) -> tuple[dict[str, Any], str]:
    """Return the run record (JSON-serialisable) and the git diff of the working tree."""
    git = git_state(repository)
    record = {
        "seed": seed,
        "command": sys.argv,
        "overrides": overrides,
        "git": {"commit": git["commit"], "dirty": git["dirty"], "status": git.get("status", "")},
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "devices": device_names(),
        "cuda": torch.version.cuda,
    }
    return record, git["diff"]


def write_run_record(output_dir: Path, record: dict[str, Any], diff: str) -> None:
    """Write ``run_record.json`` and, when the tree differs from the commit, ``git_diff.patch``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if diff:
        (output_dir / DIFF_FILE).write_text(diff)


def warn_if_dirty(record: dict[str, Any], output_dir: Path) -> None:
    """Log one warning per process when the git tree has uncommitted changes."""
    global _dirty_warning_shown
    if _dirty_warning_shown or not record["git"]["dirty"]:
        return
    _dirty_warning_shown = True
    diff_path = output_dir / DIFF_FILE
    # Only changes to tracked files produce a diff; untracked files appear in git status alone.
    diff_note = f" and the diff of tracked files in {diff_path}" if diff_path.is_file() else ""
    log.warning(
        "The git tree has uncommitted changes: this run is not reproducible from commit %s alone. "
        "git status is saved in %s%s",
        record["git"]["commit"],
        output_dir / RECORD_FILE,
        diff_note,
    )


def record_run(
    cfg: DictConfig,
    seed: int,
    resume_path: Path | None,
    output_dir: Path,
    repository_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``config.yaml``, ``run_record.json`` and ``git_diff.patch`` (rank 0 only); return
    the resolved config and the run record as plain dicts."""
    run_record, git_diff = collect_run_record(seed, command_overrides(), repository_dir)
    run_record["resumed_from"] = str(resume_path.resolve()) if resume_path else None
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(run_config, output_dir / "config.yaml")
        write_run_record(output_dir, run_record, git_diff)
        warn_if_dirty(run_record, output_dir)
    return run_config, run_record


def command_overrides() -> list[str]:
    """Return the Hydra overrides of the command line (empty outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)
