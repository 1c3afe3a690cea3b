"""Rank-aware logging: only rank 0 speaks below WARNING under DDP."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


class RankZeroFilter(logging.Filter):
    """Pass every record on rank 0, and only warnings and errors (tagged with the rank) elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = rank_zero_only.rank
        if rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = f"[rank {rank}] {record.msg}"
        return True


def install_rank_zero_filter() -> None:
    """Attach :class:`RankZeroFilter` to every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RankZeroFilter) for existing in handler.filters):
            handler.addFilter(RankZeroFilter())
