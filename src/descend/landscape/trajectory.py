"""Projection of weight snapshots onto a plane through the final weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Projection:
    """Where each snapshot lands on the plane and how far off the plane it lies.

    ``coordinates[t]`` are the plane coordinates ``(a, b)`` of the orthogonal projection
    ``P theta_t = theta_T + a d_1 + b d_2``. ``residual[t] = ||theta_t - P theta_t|| /
    ||theta_t - theta_T||`` (0: on the plane, 1: orthogonal to it; NaN for ``theta_t =
    theta_T``).
    """

    coordinates: torch.Tensor
    residual: torch.Tensor


def project_onto_plane(
    snapshots: torch.Tensor, origin: torch.Tensor, directions: torch.Tensor
) -> Projection:
    """Project ``snapshots`` ``[n, size]`` onto the plane ``origin + span(directions)``.

    The directions need not be orthogonal or of unit norm: the coordinates solve the least
    squares problem ``min ||theta_t - origin - D^T c||`` in float64.
    """
    offsets = snapshots.double() - origin.double()
    basis = directions.double().to(offsets.device)
    gram = basis @ basis.T
    coordinates = torch.linalg.solve(gram, basis @ offsets.T).T
    off_plane = offsets - coordinates @ basis
    distance = offsets.norm(dim=1)
    residual = off_plane.norm(dim=1) / distance
    residual[distance == 0] = float("nan")
    return Projection(coordinates, residual)
