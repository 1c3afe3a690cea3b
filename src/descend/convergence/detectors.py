"""Convergence and divergence detectors: plain Python over per-step floats, no Lightning.

Each detector takes one optimizer step at a time through ``update`` and returns a
:class:`~descend.convergence.reasons.Detection` the first time its rule holds, else ``None``.
After firing it stays silent until ``reset()``. ``statistic`` is the latest value of the
quantity it tests (``nan`` while it has too few steps). ``state_dict`` / ``load_state_dict``
carry everything needed to continue exactly where a checkpoint left off.

A non-finite input never makes a convergence detector fire: NaN compares false with every
threshold, and the plateau and stationary-phase detectors skip steps with a non-finite input.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist
from typing import Any

import numpy as np

from descend.convergence.reasons import ConvergenceReason, Detection


def one_sided_z(level: float) -> float:
    """Return the standard normal quantile ``z`` with ``P(Z > z) = level``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} is invalid: a significance level must lie in (0, 1)")
    return NormalDist().inv_cdf(1.0 - level)


class StationaryPointDetector:
    """Fire when the gradient norm falls below ``grad_tol``.

    Meant for full-batch gradient descent, where the gradient is exact and ``||grad f(w)|| <
    grad_tol`` bounds the distance to the minimiser of a strongly convex ``f`` by
    ``grad_tol / mu`` (``mu``: the smallest Hessian eigenvalue). With mini-batches the norm
    includes sampling noise and rarely falls this low.

    Args:
        grad_tol: tolerance on the Euclidean norm of the gradient over all parameters.
        relative: compare ``||g_k|| / ||g_1||`` (the first step's norm since the last reset)
            with ``grad_tol`` instead of ``||g_k||``.
    """

    reason = ConvergenceReason.STATIONARY_POINT

    def __init__(self, grad_tol: float = 1e-4, relative: bool = False) -> None:
        if not grad_tol > 0:
            raise ValueError(f"grad_tol={grad_tol} is invalid: it must be a positive number")
        self.grad_tol = float(grad_tol)
        self.relative = bool(relative)
        self.reset()

    def reset(self) -> None:
        self.first_norm = math.nan
        self.statistic = math.nan
        self.fired = False

    def update(self, step: int, grad_norm: float) -> Detection | None:
        if not math.isfinite(grad_norm):
            self.statistic = math.nan
            return None
        if math.isnan(self.first_norm):
            self.first_norm = grad_norm

        if self.relative:
            self.statistic = grad_norm / self.first_norm if self.first_norm > 0 else 0.0
            name = "gradient norm / first gradient norm"
        else:
            self.statistic = grad_norm
            name = "gradient norm"
        if self.fired or not self.statistic < self.grad_tol:
            return None

        self.fired = True
        return Detection(
            self.reason, step, self.statistic, f"{name} {self.statistic:.2e} < {self.grad_tol:.0e}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first_norm": self.first_norm, "statistic": self.statistic, "fired": self.fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_norm = float(state["first_norm"])
        self.statistic = float(state["statistic"])
        self.fired = bool(state["fired"])


class PlateauDetector:
    """Fire when the training loss has stopped improving over the last ``window`` steps.

    The smoothing is an ordinary least-squares line ``loss ~ a + b * step`` fitted to the last
    ``window`` losses. Its slope ``b`` has the standard error
    ``se(b) = sqrt(SSE / (window - 2) / Sxx)`` with ``Sxx = sum (step - mean step)^2``. The
    statistic is an upper confidence bound on the relative improvement over the window:

        improvement = (-b + z * se(b)) * (window - 1) / |mean loss|,   z = one_sided_z(level)

    and the detector fires when ``improvement < rel_tol``: even an optimistic reading of the
    noisy losses shows less than ``rel_tol`` relative progress across the window. A single noisy
    pair of points never decides. NOTE: ``se(b)`` assumes independent residuals; mini-batch
    losses of nearby steps are correlated, so the bound is somewhat too tight.

    Args:
        window: number of optimizer steps in the fit (at least 3).
        rel_tol: relative improvement over the window below which the loss counts as flat.
        level: one-sided level of the confidence bound (0.5 gives the plain slope estimate).
    """

    reason = ConvergenceReason.PLATEAU

    def __init__(self, window: int = 200, rel_tol: float = 0.01, level: float = 0.05) -> None:
        if int(window) != window or window < 3:
            raise ValueError(
                f"window={window} is invalid: it must be an integer of at least 3 steps"
            )
        if not rel_tol > 0:
            raise ValueError(f"rel_tol={rel_tol} is invalid: it must be a positive number")
        self.window = int(window)
        self.rel_tol = float(rel_tol)
        self.level = float(level)
        self.z = one_sided_z(level)
        steps = np.arange(self.window, dtype=np.float64)
        self._centred_steps = steps - steps.mean()
        self._sxx = float(np.sum(self._centred_steps**2))
        self.reset()

    def reset(self) -> None:
        self.losses: deque[float] = deque(maxlen=self.window)
        self.statistic = math.nan
        self.slope = math.nan
        self.slope_se = math.nan
        self.fired = False

    def update(self, step: int, loss: float) -> Detection | None:
        if not math.isfinite(loss):
            return None
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return None

        values = np.asarray(self.losses, dtype=np.float64)
        mean = float(values.mean())
        self.slope = float(np.dot(self._centred_steps, values - mean) / self._sxx)
        residuals = values - mean - self.slope * self._centred_steps
        self.slope_se = math.sqrt(
            float(np.dot(residuals, residuals)) / (self.window - 2) / self._sxx
        )
        scale = abs(mean) if mean != 0 else 1.0
        self.statistic = (-self.slope + self.z * self.slope_se) * (self.window - 1) / scale
        if self.fired or not self.statistic < self.rel_tol:
            return None

        self.fired = True
        description = (
            f"loss improved by at most {self.statistic:.1e} (relative) over the last "
            f"{self.window} steps < {self.rel_tol:.0e}; slope {self.slope:.2e} +- {self.slope_se:.1e}"
        )
        return Detection(self.reason, step, self.statistic, description)

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "statistic": self.statistic,
            "slope": self.slope,
            "slope_se": self.slope_se,
            "fired": self.fired,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(v) for v in state["losses"]), maxlen=self.window)
        self.statistic = float(state["statistic"])
        self.slope = float(state["slope"])
        self.slope_se = float(state["slope_se"])
        self.fired = bool(state["fired"])


class PflugDetector:
    """Detect the stationary phase of constant-learning-rate SGD (Pflug's diagnostic).

    For SGD ``w_{k+1} = w_k - lr * g_k`` with a constant ``lr``, successive stochastic gradients
    point the same way while the iterate still moves downhill (``<g_k, g_{k-1}> > 0`` on
    average), and against each other once it bounces around the minimum in its stationary
    distribution. For a quadratic with Hessian ``H`` and gradient-noise covariance ``S``,
    ``E<g_k, g_{k-1}> -> -lr * tr(H S) / 2 + O(lr^2) < 0``. Pflug's test, as analysed by Chee &
    Toulis ("Convergence diagnostics for stochastic gradient descent with constant step size",
    AISTATS 2018), accumulates ``S_n = sum_k <g_k, g_{k-1}>`` and declares the stationary phase
    when ``S_n`` turns negative.

    Summed from the start, ``S_n`` carries the large positive inner products of the transient
    and turns negative long after the onset. So by default the sum runs over the last
    ``window`` inner products only, and the sign rule becomes a one-sided z-test of their mean:
    with ``s`` their sample standard deviation it fires when

        sum_{k=n-window+1..n} <g_k, g_{k-1}>  <  -z * s * sqrt(window),   z = one_sided_z(level).

    ``window=None`` sums everything since the last reset (the classical rule with ``level=0.5``,
    ``z = 0``: fire when ``S_n < 0``). No verdict comes before ``burnin`` inner products since
    the last reset. The statistic is the standardised sum ``S / (s * sqrt(count))``.

    What "converged" means here: the distribution of the iterate has stopped drifting. The
    iterate keeps fluctuating at a distance of order ``sqrt(lr)`` from the minimiser, so further
    progress needs a smaller learning rate (the ``reduce_lr`` action). A verdict is a
    statistical decision: each test errs with probability about ``level`` when the mean inner
    product is zero, and less while it is still positive.

    Assumptions: a constant learning rate (a schedule that decays it makes later inner products
    less negative and the test slow), plain SGD (momentum correlates successive steps and
    shifts the sign), and gradient noise that is independent between steps, so that the inner
    products are nearly uncorrelated. NOTE: the test is repeated at every step on overlapping
    windows, so the chance of at least one false verdict over a long transient exceeds
    ``level``. Full-batch gradient descent with ``lr > 1/L`` oscillates along stiff directions
    and also yields negative inner products; this detector is meant for mini-batch SGD.

    Args:
        window: number of recent inner products in the test, or ``None`` for all since the
            last reset.
        level: one-sided significance level of the test, in (0, 1).
        burnin: inner products needed after a reset before a verdict; defaults to ``window``
            (100 when ``window`` is ``None``).
    """

    reason = ConvergenceReason.STATIONARY_PHASE

    def __init__(
        self, window: int | None = 100, level: float = 0.05, burnin: int | None = None
    ) -> None:
        if window is not None and (int(window) != window or window < 2):
            raise ValueError(
                f"window={window} is invalid: it must be an integer of at least 2 steps (or null)"
            )
        if burnin is None:
            burnin = window if window is not None else 100
        if int(burnin) != burnin or burnin < 2:
            raise ValueError(
                f"burnin={burnin} is invalid: it must be an integer of at least 2 steps"
            )
        self.window = None if window is None else int(window)
        self.burnin = int(burnin)
        self.level = float(level)
        self.z = one_sided_z(level)
        self.reset()

    def reset(self) -> None:
        self.inner_products: deque[float] = deque(maxlen=self.window)
        self.count = 0
        self.running_sum = 0.0
        self._sum_squares = 0.0
        self.statistic = math.nan
        self.fired = False

    def update(self, step: int, inner_product: float) -> Detection | None:
        if not math.isfinite(inner_product):
            return None

        self.count += 1
        if self.window is None:
            self.running_sum += inner_product
            self._sum_squares += inner_product * inner_product
            terms = self.count
        else:
            self.inner_products.append(inner_product)
            self.running_sum = math.fsum(self.inner_products)
            self._sum_squares = math.fsum(v * v for v in self.inner_products)
            terms = len(self.inner_products)
        if terms < 2:
            return None

        variance = max(self._sum_squares - self.running_sum**2 / terms, 0.0) / (terms - 1)
        spread = math.sqrt(variance * terms)
        if spread > 0:
            self.statistic = self.running_sum / spread
        else:
            self.statistic = math.copysign(math.inf, self.running_sum)
        if self.fired or self.count < self.burnin or not self.statistic < -self.z:
            return None

        self.fired = True
        description = (
            f"sum of the last {terms} inner products of successive gradients "
            f"{self.running_sum:.2e} < 0 (standardised {self.statistic:.2f} < {-self.z:.2f})"
        )
        return Detection(self.reason, step, self.statistic, description)

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner_products": list(self.inner_products),
            "count": self.count,
            "running_sum": self.running_sum,
            "sum_squares": self._sum_squares,
            "statistic": self.statistic,
            "fired": self.fired,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner_products = deque((float(v) for v in state["inner_products"]), maxlen=self.window)
        self.count = int(state["count"])
        self.running_sum = float(state["running_sum"])
        self._sum_squares = float(state["sum_squares"])
        self.statistic = float(state["statistic"])
        self.fired = bool(state["fired"])


class DivergenceDetector:
    """Fire on a non-finite loss, gradient norm or weight, or a loss above
    ``divergence_factor`` times the initial loss (the first finite loss seen).

    Args:
        divergence_factor: ratio to the initial loss above which training counts as diverged;
            ``None`` keeps only the non-finite check. NOTE: the ratio test assumes a positive
            loss (cross-entropy, squared error).
    """

    reason = ConvergenceReason.DIVERGENCE

    def __init__(self, divergence_factor: float | None = 10.0) -> None:
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(
                f"divergence_factor={divergence_factor} is invalid: it must exceed 1 (or be null "
                "to check only for non-finite values)"
            )
        self.divergence_factor = divergence_factor
        self.initial_loss = math.nan
        self.reset()

    def reset(self) -> None:
        self.statistic = math.nan
        self.fired = False

    def update(
        self,
        step: int,
        loss: float,
        grad_norm: float | None = None,
        weights_finite: bool = True,
    ) -> Detection | None:
        if math.isnan(self.initial_loss) and math.isfinite(loss):
            self.initial_loss = loss
        self.statistic = loss / self.initial_loss if self.initial_loss > 0 else math.nan
        if self.fired:
            return None

        description = None
        if not math.isfinite(loss):
            description = f"loss is {loss}"
        elif grad_norm is not None and not math.isfinite(grad_norm):
            description = f"gradient norm is {grad_norm} (loss {loss:.4g})"
        elif not weights_finite:
            description = f"weights are not finite (loss {loss:.4g})"
        elif self.divergence_factor is not None and self.statistic > self.divergence_factor:
            description = f"loss {loss:.4g} > {self.divergence_factor:g} x initial loss {self.initial_loss:.4g}"
        if description is None:
            return None

        self.fired = True
        statistic = self.statistic if math.isfinite(loss) else loss
        return Detection(self.reason, step, statistic, description)

    def state_dict(self) -> dict[str, Any]:
        return {"initial_loss": self.initial_loss, "statistic": self.statistic, "fired": self.fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_loss = float(state["initial_loss"])
        self.statistic = float(state["statistic"])
        self.fired = bool(state["fired"])
