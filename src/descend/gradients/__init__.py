"""Gradient statistics without Lightning: fused grouped norms and the gradient noise scale."""

from descend.gradients.noise_scale import NoiseScaleEMA, estimate_noise_scale
from descend.gradients.norms import (
    GroupLayout,
    combine_host_norms,
    combine_norms,
    group_parameter_names,
    tensor_norms,
)

__all__ = [
    "GroupLayout",
    "NoiseScaleEMA",
    "combine_host_norms",
    "combine_norms",
    "estimate_noise_scale",
    "group_parameter_names",
    "tensor_norms",
]
