"""Read what a finished run left in its directory: config, results and logged metrics."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

METRICS_FILE = Path("csv") / "version_0" / "metrics.csv"


@dataclass
class Run:
    """One finished training run.

    ``metrics`` maps each logged key to its ``(step, value)`` pairs in logging order, read from
    the CSV logger's ``metrics.csv`` (empty when the run had no CSV logger). ``results`` is the
    content of ``results.json`` (empty when the run did not finish).
    """

    path: Path
    config: DictConfig
    results: dict[str, Any]
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def batch_size(self) -> int:
        """Samples per optimizer step on one process: ``data.batch_size`` times
        ``trainer.accumulate_grad_batches``."""
        accumulation = int(self.config.get("trainer", {}).get("accumulate_grad_batches") or 1)
        return int(self.config.data.batch_size) * accumulation

    @property
    def learning_rate(self) -> float:
        return float(self.config.model.optimizer.lr)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Return the steps and values logged under ``key`` (empty lists when never logged)."""
        pairs = self.metrics.get(key, [])
        return [step for step, _ in pairs], [value for _, value in pairs]

    def last(self, key: str) -> float:
        """Return the last value logged under ``key``, else its value in ``results.json``, else NaN."""
        pairs = self.metrics.get(key)
        if pairs:
            return pairs[-1][1]
        return float(self.results.get("metrics", {}).get(key, math.nan))


@dataclass
class Summary:
    """Report contents for one multirun: table rows (one dict per row, the same keys in every
    row where known) and figures by name."""

    rows: list[dict[str, Any]]
    figures: dict[str, Any]


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Read a CSV logger file into ``{key: [(step, value), ...]}``, skipping empty cells."""
    metrics: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row["step"])
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                metrics.setdefault(key, []).append((step, float(value)))
    return metrics


def load_run(path: str | Path) -> Run:
    """Read the run directory ``path`` (it must contain ``config.yaml``)."""
    path = Path(path)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: {config_path} is missing")
    config = OmegaConf.load(config_path)

    results_path = path / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    metrics_path = path / METRICS_FILE
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else {}
    return Run(path=path, config=config, results=results, metrics=metrics)


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Load every run below ``sweep_dir`` (a multirun directory, or one run), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP={sweep_dir} is not a directory")
    paths = [
        config.parent
        for config in sweep_dir.glob("**/config.yaml")
        if ".hydra" not in config.parts and "wandb" not in config.parts
    ]
    if not paths:
        raise FileNotFoundError(
            f"no run found below {sweep_dir}: a run directory contains config.yaml "
            "(start a multirun with `descend-train -m experiment=<name>`)"
        )
    return [load_run(path) for path in sorted(paths, key=_job_order)]


def _job_order(path: Path) -> tuple[int, str]:
    # Hydra names multirun jobs 0, 1, ..., 10: sort them as numbers.
    return (int(path.name), "") if path.name.isdigit() else (-1, str(path))


def experiment_name(run: Run) -> str | None:
    """Return the experiment a run was started with (``experiment=<name>``), or ``None``.

    The name comes from Hydra's record of the chosen config options (``.hydra/hydra.yaml``),
    and otherwise from the run's tags.
    """
    hydra_file = run.path / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = OmegaConf.load(hydra_file).hydra.runtime.choices
        name = choices.get("experiment")
        if name:
            return str(name)
    for tag in run.config.get("tags") or []:
        if str(tag) in KNOWN_EXPERIMENTS:
            return str(tag)
    return None


KNOWN_EXPERIMENTS = ("two_params", "gd_vs_sgd", "init_seeds", "lr_sweep")
