"""Base DataModule for classification data sets small enough to hold in memory."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from descend.data.resumable_loader import ResumableDataLoader, ResumableDistributedSampler
from descend.data.tensor_batches import TensorBatchLoader
from descend.utils.seeding import derive_seed

log = logging.getLogger(__name__)

LOADERS = ("tensor", "dataloader")


class InMemoryDataModule(pl.LightningDataModule):
    """Serve train, validation and test splits held as tensors.

    Subclasses implement :meth:`load_splits`, which returns the three splits as ``(inputs,
    targets)`` pairs on the CPU. This class checks them, then batches them in one of two ways:

    * ``loader="tensor"`` (small data sets): the splits move to the training device once, and a
      :class:`~descend.data.tensor_batches.TensorBatchLoader` draws seeded random mini-batches by
      indexing them there.
    * ``loader="dataloader"`` (large data sets): a ``torch.utils.data.DataLoader`` with workers,
      pinned memory on CUDA and a seeded ``DistributedSampler`` (also in a single process, so the
      order depends only on ``seed`` and the epoch); it resumes mid-epoch from a checkpoint (see
      :class:`~descend.data.resumable_loader.ResumableDataLoader`).

    Both ways give each DDP rank a disjoint shard of every epoch's permutation, identical across
    runs with the same ``seed``.

    Args:
        batch_size: training samples per step on each process; the train-set size gives
            full-batch gradient descent.
        eval_batch_size: samples per validation or test step; ``None`` evaluates each split in
            one batch.
        num_classes: number of classes the model must predict; checked against the targets.
        input_shape: shape of one input sample; checked against the data.
        seed: seed of the per-epoch training permutations.
        loader: ``"tensor"`` or ``"dataloader"``, as above.
        num_workers: worker processes of the ``"dataloader"`` path.
        drop_last: drop the last, smaller training batch of each epoch.
    """

    def __init__(
        self,
        batch_size: int,
        num_classes: int,
        input_shape: Sequence[int],
        eval_batch_size: int | None = None,
        seed: int = 0,
        loader: str = "tensor",
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(
                f"data.batch_size={batch_size!r} is invalid: it must be a positive integer "
                "(the train-set size gives full-batch gradient descent)"
            )
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(
                f"data.eval_batch_size={eval_batch_size!r} is invalid: it must be a positive "
                "integer, or null to evaluate each split in one batch"
            )
        if loader not in LOADERS:
            raise ValueError(f"data.loader={loader!r} is invalid: use one of {LOADERS}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} is invalid: it must be >= 0")

        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.seed = seed
        self.loader = loader
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Return ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` as CPU tensors."""
        raise NotImplementedError

    @property
    def num_train_samples(self) -> int:
        self._ensure_loaded()
        return self.splits["train"][0].shape[0]

    def _ensure_loaded(self) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        for name in ("train", "val", "test"):
            self._check_split(name, *splits[name])
        self.splits = splits

        train_size = splits["train"][0].shape[0]
        if self.batch_size > train_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is invalid: the training set has only "
                f"{train_size} samples (use data.batch_size={train_size} for full-batch "
                "gradient descent)"
            )

    def _check_split(self, name: str, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if inputs.shape[0] == 0:
            raise ValueError(f"the {name} split of {type(self).__name__} is empty")
        if tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"data.input_shape={list(self.input_shape)} does not match the {name} inputs, "
                f"whose samples have shape {list(inputs.shape[1:])}"
            )
        largest = int(targets.max())
        if largest >= self.num_classes or int(targets.min()) < 0:
            raise ValueError(
                f"data.num_classes={self.num_classes} does not match the {name} targets, which "
                f"range over [{int(targets.min())}, {largest}]"
            )

    def ensure_available(self) -> None:
        """Download or check the files the data set needs; raise a clear error if they are missing."""

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before `setup`, so a missing file fails here,
        # before any training step.
        self.ensure_available()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_loaded()

    def _distribution(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _device(self) -> torch.device:
        if self.trainer is None:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def _make_loader(self, split: str, train: bool):
        self._ensure_loaded()
        inputs, targets = self.splits[split]
        rank, world_size = self._distribution()
        if train:
            batch_size = self.batch_size
        else:
            batch_size = self.eval_batch_size or inputs.shape[0]

        if self.loader == "tensor":
            device = self._device()
            return TensorBatchLoader(
                (inputs.to(device), targets.to(device)),
                batch_size=batch_size,
                shuffle=train,
                seed=self.seed,
                drop_last=self.drop_last and train,
                rank=rank,
                world_size=world_size,
            )

        dataset = TensorDataset(inputs, targets)
        sampler = ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=self.seed
        )
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(derive_seed(self.seed, rank)),
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._device().type == "cuda",
        )

    def train_dataloader(self):
        return self._make_loader("train", train=True)

    def val_dataloader(self):
        return self._make_loader("val", train=False)

    def test_dataloader(self):
        return self._make_loader("test", train=False)
