"""LightningModules: a network, its loss, its optimiser and what to log."""

from descend.models.classifier import ClassificationModule

__all__ = ["ClassificationModule"]
