"""The plane of the optimisation path: principal components of the weight trajectory.

Li et al. (2018), "Visualizing the Loss Landscape of Neural Nets", span the plane by the first
two principal components of the matrix whose rows are ``theta_t - theta_T`` (snapshot minus
final weights). The rows are centred first, as in a standard PCA.
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
    makes the result independent of the eigensolver.
    """
    if snapshots.ndim != 2 or snapshots.shape[0] < 3:
        raise ValueError(
            f"trajectory_pca needs at least 3 snapshots as a [num_snapshots, size] tensor, got "
            f"shape {list(snapshots.shape)}: record snapshots more often (every_n_steps)"
        )
    differences = snapshots.double() - final.double().to(snapshots.device)
    centred = differences - differences.mean(dim=0, keepdim=True)

    # The eigenvectors of the small Gram matrix X X^T (num_snapshots squared) give the right
    # singular vectors v_i = X^T u_i / s_i; much faster than an SVD of X when size is large.
    eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T)
    eigenvalues = eigenvalues.flip(0).clamp_min(0.0)
    eigenvectors = eigenvectors.flip(1)
    singular_values = eigenvalues[:2].sqrt()
    if not bool((singular_values > 0).all()):
        raise ValueError(
            "the snapshots span fewer than two dimensions around their mean: the trajectory "
            "plane is undefined (did the weights change during training?)"
        )
    directions = (centred.T @ eigenvectors[:, :2] / singular_values).T.contiguous()
    for row in directions:
        if row[row.abs().argmax()] < 0:
            row.neg_()
    ratio = eigenvalues[:2] / eigenvalues.sum()
    return TrajectoryPCA(directions.to(snapshots.dtype), ratio.to(torch.float32))
