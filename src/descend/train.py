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
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from descend.callbacks.interrupt import CheckpointOnInterrupt
from descend.callbacks.rank_state import RankStateCheckpoint
from descend.callbacks.run_config import StoreRunConfig
from descend.callbacks.wandb_run_id import CHECKPOINT_KEY as WANDB_RUN_ID_KEY
from descend.callbacks.wandb_run_id import StoreWandbRunId
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
from descend.utils.run_record import collect_run_record, warn_if_dirty, write_run_record
from descend.utils.seeding import fix_config_seed
from descend.utils.validation import check_batch_size_fits, validate_train_config

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
REPOSITORY_DIR = CONFIG_DIR.parent

register_resolvers()


class TrainingInterrupted(SystemExit):
    """Raised when SIGTERM or Ctrl-C stopped training after saving a checkpoint.

    Its exit status is 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell
    reports a process killed by that signal, so schedulers and scripts see a failed run.
    """

    def __init__(self, signal_name: str, checkpoint_path: Path | None) -> None:
        super().__init__(143 if signal_name == "SIGTERM" else 130)
        self.signal_name = signal_name
        self.checkpoint_path = checkpoint_path


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
    run_config, run_record = record_run(cfg, seed, resume_path, output_dir)

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
            "metrics": metrics,
        }
        results_path = write_results(output_dir, results)
        report(metrics, best_path, output_dir, results_path)
    finish_wandb()
    return metrics


def record_run(
    cfg: DictConfig, seed: int, resume_path: Path | None, output_dir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``config.yaml``, ``run_record.json`` and ``git_diff.patch`` (rank 0 only); return
    the resolved config and the run record as plain dicts."""
    run_record, git_diff = collect_run_record(seed, command_overrides(), REPOSITORY_DIR)
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


def continue_wandb_run(cfg: DictConfig, checkpoint: dict[str, Any] | None) -> None:
    """Point ``logger.wandb.id`` at the checkpoint's W&B run when ``logger.wandb.resume`` is set.

    Without ``resume`` a resumed training starts a new W&B run, because reusing an id silently
    would mix two trainings' histories.
    """
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, DictConfig) or not wandb_cfg.get("resume"):
        return
    if wandb_cfg.get("id"):
        return
    run_id = checkpoint.get(WANDB_RUN_ID_KEY) if checkpoint is not None else None
    if run_id is None:
        raise ValueError(
            f"logger.wandb.resume={wandb_cfg.resume} needs a W&B run id: pass ckpt_path=<a "
            "checkpoint written with the W&B logger> or logger.wandb.id=<run id>"
        )
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
    log.info("Continuing W&B run %s", run_id)


def check_trained(trainer: pl.Trainer) -> None:
    """Raise ``ValueError`` when fit ran no training batch because the loader yielded none.

    Lightning 2.6 only warns in that case and reports a finished fit.
    """
    if trainer.num_training_batches == 0 or trainer.limit_train_batches == 0:
        raise ValueError(
            f"the training loader yielded zero batches (trainer.limit_train_batches="
            f"{trainer.limit_train_batches}), so no optimizer step ran: check data.batch_size "
            "against the training-set size divided by trainer.devices, data.drop_last and "
            "trainer.limit_train_batches"
        )


def report_interruption(stopped: TrainingInterrupted) -> None:
    if stopped.checkpoint_path is None:
        log.error("%s stopped training before a checkpoint could be saved", stopped.signal_name)
        return
    log.error(
        '%s stopped training; resume with: make train ARGS="ckpt_path=%s" (add the overrides of '
        "this run), or descend-train ckpt_path=last",
        stopped.signal_name,
        stopped.checkpoint_path.resolve(),
    )


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
