"""Convergence and divergence detectors: plain Python over per-step floats, no Lightning.

Each detector takes one optimizer step at a time through ``update`` and returns a
:class:`~descend.convergence.reasons.Detection` the first time its rule holds, else ``None``.
After firing it stays silent until ``reset()``. ``statistic`` holds the latest value of the
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
    average), and the opposite way once it bounces around the minimum in its stationary
    distribution: near a minimum with Hessian ``H`` and gradient-noise covariance ``S``,
    ``E<g_k, g_{k-1}> ~ -lr * tr(H S) / 2 < 0``. Pflug (1990) turned this into a test and Chee &
    Toulis (2018, "Convergence diagnostics for stochastic gradient descent with constant learning
    rate") analysed it: accumulate ``S_n = sum_{k=1..n} <g_k, g_{k-1}>`` and declare the
    stationary phase when ``S_n`` turns negative.

    This implementation adds a one-sided level: with ``s_n`` the sample standard deviation of
    the increments since the last reset, it fires once ``n >= burnin`` and

        S_n < -z * s_n * sqrt(n),   z = one_sided_z(level),

    i.e. when the mean inner product is significantly negative. ``level=0.5`` (``z = 0``) is the
    plain sign rule. The statistic is the standardised sum ``S_n / (s_n sqrt(n))``.

    What "converged" means here: the distribution of the iterate has stopped drifting. The
    iterate keeps fluctuating at a distance of order ``sqrt(lr)`` from the minimiser, so further
    progress needs a smaller learning rate (the ``reduce_lr`` action).

    Assumptions: a constant learning rate (a schedule that decays it makes later inner products
    less negative and the test slow), plain SGD (momentum correlates successive steps and
    shifts the sign), and gradient noise that is independent between steps. NOTE: the
    increments themselves are correlated (each ``g_k`` appears in two of them), so ``s_n *
    sqrt(n)`` only approximates the standard deviation of ``S_n``. Full-batch gradient descent
    with ``lr > 1/L`` oscillates along stiff directions and also yields negative inner
    products; this detector is meant for mini-batch SGD.

    Args:
        burnin: inner products accumulated after a reset before a verdict is allowed.
        level: one-sided significance level of the test.
    """

    reason = ConvergenceReason.STATIONARY_PHASE

    def __init__(self, burnin: int = 100, level: float = 0.05) -> None:
        if int(burnin) != burnin or burnin < 2:
            raise ValueError(
                f"burnin={burnin} is invalid: it must be an integer of at least 2 steps"
            )
        self.burnin = int(burnin)
        self.level = float(level)
        self.z = one_sided_z(level)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.running_sum = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.statistic = math.nan
        self.fired = False

    def update(self, step: int, inner_product: float) -> Detection | None:
        if not math.isfinite(inner_product):
            return None

        # Welford's update of the mean and the sum of squared deviations of the increments.
        self.count += 1
        self.running_sum += inner_product
        delta = inner_product - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (inner_product - self._mean)
        if self.count < 2:
            return None

        spread = math.sqrt(self._m2 / (self.count - 1) * self.count)
        self.statistic = (
            self.running_sum / spread if spread > 0 else math.copysign(math.inf, self.running_sum)
        )
        if self.fired or self.count < self.burnin or not self.statistic < -self.z:
            return None

        self.fired = True
        description = (
            f"sum of {self.count} inner products of successive gradients {self.running_sum:.2e} "
            f"is negative (standardised {self.statistic:.2f} < {-self.z:.2f})"
        )
        return Detection(self.reason, step, self.statistic, description)

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "running_sum": self.running_sum,
            "mean": self._mean,
            "m2": self._m2,
            "statistic": self.statistic,
            "fired": self.fired,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.running_sum = float(state["running_sum"])
        self._mean = float(state["mean"])
        self._m2 = float(state["m2"])
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
