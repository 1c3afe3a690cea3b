"""What a finished run leaves behind: a results file, a summary in the log, closed loggers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def metrics_to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Convert logged metric values (tensors or numbers) to plain floats."""
    converted = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        converted[key] = float(value)
    return converted


def write_results(output_dir: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` into ``output_dir`` and return its path."""
    path = Path(output_dir) / RESULTS_FILE
    path.write_text(json.dumps(dict(results), indent=2, sort_keys=True) + "\n")
    return path


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any, so the next job of a multirun starts its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
