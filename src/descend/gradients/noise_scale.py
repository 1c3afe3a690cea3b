"""The gradient noise scale B_simple of McCandlish et al. (2018), from two batch sizes.

"An Empirical Model of Large-Batch Training" (McCandlish, Kaplan, Amodei et al., 2018, arXiv
1812.06162), appendix A.1: with ``|G_small|^2`` and ``|G_big|^2`` the squared 2-norms of gradients
averaged over ``B_small`` and ``B_big`` samples, two unbiased estimates are

    |G|^2   ~  (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)   ~  (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

where G is the full-data gradient and S the per-sample gradient covariance. Each estimate is noisy,
so both are smoothed with an exponential moving average before taking B_simple = tr(S) / |G|^2: the
batch size around which the gradient noise and the signal are equal, and beyond which a larger
batch buys little.
"""

from __future__ import annotations

from typing import Any

import torch


def estimate_noise_scale(
    small_sq: torch.Tensor, big_sq: torch.Tensor, b_small: float, b_big: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the unbiased estimates ``(|G|^2, tr(S))`` from one pair of measurements.

    ``small_sq`` is the mean of ``|G_small|^2`` over the small batches (one value or an average
    over several micro-batches or ranks), ``big_sq`` is ``|G_big|^2``. Raises ValueError unless
    ``0 < b_small < b_big``.
    """
    if not 0 < b_small < b_big:
        raise ValueError(
            f"batch sizes b_small={b_small} and b_big={b_big} are invalid: the noise scale needs "
            "0 < b_small < b_big"
        )
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace_sigma = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace_sigma


class NoiseScaleEMA:
    """Exponential moving averages of the ``|G|^2`` and ``tr(S)`` estimates, kept on the device.

    ``update`` skips (without a host sync) a measurement that contains inf or NaN, such as the
    one of a step that the AMP gradient scaler skipped. The averages are bias-corrected as in Adam,
    so the first value is the first estimate rather than ``(1 - decay)`` times it.

    Args:
        decay: weight of the past in each update, in [0, 1); 0 keeps only the latest estimate.
    """

    def __init__(self, decay: float = 0.95) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(
                f"noise_scale_ema={decay} is invalid: the decay of the moving average must be in "
                "[0, 1) (0 keeps only the latest estimate)"
            )
        self.decay = decay
        # [|G|^2, tr(S)] sums and the total weight, both discounted by `decay` each update.
        self.weighted_sums: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None

    def update(self, grad_sq: torch.Tensor, trace_sigma: torch.Tensor) -> None:
        estimate = torch.stack([grad_sq, trace_sigma]).float()
        if self.weighted_sums is None or self.weight is None:
            self.weighted_sums = torch.zeros_like(estimate)
            self.weight = torch.zeros((), device=estimate.device)
        finite = torch.isfinite(estimate).all()
        new_sums = self.decay * self.weighted_sums + (1.0 - self.decay) * estimate
        new_weight = self.decay * self.weight + (1.0 - self.decay)
        self.weighted_sums = torch.where(finite, new_sums, self.weighted_sums)
        self.weight = torch.where(finite, new_weight, self.weight)

    def averages(self) -> torch.Tensor | None:
        """Return the bias-corrected ``[|G|^2, tr(S)]`` (NaN before the first finite update)."""
        if self.weighted_sums is None or self.weight is None:
            return None
        return self.weighted_sums / self.weight

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "weighted_sums": self.weighted_sums, "weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.weighted_sums = state["weighted_sums"]
        self.weight = state["weight"]


def b_simple(averages: torch.Tensor) -> torch.Tensor:
    """Return ``tr(S) / |G|^2`` from ``[|G|^2, tr(S)]``.

    Negative or huge values mean the ``|G|^2`` estimate is at or below its noise: the gradient
    signal is too small to measure at these batch sizes (noise-dominated).
    """
    return averages[1] / averages[0]
