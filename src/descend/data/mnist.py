"""MNIST and Fashion-MNIST from torchvision's IDX files, held in memory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision import datasets

from descend.data.in_memory import InMemoryDataModule

log = logging.getLogger(__name__)

DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MissingDataError(FileNotFoundError):
    """A data set's files are not on disk and could not be downloaded."""


class MNISTDataModule(InMemoryDataModule):
    """MNIST or Fashion-MNIST (28x28 grey images, 10 classes), read by torchvision.

    The files are expected in ``<data_dir>/MNIST/raw/`` or ``<data_dir>/FashionMNIST/raw/``
    (uncompressed IDX, as torchvision stores them). When they are missing and ``download`` is
    true, torchvision downloads them; when that fails, or ``download`` is false, a
    :class:`MissingDataError` names the directory and the files expected before any training.

    ``val_size`` images of the official training set, chosen by ``split_seed``, form the
    validation split; the official test set is the test split. Inputs are scaled to [0, 1], then
    standardised with the mean and standard deviation of the training pixels.

    Args:
        data_dir: directory that contains (or receives) the data set's folder.
        dataset: ``"mnist"`` or ``"fashion_mnist"``.
        download: try to download missing files.
        val_size: number of training images held out for validation.
        split_seed: seed of the train/validation split.
        **kwargs: passed to :class:`~descend.data.in_memory.InMemoryDataModule`.
    """

    def __init__(
        self,
        data_dir: str,
        dataset: str = "mnist",
        download: bool = True,
        val_size: int = 5000,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset={dataset!r} is invalid: use one of {sorted(DATASETS)}")
        if val_size <= 0:
            raise ValueError(f"data.val_size={val_size} is invalid: it must be a positive integer")
        self.data_dir = Path(data_dir)
        self.dataset = dataset
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / DATASETS[self.dataset].__name__ / "raw"

    def missing_files(self) -> list[str]:
        return [name for name in IDX_FILES if not (self.raw_dir / name).is_file()]

    def ensure_available(self) -> None:
        missing = self.missing_files()
        if not missing:
            return

        reason = "download is off (data.download=false)"
        if self.download:
            log.info("Downloading %s to %s", self.dataset, self.data_dir)
            try:
                for train in (True, False):
                    DATASETS[self.dataset](str(self.data_dir), train=train, download=True)
                return
            except (OSError, RuntimeError) as error:
                reason = f"the download failed: {error}"

        raise MissingDataError(
            f"{self.dataset} files are missing from {self.raw_dir.resolve()}: "
            f"{', '.join(missing)}. Cannot continue because {reason}. Copy the uncompressed IDX "
            f"files ({', '.join(IDX_FILES)}) into that directory, for example from a machine with "
            f"internet access where torchvision.datasets.{DATASETS[self.dataset].__name__}"
            f"(root, download=True) fetched them, or set data.data_dir to where they are."
        )

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        self.ensure_available()
        dataset_class = DATASETS[self.dataset]
        train_set = dataset_class(str(self.data_dir), train=True, download=False)
        test_set = dataset_class(str(self.data_dir), train=False, download=False)

        images = train_set.data.float().unsqueeze(1) / 255.0
        labels = train_set.targets.long()
        if self.val_size >= len(labels):
            raise ValueError(
                f"data.val_size={self.val_size} is invalid: the training file contains only "
                f"{len(labels)} images"
            )
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(labels), generator=generator)
        val_idx = order[: self.val_size]
        train_idx = order[self.val_size :]

        mean = images[train_idx].mean()
        std = images[train_idx].std()
        test_images = (test_set.data.float().unsqueeze(1) / 255.0 - mean) / std
        images = (images - mean) / std
        return {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_set.targets.long()),
        }
