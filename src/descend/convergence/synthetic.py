"""Synthetic SGD problems with a known onset of the stationary phase, vectorised over seeds.

Used by ``bench/convergence.py`` and the tests to measure how early and how reliably a
detector recognises the stationary phase of constant-learning-rate SGD.

The onset is the first step ``n`` at which the expected inner product of successive
stochastic gradients, ``E<g_n, g_{n-1}>``, turns negative: before it, successive steps still
agree on a downhill direction on average; after it, they mostly undo each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SGDTrace:
    """Per-step records of ``seeds`` independent SGD runs, each of shape ``(seeds, steps)``.

    Step ``n`` (column ``n - 1``) is the ``n``-th optimizer step: ``loss`` is the mini-batch loss
    at the weights before it and ``inner_product`` is ``<g_n, g_{n-1}>`` (NaN for ``n = 1``).
    """

    loss: torch.Tensor
    inner_product: torch.Tensor


def least_squares_sgd(
    curvatures: torch.Tensor,
    initial_error: torch.Tensor,
    noise_std: float,
    batch_size: int,
    lr: float | torch.Tensor,
    steps: int,
    seeds: int,
    generator: torch.Generator,
) -> SGDTrace:
    """Run mini-batch SGD on streaming least squares, one run per seed.

    Features ``x ~ N(0, diag(curvatures))``, targets ``y = x^T w* + eps`` with
    ``eps ~ N(0, noise_std^2)``, loss ``(x^T w - y)^2 / 2`` averaged over ``batch_size`` fresh
    samples per step. ``lr`` is a float or a tensor of ``steps`` learning rates. The error
    ``e = w - w*`` starts at ``initial_error`` in every run.
    """
    dims = curvatures.numel()
    lrs = torch.as_tensor(lr, dtype=torch.float64).expand(steps)
    scale = curvatures.sqrt()
    error = initial_error.to(torch.float64).expand(seeds, dims).clone()
    previous_grad = torch.full((seeds, dims), float("nan"), dtype=torch.float64)
    losses = torch.empty(seeds, steps, dtype=torch.float64)
    inner_products = torch.empty(seeds, steps, dtype=torch.float64)

    for step in range(steps):
        features = (
            torch.randn(seeds, batch_size, dims, generator=generator, dtype=torch.float64) * scale
        )
        noise = torch.randn(seeds, batch_size, generator=generator, dtype=torch.float64) * noise_std
        residuals = torch.einsum("sbd,sd->sb", features, error) - noise
        grad = torch.einsum("sbd,sb->sd", features, residuals) / batch_size

        losses[:, step] = 0.5 * (residuals**2).mean(dim=1)
        inner_products[:, step] = (grad * previous_grad).sum(dim=1)
        previous_grad = grad
        error = error - lrs[step] * grad
    return SGDTrace(losses, inner_products)


def least_squares_expected_inner_product(
    curvatures: torch.Tensor,
    initial_error: torch.Tensor,
    noise_std: float,
    batch_size: int,
    lr: float | torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Return ``E<g_n, g_{n-1}>`` for ``n = 1..steps`` of :func:`least_squares_sgd` (NaN at 1).

    With ``H = diag(h)``, ``d_i = E[e_i^2]``, ``B = batch_size``, ``s = noise_std`` and
    Gaussian features (``E[x x^T A x x^T] = 2 H A H + H tr(A H)``), the gradient has mean
    ``H e`` and covariance ``(H e e^T H + H (e^T H e) + s^2 H) / B``, which gives

        E<g_n, g_{n-1}> = sum h^2 d - lr * (sum h^3 d + (sum h^3 d + sum h^2 * sum h d + s^2 sum h^2) / B)
        d_i <- d_i - 2 lr h_i d_i + lr^2 (h_i^2 d_i + (h_i^2 d_i + h_i sum h d + s^2 h_i) / B)

    with ``d`` taken before step ``n - 1``. Only the diagonal of ``E[e e^T]`` enters because
    ``H`` is diagonal.
    """
    lrs = torch.as_tensor(lr, dtype=torch.float64).expand(steps)
    h = curvatures.to(torch.float64)
    d = initial_error.to(torch.float64) ** 2
    sum_h2 = float((h**2).sum())
    expected = torch.full((steps,), float("nan"), dtype=torch.float64)

    for step in range(1, steps):
        rate = lrs[step - 1]
        sum_hd = float((h * d).sum())
        sum_h3d = float((h**3 * d).sum())
        gradient_h_moment = (
            sum_h3d + (sum_h3d + sum_h2 * sum_hd + noise_std**2 * sum_h2) / batch_size
        )
        expected[step] = float((h**2 * d).sum()) - rate * gradient_h_moment
        second_moment = h**2 * d + (h**2 * d + h * sum_hd + noise_std**2 * h) / batch_size
        d = d - 2 * rate * h * d + rate**2 * second_moment
    return expected


def logistic_regression_sgd(
    true_weights: torch.Tensor,
    initial_weights: torch.Tensor,
    batch_size: int,
    lr: float,
    steps: int,
    seeds: int,
    generator: torch.Generator,
) -> SGDTrace:
    """Run mini-batch SGD on streaming logistic regression, one run per seed.

    Features ``x ~ N(0, I)``, labels ``y ~ Bernoulli(sigmoid(x^T w_true))``, loss the binary
    cross-entropy averaged over ``batch_size`` fresh samples per step.
    """
    dims = true_weights.numel()
    weights = initial_weights.to(torch.float64).expand(seeds, dims).clone()
    truth = true_weights.to(torch.float64)
    previous_grad = torch.full((seeds, dims), float("nan"), dtype=torch.float64)
    losses = torch.empty(seeds, steps, dtype=torch.float64)
    inner_products = torch.empty(seeds, steps, dtype=torch.float64)

    for step in range(steps):
        features = torch.randn(seeds, batch_size, dims, generator=generator, dtype=torch.float64)
        probabilities = torch.sigmoid(features @ truth)
        labels = torch.bernoulli(probabilities, generator=generator)
        logits = torch.einsum("sbd,sd->sb", features, weights)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels, reduction="none"
        )
        grad = torch.einsum("sbd,sb->sd", features, torch.sigmoid(logits) - labels) / batch_size

        losses[:, step] = loss.mean(dim=1)
        inner_products[:, step] = (grad * previous_grad).sum(dim=1)
        previous_grad = grad
        weights = weights - lr * grad
    return SGDTrace(losses, inner_products)


def onset_step(expected_inner_product: torch.Tensor) -> int:
    """Return the first step ``n`` (1-based) with ``E<g_n, g_{n-1}> < 0``, or -1 if none."""
    negative = torch.nonzero(expected_inner_product < 0)
    return int(negative[0, 0]) + 1 if negative.numel() else -1
