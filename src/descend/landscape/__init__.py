"""Loss landscapes of any ``nn.Module``: directions, grid evaluation, trajectory projection,
plots and ``.npz`` files. Nothing here needs Lightning.

Typical use::

    batches = make_eval_batches(inputs, targets, num_samples=512, batch_size=64, seed=0)
    evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches)
    surface = random_plane_surface(evaluator, seed=0)
    save_landscape(surface, "plane.npz")
    save_figure(contour_figure(surface), "plane.png")
"""

from descend.landscape.directions import (
    Normalization,
    normalize_direction,
    orthogonalize,
    random_direction,
    random_plane,
)
from descend.landscape.evaluation import (
    BatchNormMode,
    Evaluator,
    PointMetrics,
    evaluate_points,
    make_eval_batches,
    plane_weights,
    stacked_weights,
)
from descend.landscape.line import (
    barrier_height,
    interpolation_curve,
    is_monotone,
    random_line_curve,
)
from descend.landscape.parameters import ParameterSpace
from descend.landscape.pca import TrajectoryPCA, trajectory_pca
from descend.landscape.plane import (
    evaluate_grid,
    grid_coordinates,
    random_plane_surface,
    trajectory_plane_surface,
)
from descend.landscape.plotting import contour_figure, curve_figure, save_figure, surface_figure
from descend.landscape.results import Curve, Surface, Trajectory, load_landscape, save_landscape
from descend.landscape.state import preserved_model_state, preserved_rng_state
from descend.landscape.trajectory import Projection, project_onto_plane

__all__ = [
    "BatchNormMode",
    "Curve",
    "Evaluator",
    "Normalization",
    "ParameterSpace",
    "PointMetrics",
    "Projection",
    "Surface",
    "Trajectory",
    "TrajectoryPCA",
    "barrier_height",
    "contour_figure",
    "curve_figure",
    "evaluate_grid",
    "evaluate_points",
    "grid_coordinates",
    "interpolation_curve",
    "is_monotone",
    "load_landscape",
    "make_eval_batches",
    "normalize_direction",
    "orthogonalize",
    "plane_weights",
    "preserved_model_state",
    "preserved_rng_state",
    "project_onto_plane",
    "random_direction",
    "random_line_curve",
    "random_plane",
    "random_plane_surface",
    "save_figure",
    "save_landscape",
    "stacked_weights",
    "surface_figure",
    "trajectory_pca",
    "trajectory_plane_surface",
]
