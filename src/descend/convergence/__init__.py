"""Convergence detection maths, usable without Lightning."""

from descend.convergence.detectors import (
    DivergenceDetector,
    PflugDetector,
    PlateauDetector,
    StationaryPointDetector,
)
from descend.convergence.reasons import ConvergenceReason, Detection

__all__ = [
    "ConvergenceReason",
    "Detection",
    "DivergenceDetector",
    "PflugDetector",
    "PlateauDetector",
    "StationaryPointDetector",
]
