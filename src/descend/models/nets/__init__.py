"""Networks: plain ``nn.Module`` classes with no training logic."""

from descend.models.nets.cnn import CNN
from descend.models.nets.mlp import MLP

__all__ = ["CNN", "MLP"]
