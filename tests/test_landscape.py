"""Values of the landscape library checked against analytic results."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from descend.landscape import (
    Evaluator,
    ParameterSpace,
    barrier_height,
    evaluate_grid,
    evaluate_points,
    grid_coordinates,
    interpolation_curve,
    is_monotone,
    load_landscape,
    make_eval_batches,
    normalize_direction,
    plane_weights,
    preserved_rng_state,
    project_onto_plane,
    random_plane,
    random_plane_surface,
    save_landscape,
    trajectory_pca,
    trajectory_plane_surface,
)
from descend.landscape.line import interpolation_alphas
from descend.models.nets import CNN, MLP


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return CNN(
        input_shape=[1, 8, 8], num_classes=10, channels=[4, 8], hidden_size=16, batch_norm=True
    )


def classification_data(count: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(count, 1, 8, 8, generator=generator)
    targets = torch.randint(0, 10, (count,), generator=generator)
    return inputs, targets


def mean_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


@pytest.mark.parametrize("method", ["vmap", "loop"])
# nn.MSELoss takes the path of one unreduced call per forward pass, the plain function the
# path of one call per batch.
@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), mean_squared_error], ids=["module", "function"])
def test_quadratic_model_surface_matches_analytic(method, loss_fn):
    # A linear model under mean squared error is an exact quadratic in its parameters:
    # residual(a, b) = r0 + a r1 + b r2, so loss(a, b) = mean((r0 + a r1 + b r2)^2).
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(100, 3))
    targets = rng.normal(size=(100, 2))
    weight, bias = rng.normal(size=(2, 3)), rng.normal(size=2)
    directions = rng.normal(size=(2, 8))  # 6 weight entries, then 2 bias entries

    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    batches = [
        (
            torch.from_numpy(inputs[i : i + 40]).float(),
            torch.from_numpy(targets[i : i + 40]).float(),
        )
        for i in range(0, 100, 40)
    ]
    evaluator = Evaluator(model, loss_fn, batches, method=method, distributed=False)
    origin = ParameterSpace.of(model).vector(model)
    x, y = grid_coordinates(2.0, 7), grid_coordinates(1.0, 5)
    loss, _, _ = evaluate_grid(evaluator, origin, torch.from_numpy(directions).float(), x, y)

    def residual(flat):
        return inputs @ flat[:6].reshape(2, 3).T + flat[6:] - targets

    r0 = residual(np.concatenate([weight.ravel(), bias]))
    r1 = residual(directions[0]) + targets
    r2 = residual(directions[1]) + targets
    expected = np.empty((len(y), len(x)))
    for i, b in enumerate(y):
        for j, a in enumerate(x):
            expected[i, j] = np.mean((r0 + a * r1 + b * r2) ** 2)
    # Float32 evaluation of values up to ~100: relative tolerance 1e-5.
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_centre_point_equals_eval_mode_loss():
    model = small_cnn()
    inputs, targets = classification_data()
    # Move the BatchNorm running statistics away from their initial values, and leave the
    # model in train mode: the landscape must still use eval mode.
    model.train()
    with torch.no_grad():
        model(inputs[:64] * 3 + 1)
    batches = make_eval_batches(inputs, targets, num_samples=150, batch_size=32, seed=3)
    evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches, distributed=False)

    surface = random_plane_surface(evaluator, seed=0, num_points=(5, 3))

    subset_inputs = torch.cat([b[0] for b in batches])
    subset_targets = torch.cat([b[1] for b in batches])
    model.eval()
    with torch.no_grad():
        logits = model(subset_inputs)
        expected_loss = nn.functional.cross_entropy(logits, subset_targets).item()
        expected_accuracy = (logits.argmax(1) == subset_targets).sum().item() / len(subset_targets)
    assert surface.centre_loss() == pytest.approx(expected_loss, rel=1e-6)
    assert surface.accuracy[1, 2] == pytest.approx(expected_accuracy, abs=1e-12)


def test_make_eval_batches_fixed_subset():
    inputs, targets = classification_data()
    first = make_eval_batches(inputs, targets, num_samples=50, batch_size=16, seed=7)
    second = make_eval_batches(inputs, targets, num_samples=50, batch_size=16, seed=7)
    assert [len(b[1]) for b in first] == [16, 16, 16, 2]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)


def test_filter_normalize_matches_weight_norms():
    model = small_cnn()
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    raw = torch.randn(space.size, generator=torch.Generator().manual_seed(0))
    direction = normalize_direction(raw, origin, space, "filter", ignore_bias_and_bn=True)

    for name, shape, part in space.slices():
        piece = direction[part].view(shape[0], -1) if len(shape) >= 2 else direction[part]
        if len(shape) < 2:
            assert torch.count_nonzero(piece) == 0, f"{name} should have a zero direction"
            continue
        weight = origin[part].view(shape[0], -1)
        torch.testing.assert_close(piece.norm(dim=1), weight.norm(dim=1), rtol=1e-5, atol=0)


def test_layer_and_model_normalization_norms():
    model = small_cnn()
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    raw = torch.randn(space.size, generator=torch.Generator().manual_seed(0))

    layer = normalize_direction(raw, origin, space, "layer", ignore_bias_and_bn=False)
    for name, _, part in space.slices():
        assert layer[part].norm().item() == pytest.approx(origin[part].norm().item(), rel=1e-5), (
            name
        )

    whole = normalize_direction(raw, origin, space, "model", ignore_bias_and_bn=True)
    mask = space.is_filter_parameter()
    assert whole.norm().item() == pytest.approx(origin[mask].norm().item(), rel=1e-5)
    assert torch.count_nonzero(whole[~mask]) == 0


def test_included_bias_normalised_as_one_filter():
    model = small_cnn()
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    raw = torch.randn(space.size, generator=torch.Generator().manual_seed(0))
    direction = normalize_direction(raw, origin, space, "filter", ignore_bias_and_bn=False)
    for name, shape, part in space.slices():
        if len(shape) == 1:
            # BatchNorm shifts start at zero, so their direction is zero as well.
            expected = origin[part].norm().item()
            assert direction[part].norm().item() == pytest.approx(expected, rel=1e-5), name


@pytest.mark.parametrize("normalization", ["filter", "layer", "model", "none"])
def test_random_plane_directions_orthogonal(normalization):
    model = small_cnn()
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    first, second = random_plane(origin, space, seed=5, normalization=normalization).double()
    cosine = (first @ second) / (first.norm() * second.norm())
    assert abs(cosine.item()) < 1e-6
    assert torch.count_nonzero(first[~space.is_filter_parameter()]) == 0


def test_random_plane_seeded_privately():
    model = small_cnn()
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = random_plane(origin, space, seed=9)
    assert torch.equal(torch.rand(3), expected_draw), "random_plane consumed the global stream"
    assert torch.equal(random_plane(origin, space, seed=9), first)


def test_trajectory_pca_recovers_known_plane():
    size, count = 300, 40
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(size, 2)))
    final = np.random.default_rng(1).normal(size=size)
    angle = 2 * np.pi * np.arange(count) / count
    u, v = 3.0 * np.cos(angle), 1.0 * np.sin(angle)  # centred, uncorrelated: variances 4.5 and 0.5
    snapshots = final + np.outer(u, basis[:, 0]) + np.outer(v, basis[:, 1])

    pca = trajectory_pca(torch.from_numpy(snapshots), torch.from_numpy(final))

    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), [0.9, 0.1], atol=1e-6)
    overlap = pca.directions.numpy() @ basis  # [2, 2]: +-identity for the recovered plane
    np.testing.assert_allclose(np.abs(overlap), np.eye(2), atol=1e-9)

    projection = project_onto_plane(
        torch.from_numpy(snapshots), torch.from_numpy(final), pca.directions
    )
    np.testing.assert_allclose(np.abs(projection.coordinates[:, 0].numpy()), np.abs(u), atol=1e-9)
    np.testing.assert_allclose(projection.residual.numpy(), 0.0, atol=1e-9)


def test_projection_residual_of_off_plane_point():
    basis = torch.eye(4, dtype=torch.float64)
    origin = torch.zeros(4, dtype=torch.float64)
    point = torch.tensor([[3.0, 0.0, 4.0, 0.0]], dtype=torch.float64)
    projection = project_onto_plane(point, origin, basis[:2] * 2.0)  # non-unit directions
    np.testing.assert_allclose(projection.coordinates.numpy(), [[1.5, 0.0]])
    assert projection.residual.item() == pytest.approx(4.0 / 5.0)


def test_grid_coordinates_exact_linspace():
    coordinates = grid_coordinates(0.7, 11)
    assert np.array_equal(coordinates, np.linspace(-0.7, 0.7, 11))
    assert coordinates[5] == 0.0
    with pytest.raises(ValueError, match="odd"):
        grid_coordinates(1.0, 10)


def test_barrier_height_and_monotone():
    assert barrier_height(np.array([1.0, 3.0, 0.5])) == pytest.approx(2.0)
    assert not is_monotone(np.array([1.0, 3.0, 0.5]))
    assert barrier_height(np.array([3.0, 2.0, 1.0])) == 0.0
    assert is_monotone(np.array([3.0, 2.0, 1.0]))


def test_interpolation_alphas_hit_end_points():
    alphas, start, end = interpolation_alphas(num_points=21, margin=0.25)
    assert alphas[start] == 0.0
    assert alphas[end] == 1.0
    assert end - start == 20
    np.testing.assert_allclose(np.diff(alphas), 0.05, rtol=1e-12)


def test_interpolation_curve_end_values():
    model = small_cnn()
    inputs, targets = classification_data()
    batches = make_eval_batches(inputs, targets, num_samples=100, batch_size=50, seed=0)
    evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches, distributed=False)
    space = ParameterSpace.of(model)
    initial = space.vector(model) * 0.5
    curve = interpolation_curve(evaluator, initial, num_points=5, margin=0.25)

    final_loss = evaluate_points(
        model,
        nn.CrossEntropyLoss(),
        batches,
        plane_weights(space.vector(model), torch.zeros(1, space.size), torch.zeros(1, 1)),
        1,
    ).loss[0]
    initial_loss = evaluate_points(
        model,
        nn.CrossEntropyLoss(),
        batches,
        plane_weights(initial, torch.zeros(1, space.size), torch.zeros(1, 1)),
        1,
    ).loss[0]
    start = list(curve.alpha).index(0.0)
    assert curve.loss[start] == pytest.approx(initial_loss, rel=1e-6)
    assert curve.loss[start + 4] == pytest.approx(final_loss, rel=1e-6)
    inside = curve.loss[start : start + 5]
    assert curve.barrier_height == pytest.approx(inside.max() - max(inside[0], inside[-1]))


def test_standard_error_from_batch_losses():
    # A zero linear model predicts 0, so each batch's MSE is the mean of its squared targets.
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    targets = torch.tensor([[1.0], [1.0], [2.0], [2.0], [3.0], [3.0]])
    batches = list(zip(torch.zeros(6, 1).split(2), targets.split(2), strict=True))
    space = ParameterSpace.of(model)
    metrics = evaluate_points(
        model,
        nn.MSELoss(),
        batches,
        plane_weights(space.vector(model), torch.zeros(1, 2), torch.zeros(1, 1)),
        1,
    )
    batch_losses = np.array([1.0, 4.0, 9.0])
    assert metrics.loss[0] == pytest.approx(batch_losses.mean())
    assert metrics.standard_error[0] == pytest.approx(batch_losses.std(ddof=1) / np.sqrt(3))
    assert np.isnan(metrics.accuracy[0])


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_evaluation_restores_model_exactly(method):
    model = small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    inputs, targets = classification_data()
    batches = make_eval_batches(inputs, targets, 64, 32, seed=0)
    space = ParameterSpace.of(model)
    directions = random_plane(space.vector(model), space, seed=0)
    coefficients = torch.rand(6, 2, generator=torch.Generator().manual_seed(0))

    evaluate_points(
        model,
        nn.CrossEntropyLoss(),
        batches,
        plane_weights(space.vector(model), directions, coefficients),
        6,
        method=method,
        bn_mode="recompute" if method == "loop" else "trained",
        bn_batches=batches,
    )

    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert [m.training for m in model.modules()] == flags
    assert not model[0].weight.requires_grad
    assert model[0].bias.requires_grad
    assert model[1].momentum == 0.1


def test_vmap_and_loop_agree():
    model = small_cnn()
    inputs, targets = classification_data()
    batches = make_eval_batches(inputs, targets, 96, 32, seed=0)
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    directions = random_plane(origin, space, seed=0)
    x = y = grid_coordinates(1.0, 5)
    results = {}
    for method in ("vmap", "loop"):
        evaluator = Evaluator(
            model, nn.CrossEntropyLoss(), batches, method=method, chunk_size=7, distributed=False
        )
        results[method] = evaluate_grid(evaluator, origin, directions, x, y)
    np.testing.assert_allclose(results["vmap"][0], results["loop"][0], rtol=1e-5)
    np.testing.assert_array_equal(results["vmap"][1], results["loop"][1])


def test_batch_norm_recompute_changes_statistics_used():
    # With statistics re-estimated at the centre on the evaluation batches themselves, the
    # centre loss equals the loss of a model whose BN statistics come from those batches.
    model = small_cnn()
    inputs, targets = classification_data()
    batches = make_eval_batches(inputs, targets, 64, 64, seed=0)
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    weights = plane_weights(origin, torch.zeros(1, space.size), torch.zeros(1, 1))
    recomputed = evaluate_points(
        model, nn.CrossEntropyLoss(), batches, weights, 1, bn_mode="recompute", bn_batches=batches
    ).loss[0]

    reference = small_cnn()
    for layer in reference.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = None
            layer.reset_running_stats()
    reference.train()
    with torch.no_grad():
        reference(batches[0][0])
        reference.eval()
        expected = nn.functional.cross_entropy(reference(batches[0][0]), batches[0][1]).item()
    assert recomputed == pytest.approx(expected, rel=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = small_cnn()
    inputs, targets = classification_data()
    batches = make_eval_batches(inputs, targets, 64, 32, seed=0)
    evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches, distributed=False)
    space = ParameterSpace.of(model)
    origin = space.vector(model)
    snapshots = torch.stack([origin + 0.01 * k * torch.randn(space.size) for k in range(5, -1, -1)])
    surface = trajectory_plane_surface(evaluator, snapshots, np.arange(6) * 10, (5, 3))

    loaded = load_landscape(save_landscape(surface, tmp_path / "plane.npz"))

    assert loaded.kind == "trajectory"
    np.testing.assert_array_equal(loaded.loss, surface.loss)
    np.testing.assert_array_equal(loaded.x, surface.x)
    np.testing.assert_array_equal(loaded.trajectory.residual, surface.trajectory.residual)
    np.testing.assert_array_equal(loaded.explained_variance_ratio, surface.explained_variance_ratio)
    assert loaded.settings == surface.settings
    # The projection of the final snapshot is the centre, where plane and true loss agree.
    assert surface.trajectory.plane_loss[-1] == pytest.approx(surface.centre_loss(), rel=1e-6)
    assert surface.trajectory.true_loss[-1] == pytest.approx(surface.centre_loss(), rel=1e-6)


def test_preserved_rng_state_restores_all_streams():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    with preserved_rng_state():
        torch.rand(5), np.random.rand(5), random.random()
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0])
    np.testing.assert_array_equal(after[1], expected[1])
    assert after[2] == expected[2]


def test_mlp_parameter_space_layout():
    model = MLP(input_shape=[1, 8, 8], num_classes=10, hidden_sizes=[128])
    space = ParameterSpace.of(model)
    assert space.size == 64 * 128 + 128 + 128 * 10 + 10
    assert int(space.is_filter_parameter().sum()) == 64 * 128 + 128 * 10


def test_auto_method_restores_thread_count():
    from descend.landscape import evaluation

    evaluation._METHOD_CACHE.clear()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = small_cnn()
        inputs, targets = classification_data()
        batches = make_eval_batches(inputs, targets, 64, 32, seed=0)
        evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches, distributed=False)
        random_plane_surface(evaluator, seed=0, num_points=(3, 3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
