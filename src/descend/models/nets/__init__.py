"""Networks: plain ``nn.Module`` classes with no training logic."""

from descend.models.nets.cnn import CNN
from descend.models.nets.mlp import MLP
from descend.models.nets.tanh_unit import TanhUnit

__all__ = ["CNN", "MLP", "TanhUnit"]
