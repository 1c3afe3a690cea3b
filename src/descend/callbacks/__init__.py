"""Callbacks that watch gradient descent while it runs."""

from descend.callbacks.convergence import ConvergenceDetection
from descend.callbacks.grad_norm import GradNormMonitor, NonFinitePolicy
from descend.callbacks.landscape import LossLandscape
from descend.callbacks.run_config import StoreRunConfig

__all__ = [
    "ConvergenceDetection",
    "GradNormMonitor",
    "LossLandscape",
    "NonFinitePolicy",
    "StoreRunConfig",
]
