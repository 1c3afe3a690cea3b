"""LightningModules: a network, its loss, its optimiser and what to log."""

from descend.models.classifier import ClassificationModule
from descend.models.regressor import RegressionModule
from descend.models.supervised import SupervisedModule

__all__ = ["ClassificationModule", "RegressionModule", "SupervisedModule"]
