"""Callbacks that watch gradient descent while it runs."""

from descend.callbacks.run_config import StoreRunConfig

__all__ = ["StoreRunConfig"]
