"""scikit-learn's handwritten digits: 1797 grey 8x8 images of 10 classes, shipped with the package."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from descend.data.in_memory import InMemoryDataModule


def split_sizes(
    num_samples: int, val_fraction: float, test_fraction: float
) -> tuple[int, int, int]:
    """Return (train, val, test) sizes; val and test are rounded to the nearest sample."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"data.{name}={fraction} is invalid: it must lie in (0, 1)")
    num_val = round(num_samples * val_fraction)
    num_test = round(num_samples * test_fraction)
    num_train = num_samples - num_val - num_test
    if num_train <= 0:
        raise ValueError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leave no "
            "training samples: their sum must be below 1"
        )
    return num_train, num_val, num_test


class DigitsDataModule(InMemoryDataModule):
    """The digits data set, split train/val/test by a fixed seed and standardised.

    Pixel values (0 to 16) are divided by 16, then shifted and scaled by the mean and standard
    deviation of all training pixels, so no statistic leaks from the validation or test split.
    The split depends on ``split_seed`` only, never on the run's ``seed``: runs with different
    seeds are compared on the same test set. With the default fractions the split has 1437
    training, 180 validation and 180 test images.

    Args:
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for testing.
        split_seed: seed of the permutation that assigns samples to splits.
        **kwargs: passed to :class:`~descend.data.in_memory.InMemoryDataModule`.
    """

    def __init__(
        self,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        split_sizes(1797, val_fraction, test_fraction)

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(digits.target, dtype=torch.long)

        num_train, num_val, _ = split_sizes(len(labels), self.val_fraction, self.test_fraction)
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(labels), generator=generator)
        train_idx = order[:num_train]
        val_idx = order[num_train : num_train + num_val]
        test_idx = order[num_train + num_val :]

        mean = images[train_idx].mean()
        std = images[train_idx].std()
        images = (images - mean) / std
        return {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (images[test_idx], labels[test_idx]),
        }
