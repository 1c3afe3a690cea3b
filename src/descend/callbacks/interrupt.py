"""Turn SIGTERM and Ctrl-C into a checkpoint and a clean stop between two optimizer steps."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

LAST_CHECKPOINT_NAME = "last.ckpt"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CheckpointOnInterrupt(pl.Callback):
    """Stop training after the current optimizer step on SIGTERM or Ctrl-C, and save ``last.ckpt``.

    From ``on_train_start`` to the end of training, the handlers of SIGTERM and SIGINT only
    record the signal; a second Ctrl-C raises ``KeyboardInterrupt`` at once. At the end of each
    training batch the ranks agree on the stop (an all-reduce of one integer under DDP) and all
    set Lightning's SIGTERM flag, so every rank raises Lightning's ``SIGTERMException`` after the
    step's metrics are logged (and after validation, when one is due at that step).
    ``on_exception`` then saves ``<checkpoint dir>/last.ckpt`` (the ``ModelCheckpoint`` folder,
    or ``<default_root_dir>/checkpoints``) and records its path in :attr:`checkpoint_path`; the
    caller decides the exit status.

    Lightning 2.6's own SIGTERM handler is replaced during training because it calls
    ``torch.distributed.broadcast`` inside the signal handler. When several DDP processes receive
    SIGTERM (a scheduler that signals every task, or Lightning forwarding rank 0's signal to the
    processes it started), those broadcasts do not pair up and the ranks hang (seen with
    ``trainer=ddp_sim``). A signal that arrives before ``on_train_start`` still goes through
    Lightning's handler.

    NOTE: SLURM's auto-requeue (Lightning's ``SLURMEnvironment(auto_requeue=True)``) listens to
    SIGUSR1 and is unaffected, but its SIGTERM bypass is replaced during training as well.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.checkpoint_path: Path | None = None
        self._previous_handlers: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signal_name = None
        self.checkpoint_path = None
        for signum in HANDLED_SIGNALS:
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._record_signal)
            except ValueError:
                # Handlers can only be set in the main thread; leave the signal to Lightning.
                log.debug("Not in the main thread: %s keeps its handler", signum)

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        if self.signal_name is not None:
            return
        self.signal_name = name
        hint = " (press Ctrl-C again to abort without one)" if name == "SIGINT" else ""
        log.warning(
            "%s received: stopping after the current step and saving a checkpoint%s", name, hint
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        signum = int(signal.Signals[self.signal_name]) if self.signal_name else 0
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            self.signal_name = signal.Signals(signum).name
            # NOTE: private attribute of Lightning 2.6: the flag that its fit loop checks after
            # logging each step, the same one its own SIGTERM handler sets.
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException):
            return
        if self.signal_name is None:
            self.signal_name = "SIGTERM"
        path = checkpoint_dir(trainer) / LAST_CHECKPOINT_NAME
        trainer.save_checkpoint(path)
        self.checkpoint_path = path
        log.warning(
            "%s stopped training at global step %d; saved %s",
            self.signal_name,
            trainer.global_step,
            path,
        )

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Return the folder of ``ModelCheckpoint``, or ``<default_root_dir>/checkpoints`` without one."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class TrainingInterrupted(SystemExit):
    """Raised when SIGTERM or Ctrl-C stopped training after saving a checkpoint.

    Its exit status is 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell
    reports a process killed by that signal, so schedulers and scripts see a failed run.
    """

    def __init__(self, signal_name: str, checkpoint_path: Path | None) -> None:
        super().__init__(143 if signal_name == "SIGTERM" else 130)
        self.signal_name = signal_name
        self.checkpoint_path = checkpoint_path


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
