"""Turn SIGTERM and Ctrl-C into a checkpoint and a clean stop."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

LAST_CHECKPOINT_NAME = "last.ckpt"


class CheckpointOnInterrupt(pl.Callback):
    """Write ``last.ckpt`` when SIGTERM or SIGINT (Ctrl-C) stops training.

    Lightning 2.6 already turns SIGTERM into a flag that stops the fit loop after the current
    optimizer step with a ``SIGTERMException`` (a ``SystemExit`` with status 0). This callback
    routes the first SIGINT the same way, so Ctrl-C also stops between two steps and never in the
    middle of an optimizer update; a second Ctrl-C raises ``KeyboardInterrupt`` at once. When
    the stop arrives, ``on_exception`` saves a checkpoint to ``<checkpoint dir>/last.ckpt`` (the
    ``ModelCheckpoint`` folder, or ``<default_root_dir>/checkpoints``) and records which signal it
    was in :attr:`signal_name` and where it saved in :attr:`checkpoint_path`; the caller decides
    the exit status. Under DDP every rank must reach ``on_exception`` because saving is
    collective: Lightning broadcasts rank 0's SIGTERM flag before each step.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.checkpoint_path: Path | None = None
        self._previous_handlers: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.signal_name = None
        self.checkpoint_path = None
        # Lightning installs its SIGTERM handler after this hook and keeps ours in the chain.
        self._install(signal.SIGTERM, self._on_sigterm)
        self._install(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _install(self, signum: int, handler: Any) -> None:
        try:
            self._previous_handlers[signum] = signal.signal(signum, handler)
        except ValueError:
            # Signal handlers can only be set from the main thread; stay passive elsewhere.
            log.debug("Not in the main thread: %s is left to its default handler", signum)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = "SIGTERM"

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        log.warning(
            "Ctrl-C: stopping after the current step and saving a checkpoint (press Ctrl-C again to abort without one)"
        )
        # Lightning's SIGTERM handler sets the flag the fit loop checks after each step.
        signal.raise_signal(signal.SIGTERM)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
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


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Return the folder of ``ModelCheckpoint``, or ``<default_root_dir>/checkpoints`` without one."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"
