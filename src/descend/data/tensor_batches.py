"""Random mini-batches drawn from tensors that already sit on the training device."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch


class TensorBatchLoader:
    """Iterate over in-memory tensors in mini-batches, one seeded permutation per epoch.

    The permutation of epoch ``e`` comes from a CPU ``torch.Generator`` seeded with ``seed + e``,
    so the batch order depends only on the seed and the epoch, never on the device or on other
    random draws in the run. Indexing happens on the tensors' own device: no per-sample
    ``__getitem__``, no collate and no host-to-device copy per step.

    Under DDP every rank draws the same permutation and keeps the positions ``rank, rank +
    world_size, ...``, as ``torch.utils.data.DistributedSampler`` does. The permutation is first
    padded by wrapping around so that every rank gets the same number of samples (and so the same
    number of batches, which DDP needs to avoid a hang).

    Args:
        tensors: tensors with the same first dimension (for example inputs and targets).
        batch_size: samples per batch on each rank. ``batch_size`` equal to the shard size gives
            one batch per epoch: full-batch gradient descent.
        shuffle: draw a new permutation every epoch; ``False`` keeps the stored order.
        seed: base seed of the permutations.
        drop_last: drop the last batch of an epoch when it is smaller than ``batch_size``.
        rank: index of this process among ``world_size`` processes.
        world_size: number of processes that share the data.

    The loader is stateful: ``state_dict`` records the epoch and how many batches of it were
    handed out, and ``load_state_dict`` makes the next iteration of that same epoch resume at the
    following batch with the same permutation, so an interrupted epoch continues exactly where it
    stopped. Lightning 2.6 stores this state in its checkpoints (``FitLoop`` saves the state of
    every train loader that has ``state_dict``). Its data fetcher prefetches no batch when the
    loader has a length, so the count equals the batches whose step has started. If
    ``set_epoch`` moves to another epoch before iterating, the resume position is dropped: a
    checkpoint taken after the last batch of epoch ``e`` starts epoch ``e + 1`` from its first
    batch.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(tensors) == 0:
            raise ValueError("TensorBatchLoader needs at least one tensor")
        num_samples = tensors[0].shape[0]
        for tensor in tensors[1:]:
            if tensor.shape[0] != num_samples:
                raise ValueError(
                    f"all tensors must have the same first dimension, got {tensors[0].shape[0]} "
                    f"and {tensor.shape[0]}"
                )
        if num_samples == 0:
            raise ValueError("TensorBatchLoader got tensors with no samples")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} is invalid: it must be a positive integer")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is invalid for world_size={world_size}")

        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._batches_done = 0
        self._resume_epoch: int | None = None
        self._resume_batches = 0

    @property
    def num_samples(self) -> int:
        """Number of samples in the whole data set, before sharding."""
        return self.tensors[0].shape[0]

    @property
    def shard_size(self) -> int:
        """Number of samples this rank iterates over in one epoch (after padding)."""
        return math.ceil(self.num_samples / self.world_size)

    # Lightning's fit loop calls ``set_epoch`` on ``dataloader.sampler`` at the start of every
    # epoch, so the loader is its own sampler. It has no separate batch sampler.
    batch_sampler = None

    @property
    def sampler(self) -> TensorBatchLoader:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """Indices (on the CPU) of the samples this rank visits in ``epoch``, in visiting order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)

        total = self.shard_size * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        indices = self.shard_indices(self.epoch).to(self.tensors[0].device)
        first_batch = self._resume_batches if self._resume_epoch == self.epoch else 0
        self._resume_epoch = None
        self._resume_batches = 0
        self._batches_done = first_batch

        for batch_index in range(first_batch, len(self)):
            start = batch_index * self.batch_size
            batch_indices = indices[start : start + self.batch_size]
            self._batches_done = batch_index + 1
            yield tuple(tensor[batch_indices] for tensor in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self._batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        self._batches_done = int(state["batches_done"])
        self._resume_epoch = self.epoch
        self._resume_batches = self._batches_done
