"""Training steps/s of the default experiment with and without gradient-norm logging.

The variants run interleaved in one process, several rounds each, on the default config (MLP on
digits, batch 64, SGD) with validation and checkpoints off so that only training steps are timed:

- ``none``: no gradient-norm callback;
- ``empty``: a callback that does nothing, the cost of Lightning calling one more callback's hooks;
- ``descend``: ``GradNormMonitor`` logging every optimizer step;
- ``descend_every_10``: ``GradNormMonitor`` logging every 10 optimizer steps;
- ``lightning``: ``lightning.pytorch.utilities.grad_norm`` called in ``on_before_optimizer_step``
  and logged with ``log_dict``, as Lightning's documentation shows.

Every variant sets ``trainer.log_every_n_steps=1``, so ``train/loss`` (and the norms of the
``lightning`` variant) reach the CSV logger on every step. Run: ``python bench/grad_norm.py``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.utilities import grad_norm

from descend.utils.instantiate import instantiate_group
from descend.utils.resolvers import register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

COMMON = (
    "logger=csv",
    "~callbacks.model_checkpoint",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    # The landscape is computed when training ends, which the timer would count.
    "~callbacks.landscape",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "+trainer.enable_checkpointing=false",
    "trainer.accelerator=cpu",
    "+trainer.limit_val_batches=0",
    "seed=0",
    "trainer.log_every_n_steps=1",
)
VARIANTS = {
    "none": ("~callbacks.grad_norm",),
    "empty": ("~callbacks.grad_norm",),
    "descend": ("callbacks.grad_norm.log_every_n_steps=1",),
    "descend_every_10": ("callbacks.grad_norm.log_every_n_steps=10",),
    "lightning": ("~callbacks.grad_norm",),
}


class LightningGradNorm(pl.Callback):
    """Lightning's own utility: one norm per parameter and the total, logged every step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class StepTimer(pl.Callback):
    """CPU time of this process from the start to the end of training, and the steps taken.

    CPU time rather than wall time, because other processes on a shared machine stretch the wall
    time of every variant differently.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.process_time() - self.start
        self.steps = trainer.global_step


def steps_per_second(variant: str, epochs: int, output_dir: Path) -> float:
    overrides = [*COMMON, *VARIANTS[variant], f"trainer.max_epochs={epochs}"]
    overrides.append(f"paths.output_dir={output_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)

    pl.seed_everything(0, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    timer = StepTimer()
    callbacks = [*instantiate_group(cfg.callbacks, "callbacks"), timer]
    if variant == "lightning":
        callbacks.append(LightningGradNorm())
    if variant == "empty":
        callbacks.append(pl.Callback())
    loggers = instantiate_group(cfg.logger, "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.fit(model, datamodule=datamodule)
    return timer.steps / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (23 steps each)")
    parser.add_argument("--rounds", type=int, default=10, help="runs of each variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    register_resolvers()
    for name in ("lightning", "descend"):
        logging.getLogger(name).setLevel(logging.ERROR)

    results: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        steps_per_second("descend", 1, Path(tmp) / "warmup")
        for round_index in range(args.rounds):
            for variant in VARIANTS:
                run_dir = Path(tmp) / f"{variant}_{round_index}"
                results[variant].append(steps_per_second(variant, args.epochs, run_dir))

    # The fastest run of each variant is the one least disturbed by other processes, which is
    # why timeit reports the minimum. The median shows how noisy the machine was.
    best_baseline = max(results["none"])
    median_baseline = statistics.median(results["none"])
    print(f"torch {torch.__version__}, lightning {pl.__version__}, {args.threads} thread(s)")
    print(f"{args.rounds} rounds of {args.epochs} epochs; steps per CPU second and ratio to 'none'")
    print(f"{'variant':16s} {'best':>8s} {'ratio':>7s} {'median':>8s} {'ratio':>7s}")
    for variant, values in results.items():
        best = max(values)
        median = statistics.median(values)
        print(
            f"{variant:16s} {best:8.1f} {best / best_baseline:7.3f} "
            f"{median:8.1f} {median / median_baseline:7.3f}"
        )


if __name__ == "__main__":
    main()
