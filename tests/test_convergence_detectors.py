"""Known-answer tests of the convergence detectors, without Lightning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from descend.convergence import (
    ConvergenceReason,
    DivergenceDetector,
    PflugDetector,
    PlateauDetector,
    StationaryPointDetector,
)
from descend.convergence.synthetic import (
    least_squares_expected_inner_product,
    least_squares_sgd,
    onset_step,
)


def first_detection(detector, values, start: int = 1):
    for step, value in enumerate(values, start=start):
        detection = detector.update(step, value)
        if detection is not None:
            return detection
    return None


def test_stationary_point_relative_tolerance():
    norms = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    detector = StationaryPointDetector(grad_tol=0.1, relative=True)

    detection = first_detection(detector, norms)

    # 0.5 / 8 = 0.0625 is the first ratio below 0.1, at the fifth step.
    assert detection.step == 5
    assert detection.statistic == pytest.approx(0.0625)
    assert detection.reason is ConvergenceReason.STATIONARY_POINT


def test_stationary_point_ignores_nan():
    detector = StationaryPointDetector(grad_tol=1e-3)

    assert detector.update(1, math.nan) is None
    assert detector.update(2, 1e-4).step == 2


def test_plateau_slope_matches_least_squares_fit():
    rng = np.random.default_rng(0)
    losses = 2.0 - 0.001 * np.arange(50) + rng.normal(0, 0.01, 50)
    detector = PlateauDetector(window=50, rel_tol=1e-6, level=0.5)

    for step, loss in enumerate(losses, start=1):
        detector.update(step, float(loss))

    slope, intercept = np.polyfit(np.arange(50), losses, 1)
    residuals = losses - (slope * np.arange(50) + intercept)
    slope_se = math.sqrt(residuals @ residuals / 48 / np.sum((np.arange(50) - 24.5) ** 2))
    assert detector.slope == pytest.approx(slope, rel=1e-9)
    assert detector.slope_se == pytest.approx(slope_se, rel=1e-9)
    # level 0.5 (z = 0): the statistic is the fitted relative decrease over the window.
    assert detector.statistic == pytest.approx(-slope * 49 / losses.mean(), rel=1e-9)


def test_plateau_fires_on_flat_noisy_loss_only():
    rng = np.random.default_rng(1)
    decreasing = 2.0 * np.exp(-0.01 * np.arange(200)) + rng.normal(0, 0.01, 200)
    flat = 0.5 + rng.normal(0, 0.01, 200)

    # 200 steps, window 100: the decreasing loss loses about 63% per window.
    assert first_detection(PlateauDetector(window=100, rel_tol=0.01), decreasing) is None
    detection = first_detection(PlateauDetector(window=100, rel_tol=0.01), flat)
    assert detection is not None
    assert detection.step == 100  # the first full window already shows no trend


def test_divergence_factor_and_non_finite():
    detector = DivergenceDetector(divergence_factor=10.0)
    assert detector.update(1, 2.0) is None
    assert detector.update(2, 19.9) is None
    detection = detector.update(3, 20.5)
    assert detection.step == 3
    assert detection.statistic == pytest.approx(10.25)

    nan_detector = DivergenceDetector(divergence_factor=None)
    assert nan_detector.update(1, 1e30) is None
    assert nan_detector.update(2, 1.0, grad_norm=math.inf).step == 2


def test_expected_inner_product_matches_monte_carlo():
    curvatures = torch.tensor([1.0, 0.5])
    initial_error = torch.tensor([2.0, -1.0])
    settings = dict(noise_std=0.5, batch_size=2, lr=0.2, steps=30)
    expected = least_squares_expected_inner_product(curvatures, initial_error, **settings)
    generator = torch.Generator().manual_seed(0)
    trace = least_squares_sgd(
        curvatures, initial_error, **settings, seeds=20000, generator=generator
    )

    mean = trace.inner_product[:, 1:].mean(dim=0)
    standard_error = trace.inner_product[:, 1:].std(dim=0) / math.sqrt(20000)
    deviation = ((mean - expected[1:]) / standard_error).abs()
    assert deviation.max() < 4.5, f"Monte Carlo mean is {deviation.max():.1f} standard errors off"


def scalar_expected_inner_product(h, e0, noise_std, batch_size, lr, steps):
    """E<g_n, g_{n-1}> for one coordinate, from the closed form of E[e_n^2]."""
    contraction = (1 - lr * h) ** 2 + lr**2 * 2 * h**2 / batch_size
    floor = lr**2 * noise_std**2 * h / batch_size
    values = [math.nan]
    for n in range(1, steps):
        d = contraction ** (n - 1) * e0**2 + floor * (1 - contraction ** (n - 1)) / (
            1 - contraction
        )
        moment = h**3 * d + (h**3 * d + h**2 * h * d + noise_std**2 * h**2) / batch_size
        values.append(h**2 * d - lr * moment)
    return torch.tensor(values, dtype=torch.float64)


def test_expected_inner_product_scalar_closed_form():
    recursion = least_squares_expected_inner_product(
        torch.tensor([0.5]), torch.tensor([3.0]), 1.0, 4, 0.1, 300
    )
    closed_form = scalar_expected_inner_product(0.5, 3.0, 1.0, 4, 0.1, 300)
    torch.testing.assert_close(recursion[1:], closed_form[1:], rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def constant_lr_runs():
    settings = dict(noise_std=1.0, batch_size=4, lr=0.1, steps=1500)
    curvatures, initial_error = torch.tensor([0.5]), torch.tensor([10.0])
    generator = torch.Generator().manual_seed(3)
    trace = least_squares_sgd(curvatures, initial_error, **settings, seeds=20, generator=generator)
    onset = onset_step(scalar_expected_inner_product(0.5, 10.0, 1.0, 4, 0.1, 1500))
    return trace, onset


def test_pflug_fires_after_transient(constant_lr_runs):
    trace, onset = constant_lr_runs
    assert 80 < onset < 200, f"the problem's onset moved to {onset}"

    steps = []
    for run in trace.inner_product.tolist():
        detection = first_detection(PflugDetector(window=100, level=0.05), run)
        assert detection is not None, "no verdict within 1500 steps of constant-lr SGD"
        steps.append(detection.step)
    assert min(steps) >= onset, f"verdicts {sorted(steps)} include one before the onset {onset}"
    assert np.median(steps) < onset + 400


def test_pflug_silent_with_decreasing_lr():
    steps = 600
    lrs = 0.02 / (1 + torch.arange(steps, dtype=torch.float64) / 100)
    curvatures, initial_error = torch.tensor([0.5]), torch.tensor([10.0])
    expected = least_squares_expected_inner_product(curvatures, initial_error, 1.0, 4, lrs, steps)
    assert onset_step(expected) == -1, "the schedule reaches a stationary phase within the budget"

    generator = torch.Generator().manual_seed(4)
    trace = least_squares_sgd(curvatures, initial_error, 1.0, 4, lrs, steps, 20, generator)
    for run in trace.inner_product.tolist():
        detection = first_detection(PflugDetector(window=100, level=0.05), run)
        assert detection is None, f"false verdict at step {detection.step}"


def test_pflug_classical_rule_is_sign_of_sum():
    detector = PflugDetector(window=None, level=0.5, burnin=2)
    values = [3.0, 1.0, -2.0, -1.5, -1.0]

    detection = first_detection(detector, values)

    # Running sums 3, 4, 2, 0.5, -0.5: the sum turns negative at the fifth inner product.
    assert detection.step == 5


@pytest.mark.parametrize(
    "make_detector",
    [
        lambda: PflugDetector(window=30, level=0.1),
        lambda: PlateauDetector(window=30, rel_tol=0.05),
        lambda: StationaryPointDetector(grad_tol=0.05, relative=True),
        lambda: DivergenceDetector(divergence_factor=3.0),
    ],
)
def test_state_dict_resumes_exactly(make_detector):
    rng = np.random.default_rng(5)
    values = list(np.abs(1.0 - 0.01 * np.arange(150) + rng.normal(0, 0.3, 150)))
    uninterrupted = make_detector()
    expected = [uninterrupted.update(step, v) for step, v in enumerate(values, start=1)]

    first = make_detector()
    results = [first.update(step, v) for step, v in enumerate(values[:70], start=1)]
    second = make_detector()
    second.load_state_dict(first.state_dict())
    results += [second.update(step, v) for step, v in enumerate(values[70:], start=71)]

    assert results == expected
    assert second.statistic == uninterrupted.statistic or math.isnan(uninterrupted.statistic)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: PflugDetector(window=1), "window=1"),
        (lambda: PflugDetector(level=1.5), "level=1.5"),
        (lambda: PlateauDetector(rel_tol=0), "rel_tol=0"),
        (lambda: StationaryPointDetector(grad_tol=-1), "grad_tol=-1"),
        (lambda: DivergenceDetector(divergence_factor=0.5), "divergence_factor=0.5"),
    ],
)
def test_invalid_settings_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
