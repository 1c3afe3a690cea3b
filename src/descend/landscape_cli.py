"""Recompute loss landscapes of a finished run from its checkpoint, with other settings.

Run ``descend-landscape ckpt_path=<path> <overrides>`` (or ``make landscape CKPT=<path>
ARGS="<overrides>"``), e.g. ``surfaces=[random] grid_points=[51,51] num_samples=null``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from descend.callbacks.landscape import SNAPSHOTS_FILE, load_snapshots, split_tensors
from descend.landscape.evaluation import BatchNormMode, Evaluator, make_eval_batches
from descend.landscape.parameters import ParameterSpace
from descend.landscape.report import (
    LandscapeSettings,
    compute_landscapes,
    summary_metrics,
    write_landscapes,
)
from descend.utils.checkpoints import load_checkpoint, stored_run_config
from descend.utils.extras import apply_extras
from descend.utils.logging_setup import install_rank_zero_filter
from descend.utils.resolvers import register_resolvers

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEVICES = ("auto", "cpu", "cuda")

register_resolvers()


def compute_from_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Rebuild data and model from ``cfg.ckpt_path``, compute the landscapes, write them to
    ``cfg.output_dir`` with ``landscape.json`` (the summary), and return the summary."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = stored_run_config(checkpoint, cfg.ckpt_path)
    seed = cfg.seed if cfg.seed is not None else run_cfg.seed
    device = resolve_device(cfg.device)

    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data_overrides") or {})
    log.info("Instantiating data <%s> from the checkpoint's config", data_cfg._target_)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")

    # Seeding as descend-train does before building the model reproduces its initial weights.
    pl.seed_everything(run_cfg.seed, verbose=False)
    log.info("Instantiating model <%s> from the checkpoint's config", run_cfg.model._target_)
    model: pl.LightningModule = hydra.utils.instantiate(run_cfg.model)
    space = ParameterSpace.of(model)
    initial = space.vector(model)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device)

    snapshots, steps = find_snapshots(cfg)
    if snapshots is not None:
        initial = snapshots[0]

    evaluator = build_evaluator(cfg, model, datamodule, seed, device)
    settings = LandscapeSettings(
        surfaces=tuple(cfg.surfaces),
        grid_points=tuple(cfg.grid_points),
        random_extent=tuple(cfg.random_extent),
        trajectory_margin=cfg.trajectory_margin,
        line_points=cfg.line_points,
        interpolation_margin=cfg.interpolation_margin,
        normalization=cfg.normalization,
        ignore_bias_and_bn=cfg.ignore_bias_and_bn,
        seed=seed,
    )
    results = compute_landscapes(evaluator, settings, initial, snapshots, steps)

    output_dir = Path(cfg.output_dir)
    write_landscapes(results, output_dir, figures=cfg.save_figures)
    summary: dict[str, Any] = summary_metrics(results)
    (output_dir / "landscape.json").write_text(
        json.dumps({"ckpt_path": str(cfg.ckpt_path), "metrics": summary}, indent=2) + "\n"
    )
    for key, value in summary.items():
        log.info("%s: %.4g", key, value)
    log.info("Landscapes written to %s", output_dir.resolve())
    return summary


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"device={name!r} is invalid: use one of {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda is invalid on this machine: no CUDA device is available")
    return torch.device(name)


def find_snapshots(cfg: DictConfig):
    """Return the snapshots and steps from ``cfg.snapshots_path`` or the checkpoint's run
    directory, or ``(None, None)`` when there are none."""
    if cfg.snapshots_path is not None:
        path = Path(cfg.snapshots_path)
        if not path.is_file():
            raise FileNotFoundError(f"snapshots_path={path} not found: pass a snapshots.npz file")
    else:
        path = Path(cfg.ckpt_path).resolve().parent.parent / "landscape" / SNAPSHOTS_FILE
        if not path.is_file():
            log.info("No %s next to the checkpoint: the path cannot be drawn", SNAPSHOTS_FILE)
            return None, None
    log.info("Weight snapshots: %s", path)
    return load_snapshots(path)


def build_evaluator(cfg, model, datamodule, seed: int, device: torch.device) -> Evaluator:
    inputs, targets = split_tensors(datamodule, cfg.split)
    batches = make_eval_batches(inputs, targets, cfg.num_samples, cfg.batch_size, seed, device)
    bn_batches = []
    if BatchNormMode(cfg.bn_mode) is BatchNormMode.RECOMPUTE:
        train_inputs, train_targets = split_tensors(datamodule, "train")
        bn_batches = make_eval_batches(
            train_inputs,
            train_targets,
            cfg.num_bn_batches * cfg.batch_size,
            cfg.batch_size,
            seed + 1,
            device,
        )
    return Evaluator(
        model,
        model.loss,
        batches,
        method=cfg.method,
        chunk_size=cfg.chunk_size,
        bn_mode=cfg.bn_mode,
        bn_batches=bn_batches,
        distributed=False,
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="landscape")
def main(cfg: DictConfig) -> None:
    install_rank_zero_filter()
    apply_extras(cfg)
    compute_from_checkpoint(cfg)


if __name__ == "__main__":
    main()
