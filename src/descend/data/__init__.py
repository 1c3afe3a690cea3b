"""Data modules: where the samples come from and how they are batched."""

from descend.data.digits import DigitsDataModule
from descend.data.in_memory import InMemoryDataModule
from descend.data.mnist import MissingDataError, MNISTDataModule
from descend.data.synthetic import TanhRegressionDataModule
from descend.data.tensor_batches import TensorBatchLoader

__all__ = [
    "DigitsDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "MissingDataError",
    "TanhRegressionDataModule",
    "TensorBatchLoader",
]
