"""A ``DataLoader`` whose position inside an epoch survives a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start its next epoch at sample ``start_index`` of the shard.

    The permutation still depends only on ``seed`` and the epoch (``set_epoch``), so skipping the
    first ``start_index`` indices gives exactly the rest of an interrupted epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start_index = self.start_index, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableDistributedSampler` with ``state_dict`` support.

    ``state_dict`` records the epoch, the batches handed out in it and the state that the
    loader's ``generator`` had when the epoch began. The generator draws the worker processes'
    base seed at the start of every epoch (worker ``w`` seeds its generators from base seed +
    ``w``), so the global ``torch`` generator is never consumed by data loading. Give each DDP
    rank its own generator seed so that ranks' workers draw different numbers.
    ``load_state_dict`` makes the next iteration of that epoch skip the batches already trained
    on, and reproduce the worker base seed. Lightning 2.6 stores this state in its checkpoints
    because the loader has ``state_dict``; batches prefetched by worker processes are not
    counted, only those handed to the training loop.

    NOTE: random numbers drawn inside worker processes (augmentation) match the uninterrupted
    run only from the next epoch on: after a mid-epoch resume the remaining batches go to other
    workers than before, and ``persistent_workers`` keeps worker generators running across
    epochs. The data order itself is always exact.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableDistributedSampler):
            raise TypeError(
                f"ResumableDataLoader needs a ResumableDistributedSampler, got {type(self.sampler).__name__}"
            )
        if self.generator is None:
            raise TypeError("ResumableDataLoader needs a seeded torch.Generator as `generator`")
        self._batches_done = 0
        self._epoch_generator_state = self.generator.get_state()
        self._resume_epoch: int | None = None
        self._resume_batches = 0
        self._resume_generator_state: torch.Tensor | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch = self.sampler.epoch
        first_batch = 0
        if self._resume_epoch == epoch:
            first_batch = self._resume_batches
            self.generator.set_state(self._resume_generator_state)
        self._resume_epoch = None
        self._epoch_generator_state = self.generator.get_state()
        self.sampler.start_index = first_batch * self.batch_size
        self._batches_done = first_batch
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.sampler.epoch,
            "batches_done": self._batches_done,
            "generator_state": self._epoch_generator_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        self._resume_epoch = int(state["epoch"])
        self._resume_batches = int(state["batches_done"])
        self._resume_generator_state = state["generator_state"]
