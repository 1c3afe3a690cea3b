"""Named outcomes of convergence detection."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ConvergenceReason(Enum):
    """Reason a detector fired. ``code`` is the number logged as ``convergence/reason``."""

    STATIONARY_POINT = "stationary_point"
    PLATEAU = "plateau"
    STATIONARY_PHASE = "stationary_phase"
    DIVERGENCE = "divergence"

    @property
    def code(self) -> int:
        return list(ConvergenceReason).index(self) + 1

    @property
    def is_convergence(self) -> bool:
        return self is not ConvergenceReason.DIVERGENCE


@dataclass(frozen=True)
class Detection:
    """One firing of a detector.

    ``step`` is the optimizer step (``trainer.global_step`` after that step) whose loss and
    gradient triggered it; ``statistic`` is the detector's statistic at that step and
    ``description`` a short human-readable account, e.g. ``"gradient norm 3.1e-05 < 1e-04"``.
    """

    reason: ConvergenceReason
    step: int
    statistic: float
    description: str

    def state_dict(self) -> dict:
        return {
            "reason": self.reason.value,
            "step": self.step,
            "statistic": self.statistic,
            "description": self.description,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Detection:
        return cls(
            reason=ConvergenceReason(state["reason"]),
            step=int(state["step"]),
            statistic=float(state["statistic"]),
            description=str(state["description"]),
        )
