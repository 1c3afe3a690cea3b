"""Evaluate a checkpoint on the test split with the data and model stored in it.

Run ``descend-eval ckpt_path=<path>`` (or ``make eval CKPT=<path>``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from descend.utils.checkpoints import load_checkpoint, stored_run_config
from descend.utils.extras import apply_extras
from descend.utils.instantiate import instantiate_group
from descend.utils.logging_setup import install_rank_zero_filter
from descend.utils.resolvers import register_resolvers
from descend.utils.run_outputs import finish_wandb, metrics_to_floats, write_results

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint ``cfg.ckpt_path``; return its test metrics."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = stored_run_config(checkpoint, cfg.ckpt_path)
    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data_overrides") or {})
    pl.seed_everything(run_cfg.seed, verbose=False)

    log.info("Instantiating data <%s> from the checkpoint's config", data_cfg._target_)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(data_cfg)
    log.info("Instantiating model <%s> from the checkpoint's config", run_cfg.model._target_)
    model: pl.LightningModule = hydra.utils.instantiate(run_cfg.model)

    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams({"ckpt_path": str(cfg.ckpt_path), "run": run_cfg})

    trainer.test(model=model, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path))
    metrics = metrics_to_floats(trainer.callback_metrics)

    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        write_results(output_dir, {"ckpt_path": str(cfg.ckpt_path), "metrics": metrics})
        if "test/acc" in metrics:
            log.info(
                "Test accuracy: %.4f (test loss %.4f)", metrics["test/acc"], metrics["test/loss"]
            )
        log.info("Outputs are in %s", output_dir.resolve())
    finish_wandb()
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    install_rank_zero_filter()
    apply_extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
