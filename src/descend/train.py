"""Train a model: compose the config, build data, model, callbacks and loggers, fit, test.

Run ``descend-train`` (or ``make train``) with Hydra overrides, e.g.
``descend-train model/net=cnn trainer.max_epochs=5``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from descend.callbacks.run_config import StoreRunConfig
from descend.utils.extras import apply_extras
from descend.utils.instantiate import instantiate_group
from descend.utils.logging_setup import install_rank_zero_filter
from descend.utils.resolvers import register_resolvers
from descend.utils.run_outputs import finish_wandb, metrics_to_floats, write_results
from descend.utils.seeding import fix_config_seed

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the model described by ``cfg``; return the final metrics.

    ``cfg.seed`` is replaced by the seed actually used (drawn when it is null). The run directory
    ``cfg.paths.output_dir`` receives ``config.yaml`` (the resolved config, seed included),
    checkpoints, logs and ``results.json``.
    """
    seed = fix_config_seed(cfg)
    pl.seed_everything(seed, workers=True, verbose=False)
    log.info("Seed: %d", seed)
    output_dir = Path(cfg.paths.output_dir)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(run_config, output_dir / "config.yaml")

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)

    log.info("Instantiating model <%s>", cfg.model._target_)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)

    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    callbacks.append(StoreRunConfig(run_config))
    loggers = instantiate_group(cfg.get("logger"), "logger")

    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    for logger in loggers:
        logger.log_hyperparams(run_config)

    try:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = metrics_to_floats(trainer.callback_metrics)

        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        if cfg.get("test"):
            if not best_path:
                log.warning("No best checkpoint was saved: testing the final weights")
            trainer.test(model=model, datamodule=datamodule, ckpt_path=best_path or None)
            metrics.update(metrics_to_floats(trainer.callback_metrics))
    except BaseException:
        finish_wandb(exit_code=1)
        raise

    if trainer.is_global_zero:
        results = {
            "seed": seed,
            "global_step": trainer.global_step,
            "output_dir": str(output_dir.resolve()),
            "best_checkpoint": best_path,
            "metrics": metrics,
        }
        results_path = write_results(output_dir, results)
        report(metrics, best_path, output_dir, results_path)
    finish_wandb()
    return metrics


def report(metrics: dict[str, float], best_path: str, output_dir: Path, results_path: Path) -> None:
    if "test/acc" in metrics:
        log.info("Test accuracy: %.4f (test loss %.4f)", metrics["test/acc"], metrics["test/loss"])
    log.info("Outputs are in %s", output_dir.resolve())
    if best_path:
        log.info("Best checkpoint: %s", best_path)
    log.info("Metrics summary: %s", results_path)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    install_rank_zero_filter()
    fix_config_seed(cfg)
    apply_extras(cfg)
    metrics = train(cfg)
    optimized_metric = cfg.get("optimized_metric")
    return metrics.get(optimized_metric) if optimized_metric else None


if __name__ == "__main__":
    main()
