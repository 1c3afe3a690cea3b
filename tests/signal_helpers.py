"""A callback that sends a signal to its own process, to interrupt training at a known step."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class SignalAtStep(pl.Callback):
    """Send ``signal_name`` (``SIGKILL``, ``SIGTERM``, ``SIGINT``) to this process once
    ``global_step`` reaches ``step``, at the end of that training batch; under DDP only on
    ``global_rank`` when it is set."""

    def __init__(self, step: int, signal_name: str, global_rank: int | None = None) -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]
        self.global_rank = global_rank
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.global_rank is not None and trainer.global_rank != self.global_rank:
            return
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
