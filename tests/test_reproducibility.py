"""Same seed, same run: weights, logged metrics, data order and the run record."""

from __future__ import annotations

import csv
import json
import logging
import platform
import subprocess
from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from conftest import ROOT, run_command

from descend.data.resumable_loader import ResumableDataLoader, ResumableDistributedSampler
from descend.train import train
from descend.utils import run_record
from descend.utils.seeding import derive_seed

# 256 samples per batch gives 6 batches per digits epoch; dropout makes the run draw random
# numbers at every step; last.ckpt is written at step 10, the end of training.
SMALL_RUN = (
    "trainer.log_every_n_steps=1",
    "data.batch_size=256",
    "trainer.max_steps=10",
    "callbacks.model_checkpoint.every_n_train_steps=5",
    "model.net.dropout=0.2",
    "test=false",
)


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def final_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_run(first: Path, second: Path) -> None:
    assert metrics_rows(first) == metrics_rows(second)
    first_weights = final_checkpoint(first)["state_dict"]
    second_weights = final_checkpoint(second)["state_dict"]
    assert first_weights.keys() == second_weights.keys()
    for name in first_weights:
        assert torch.equal(first_weights[name], second_weights[name]), f"{name} differs"


@pytest.fixture(scope="module")
def two_runs_same_seed(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import compose_config

    run_dirs = []
    for index in range(2):
        run_dir = tmp_path_factory.mktemp(f"same_seed{index}")
        train(compose_config("train", run_dir, ["seed=11", *SMALL_RUN]))
        run_dirs.append(run_dir)
    return run_dirs[0], run_dirs[1]


@pytest.mark.slow
def test_same_seed_gives_identical_run(two_runs_same_seed):
    first, second = two_runs_same_seed
    rows = metrics_rows(first)
    assert [int(row["step"]) for row in rows if row["train/loss"]] == list(range(10))
    assert_same_run(first, second)


@pytest.mark.slow
def test_run_record_describes_run(two_runs_same_seed):
    run_dir = two_runs_same_seed[0]
    record = json.loads((run_dir / "run_record.json").read_text())
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert record["seed"] == 11
    assert "seed=11" in record["overrides"]
    assert record["git"]["commit"] == commit
    assert record["git"]["dirty"] == bool(status.strip())
    assert (run_dir / "git_diff.patch").exists() == bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "diff", "HEAD"], capture_output=True, text=True
        ).stdout
    )
    assert record["packages"]["torch"] == torch.__version__.split("+")[0]
    assert record["packages"]["lightning"] == pl.__version__
    assert record["python"] == platform.python_version()
    assert record["os"] == platform.platform()
    assert len(record["devices"]) >= 1
    assert "seed: 11" in (run_dir / "config.yaml").read_text()


def test_dirty_tree_warns_once(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(run_record, "_dirty_warning_shown", False)
    record = {"git": {"dirty": True, "commit": "0123abc"}}
    with caplog.at_level(logging.WARNING):
        run_record.warn_if_dirty(record, tmp_path)
        run_record.warn_if_dirty(record, tmp_path)
    warnings = [r for r in caplog.records if "uncommitted changes" in r.getMessage()]
    assert len(warnings) == 1
    assert "0123abc" in warnings[0].getMessage()
    # No git_diff.patch was written (only untracked files differ), so none is named.
    assert "git_diff.patch" not in warnings[0].getMessage()


def test_dirty_tree_warning_names_written_diff(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(run_record, "_dirty_warning_shown", False)
    (tmp_path / "git_diff.patch").write_text("diff --git a/x b/x\n")
    with caplog.at_level(logging.WARNING):
        run_record.warn_if_dirty({"git": {"dirty": True, "commit": "0123abc"}}, tmp_path)
    messages = [r.getMessage() for r in caplog.records if "uncommitted changes" in r.getMessage()]
    assert str(tmp_path / "git_diff.patch") in messages[0]


def test_different_seed_changes_init_and_batch_order(make_config):
    first_weights, first_batches = [], []
    for seed in (3, 4):
        cfg = make_config(f"seed={seed}", "data.batch_size=256")
        pl.seed_everything(cfg.seed, verbose=False)
        model = hydra.utils.instantiate(cfg.model)
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        first_weights.append(model.net.state_dict())
        first_batches.append(next(iter(datamodule.train_dataloader()))[1])

    assert not torch.equal(
        next(iter(first_weights[0].values())), next(iter(first_weights[1].values()))
    )
    assert not torch.equal(first_batches[0], first_batches[1])


class RandomDataset(torch.utils.data.Dataset):
    """Each item is a number drawn by the worker process that loads it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(1)


def worker_draws(seed: int, rank: int, epochs: int = 2) -> dict[tuple[int, int], list[float]]:
    """Return {(epoch, worker id): draws} for one rank, built as InMemoryDataModule does."""
    dataset = RandomDataset()
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=2, rank=rank, shuffle=True, seed=seed
    )
    loader = ResumableDataLoader(
        dataset,
        batch_size=1,
        sampler=sampler,
        num_workers=2,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(derive_seed(seed, rank)),
    )
    draws: dict[tuple[int, int], list[float]] = {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        # With batch_size=1 and 2 workers, batch i comes from worker i % 2.
        for index, batch in enumerate(loader):
            draws.setdefault((epoch, index % 2), []).append(batch.item())
    return draws


@pytest.mark.slow
def test_workers_draw_per_rank_worker_and_epoch():
    by_rank = {rank: worker_draws(seed=5, rank=rank) for rank in (0, 1)}

    all_streams = [tuple(values) for draws in by_rank.values() for values in draws.values()]
    assert len(all_streams) == 2 * 2 * 2
    assert len(set(all_streams)) == len(all_streams), "two rank/worker/epoch streams coincide"
    assert worker_draws(seed=5, rank=1) == by_rank[1]


@pytest.mark.slow
def test_ddp_sim_same_seed_gives_identical_run(tmp_path: Path):
    env = {"PYTHONPATH": str(ROOT / "src")}
    run_dirs = [tmp_path / "first", tmp_path / "second"]
    for run_dir in run_dirs:
        result = run_command(
            [
                "descend-train",
                "trainer=ddp_sim",
                "logger=csv",
                "extras.print_config=false",
                "seed=11",
                *SMALL_RUN,
                "trainer.max_steps=6",
                "callbacks.model_checkpoint.every_n_train_steps=3",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    assert_same_run(*run_dirs)
    # Both ranks initialise from seed 11, then reseed apart at fit start, so their generator
    # states in the checkpoint differ.
    rank_states = final_checkpoint(run_dirs[0])["descend_rank_states"]
    assert len(rank_states) == 2
    assert not torch.equal(rank_states[0]["rng"]["torch"], rank_states[1]["rng"]["torch"])
