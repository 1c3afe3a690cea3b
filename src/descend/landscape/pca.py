"""The plane of the optimisation path: principal components of the weight trajectory.

Li et al. (2018, section 7) span the plane by the first two principal components of the
matrix whose rows are ``theta_t - theta_T`` (snapshot minus final weights). As in their code
(scikit-learn's PCA), the rows are centred before the singular value decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrajectoryPCA:
    """Directions ``[2, size]`` (orthonormal rows) and the share of the trajectory's variance
    that each explains, ``explained_variance_ratio[i] = s_i**2 / sum(s**2)``."""

    directions: torch.Tensor
    explained_variance_ratio: torch.Tensor


def trajectory_pca(snapshots: torch.Tensor, final: torch.Tensor) -> TrajectoryPCA:
    """Return the first two principal directions of ``snapshots - final``.

    Args:
        snapshots: ``[num_snapshots, size]`` flat weight vectors (at least three).
        final: ``[size]`` the final weights, the centre of the plane.

    Each direction's sign is fixed so that its entry of largest magnitude is positive, which
    makes the result independent of the SVD implementation.
    """
    if snapshots.ndim != 2 or snapshots.shape[0] < 3:
        raise ValueError(
            f"trajectory_pca needs at least 3 snapshots as a [num_snapshots, size] tensor, got "
            f"shape {list(snapshots.shape)}: record snapshots more often (every_n_steps)"
        )
    differences = snapshots.double() - final.double().to(snapshots.device)
    centred = differences - differences.mean(dim=0, keepdim=True)
    _, singular_values, right = torch.linalg.svd(centred, full_matrices=False)

    directions = right[:2].clone()
    for row in directions:
        if row[row.abs().argmax()] < 0:
            row.neg_()
    variances = singular_values**2
    ratio = variances[:2] / variances.sum().clamp_min(torch.finfo(torch.float64).tiny)
    return TrajectoryPCA(directions.to(snapshots.dtype), ratio.to(torch.float32))
