"""TensorBatchLoader: seeded permutations, full batches, DDP shards and resuming mid-epoch."""

import math

import pytest
import torch

from descend.data.tensor_batches import TensorBatchLoader


def make_data(num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.arange(num_samples, dtype=torch.float32).unsqueeze(1)
    targets = torch.arange(num_samples)
    return inputs, targets


def visited(loader: TensorBatchLoader) -> list[int]:
    return [int(i) for _, targets in loader for i in targets]


def test_epoch_order_is_seeded_permutation():
    loader = TensorBatchLoader(make_data(10), batch_size=3, seed=7)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert visited(loader) == expected


def test_epochs_draw_different_orders():
    loader = TensorBatchLoader(make_data(50), batch_size=50, seed=0)
    first = visited(loader)
    loader.set_epoch(1)
    assert visited(loader) != first
    assert sorted(visited(loader)) == list(range(50))


def test_batch_sizes_and_length():
    loader = TensorBatchLoader(make_data(10), batch_size=4, seed=0)
    sizes = [len(targets) for _, targets in loader]
    assert sizes == [4, 4, 2]
    assert len(loader) == 3

    dropping = TensorBatchLoader(make_data(10), batch_size=4, seed=0, drop_last=True)
    assert [len(targets) for _, targets in dropping] == [4, 4]
    assert len(dropping) == 2


def test_full_batch_is_one_batch_of_everything():
    loader = TensorBatchLoader(make_data(37), batch_size=37, seed=3)
    batches = list(loader)
    assert len(batches) == 1
    assert sorted(batches[0][1].tolist()) == list(range(37))


def test_no_shuffle_keeps_stored_order():
    loader = TensorBatchLoader(make_data(5), batch_size=2, shuffle=False)
    assert visited(loader) == [0, 1, 2, 3, 4]


def test_ddp_shards_are_disjoint_and_cover_data():
    world_size = 2
    shards = [
        visited(TensorBatchLoader(make_data(11), batch_size=4, seed=5, rank=r, world_size=2))
        for r in range(world_size)
    ]
    # 11 samples are padded to 12 by repeating the first sample of the permutation.
    assert len(shards[0]) == len(shards[1]) == math.ceil(11 / 2)
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(5)).tolist()
    padded = permutation + permutation[:1]
    assert shards[0] == padded[0::2]
    assert shards[1] == padded[1::2]
    assert set(shards[0]) | set(shards[1]) == set(range(11))


def test_resume_mid_epoch_continues_same_batches():
    loader = TensorBatchLoader(make_data(20), batch_size=3, seed=11)
    loader.set_epoch(2)
    full_epoch = visited(loader)

    interrupted = TensorBatchLoader(make_data(20), batch_size=3, seed=11)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    seen = [int(i) for _ in range(3) for i in next(iterator)[1]]
    state = interrupted.state_dict()

    resumed = TensorBatchLoader(make_data(20), batch_size=3, seed=0)
    resumed.load_state_dict(state)
    assert seen + visited(resumed) == full_epoch
    # The next epoch starts from its first batch again.
    resumed.set_epoch(3)
    assert len(visited(resumed)) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank=2 is invalid"),
    ],
)
def test_invalid_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TensorBatchLoader(make_data(4), **kwargs)


def test_mismatched_tensors_rejected():
    with pytest.raises(ValueError, match="same first dimension"):
        TensorBatchLoader((torch.zeros(3), torch.zeros(4)), batch_size=1)
