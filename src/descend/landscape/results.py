"""Landscape results and their ``.npz`` files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


@dataclass
class Surface:
    """Metrics on a rectangular grid ``origin + x[j] d_1 + y[i] d_2``.

    ``loss``, ``accuracy`` and ``standard_error`` have shape ``[len(y), len(x)]`` (row ``i`` is
    ``y[i]``), as ``matplotlib.pyplot.contour(x, y, loss)`` expects. ``x`` and ``y`` are exactly
    ``numpy.linspace`` values, with 0 (the trained point) in the middle.
    """

    kind: str
    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    standard_error: np.ndarray
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    explained_variance_ratio: np.ndarray | None = None
    trajectory: Trajectory | None = None

    def centre_loss(self) -> float:
        return float(self.loss[len(self.y) // 2, len(self.x) // 2])


@dataclass
class Trajectory:
    """Snapshots seen on a plane: where they project, and how faithful the projection is.

    ``coordinates`` ``[n, 2]``; ``true_loss``: the loss at the snapshot itself;
    ``plane_loss``: the loss at its projection on the plane; ``residual``: the off-plane share
    ``||theta_t - P theta_t|| / ||theta_t - theta_T||``.
    """

    steps: np.ndarray
    coordinates: np.ndarray
    true_loss: np.ndarray
    plane_loss: np.ndarray
    residual: np.ndarray


@dataclass
class Curve:
    """Metrics along a line ``origin + alpha * direction``.

    For the interpolation from the initial (``alpha = 0``) to the final weights (``alpha = 1``),
    ``barrier_height`` is ``max(loss on [0, 1]) - max(loss(0), loss(1))`` and ``monotone`` is
    True when the loss never rises from one point to the next on ``[0, 1]``.
    """

    kind: str
    alpha: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    standard_error: np.ndarray
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    barrier_height: float | None = None
    monotone: bool | None = None


def save_landscape(result: Surface | Curve, path: str | Path) -> Path:
    """Write ``result`` to ``path`` (``.npz``); settings are stored as JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "type": type(result).__name__,
    }
    for item in fields(result):
        value = getattr(result, item.name)
        if value is None:
            continue
        if item.name == "settings":
            arrays["settings_json"] = json.dumps(value, sort_keys=True, default=str)
        elif item.name == "trajectory":
            for key, array in asdict(value).items():
                arrays[f"trajectory_{key}"] = array
        else:
            arrays[item.name] = value
    np.savez_compressed(path, **arrays)
    return path


def load_landscape(path: str | Path) -> Surface | Curve:
    """Read a file written by :func:`save_landscape`."""
    with np.load(Path(path), allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    kind = str(stored.pop("type"))
    stored.pop("format_version", None)
    settings = json.loads(str(stored.pop("settings_json", "{}")))
    trajectory_keys = [key for key in stored if key.startswith("trajectory_")]
    trajectory = None
    if trajectory_keys:
        parts = {key.removeprefix("trajectory_"): stored.pop(key) for key in trajectory_keys}
        trajectory = Trajectory(**parts)

    values: dict[str, Any] = {}
    for key, array in stored.items():
        if array.ndim == 0:
            values[key] = array.item()
        else:
            values[key] = array
    if kind == "Surface":
        return Surface(settings=settings, trajectory=trajectory, **values)
    if kind == "Curve":
        return Curve(settings=settings, **values)
    raise ValueError(f"{path} contains a landscape of unknown type {kind!r}")
