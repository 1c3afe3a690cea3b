"""Train a model: compose the config, build data, model, callbacks and loggers, fit, test.

Run ``descend-train`` (or ``make train``) with Hydra overrides, e.g.
``descend-train model/net=cnn trainer.max_epochs=5``. ``ckpt_path=<file>`` or ``ckpt_path=last``
resumes an interrupted run exactly (see docs/reproducibility.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from descend.callbacks.convergence import ConvergenceDetection
from descend.callbacks.interrupt import (
    CheckpointOnInterrupt,
    TrainingInterrupted,
    report_interruption,
)
from descend.callbacks.rank_state import RankStateCheckpoint
from descend.callbacks.run_config import StoreRunConfig
from descend.callbacks.wandb_run_id import StoreWandbRunId
from descend.loggers.wandb_logger import continue_wandb_run
from descend.utils.atomic_checkpoint_io import AtomicCheckpointIO
from descend.utils.checkpoints import (
    check_checkpoint_matches_model,
    load_checkpoint,
    resolve_resume_path,
)
from descend.utils.extras import apply_extras
from descend.utils.instantiate import instantiate_group, instantiate_node
from descend.utils.logging_setup import install_rank_zero_filter
from descend.utils.resolvers import register_resolvers
from descend.utils.run_outputs import finish_wandb, metrics_to_floats, write_results
from descend.utils.run_record import record_run
from descend.utils.seeding import fix_config_seed
from descend.utils.validation import (
    check_batch_size_fits,
    check_trained,
    validate_train_config,
)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
REPOSITORY_DIR = CONFIG_DIR.parent

register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the model described by ``cfg``; return the final metrics.

    ``cfg.seed`` is replaced by the seed actually used (drawn when it is null). The run directory
    ``cfg.paths.output_dir`` receives ``config.yaml`` (the resolved config, seed included),
    ``run_record.json`` (command, git state, packages, machine), checkpoints, logs and
    ``results.json``. Raises ``ValueError`` for invalid settings before any work, and
    :class:`TrainingInterrupted` when SIGTERM or Ctrl-C stopped the fit.
    """
    seed = fix_config_seed(cfg)
    validate_train_config(cfg)
    resume_path = resolve_resume_path(cfg.get("ckpt_path"), cfg.paths.log_dir)
    resume_checkpoint = load_checkpoint(resume_path) if resume_path else None
    continue_wandb_run(cfg, resume_checkpoint)

    pl.seed_everything(seed, workers=True, verbose=False)
    log.info("Seed: %d", seed)
    output_dir = Path(cfg.paths.output_dir)
    run_config, run_record = record_run(cfg, seed, resume_path, output_dir, REPOSITORY_DIR)

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule: pl.LightningDataModule = instantiate_node(cfg.data, "data")
    if hasattr(datamodule, "num_train_samples"):
        check_batch_size_fits(cfg.data.batch_size, datamodule.num_train_samples)

    log.info("Instantiating model <%s>", cfg.model._target_)
    model: pl.LightningModule = instantiate_node(cfg.model, "model")
    if resume_checkpoint is not None:
        check_checkpoint_matches_model(resume_checkpoint, model, resume_path)
        log.info(
            "Resuming from %s (global step %d)",
            resume_path,
            resume_checkpoint.get("global_step", 0),
        )
        del resume_checkpoint

    interrupt = CheckpointOnInterrupt()
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    callbacks += [
        StoreRunConfig(run_config),
        RankStateCheckpoint(seed),
        StoreWandbRunId(),
        interrupt,
    ]
    loggers = instantiate_group(cfg.get("logger"), "logger")

    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: pl.Trainer = instantiate_node(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    for logger in loggers:
        logger.log_hyperparams({**run_config, "run_record": run_record})

    try:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume_path)
        check_trained(trainer)
        metrics = metrics_to_floats(trainer.callback_metrics)

        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        if cfg.get("test"):
            if not best_path:
                log.warning("No best checkpoint was saved: testing the final weights")
            trainer.test(model=model, datamodule=datamodule, ckpt_path=best_path or None)
            metrics.update(metrics_to_floats(trainer.callback_metrics))
    except SIGTERMException as error:
        finish_wandb(exit_code=1)
        stopped = TrainingInterrupted(interrupt.signal_name or "SIGTERM", interrupt.checkpoint_path)
        report_interruption(stopped)
        raise stopped from error
    except BaseException:
        finish_wandb(exit_code=1)
        raise

    if trainer.is_global_zero:
        results = {
            "seed": seed,
            "global_step": trainer.global_step,
            "output_dir": str(output_dir.resolve()),
            "best_checkpoint": best_path,
            "resumed_from": str(resume_path) if resume_path else None,
            "convergence": convergence_result(callbacks),
            "metrics": metrics,
        }
        results_path = write_results(output_dir, results)
        report(metrics, best_path, output_dir, results_path)
    finish_wandb()
    return metrics


def convergence_result(callbacks: list[pl.Callback]) -> dict[str, Any] | None:
    """Return the convergence verdict (first detection and the summary line), if the
    convergence callback ran."""
    detector = next((c for c in callbacks if isinstance(c, ConvergenceDetection)), None)
    if detector is None:
        return None
    first = detector.detections[0] if detector.detections else None
    return {
        "summary": detector.summary,
        "step": first.step if first else None,
        "reason": first.reason.value if first else None,
    }


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
