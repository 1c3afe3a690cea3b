"""Experiment loggers with the settings this template needs."""

from descend.loggers.wandb_logger import build_wandb_logger, resolve_wandb_mode

__all__ = ["build_wandb_logger", "resolve_wandb_mode"]
