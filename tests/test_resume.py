"""Interrupted and resumed training continues exactly: checkpoints, signals, loaders, W&B."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import ROOT, run_command
from omegaconf import OmegaConf, open_dict
from wandb_records import find_run_files, run_contents

import descend.train
from descend.callbacks.interrupt import TrainingInterrupted
from descend.callbacks.rank_state import (
    collect_metric_states,
    collect_rng_states,
    restore_metric_states,
    restore_rng_states,
)
from descend.data.resumable_loader import ResumableDataLoader, ResumableDistributedSampler
from descend.data.tensor_batches import TensorBatchLoader
from descend.loggers.wandb_logger import continue_wandb_run
from descend.train import train
from descend.utils.atomic_checkpoint_io import AtomicCheckpointIO
from descend.utils.checkpoints import RESUME_PATH_ENV, find_last_checkpoint, resolve_resume_path

# Digits with 256 samples per batch: 6 batches per epoch (1437 / 256 rounded up). Adam, a
# scheduler stepped every batch and dropout make the optimizer, scheduler and random generator
# states matter for the result.
RUN_OVERRIDES = (
    "logger=csv",
    "extras.print_config=false",
    "test=false",
    "seed=3",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "data.batch_size=256",
    "trainer.max_steps=14",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "model/optimizer=adam",
    "model/scheduler=step",
    "model.scheduler.step_size=1",
    "model.scheduler.gamma=0.9",
    "model.scheduler_interval=step",
    "model.net.dropout=0.2",
)
BATCHES_PER_EPOCH = 6
SUBPROCESS_ENV = {
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
    # Wide enough that rich does not wrap the log lines the tests search.
    "COLUMNS": "400",
}


def interrupt_overrides(step: int, signal_name: str) -> list[str]:
    return [
        "+callbacks.interrupt_at_step._target_=signal_helpers.SignalAtStep",
        f"+callbacks.interrupt_at_step.step={step}",
        f"+callbacks.interrupt_at_step.signal_name={signal_name}",
    ]


def run_train(run_dir: Path, *overrides: str):
    return run_command(
        ["descend-train", *RUN_OVERRIDES, f"hydra.run.dir={run_dir}", *overrides],
        cwd=run_dir.parent,
        env=SUBPROCESS_ENV,
    )


def logged_losses(run_dir: Path) -> dict[int, str]:
    """Map each logged step to its ``train/loss`` as written (the text keeps every bit)."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as file:
        return {
            int(row["step"]): row["train/loss"] for row in csv.DictReader(file) if row["train/loss"]
        }


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), (
            f"{name} differs from the uninterrupted run"
        )


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_train(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted(uninterrupted_run: Path, tmp_path: Path):
    killed_dir = tmp_path / "killed"
    killed = run_train(killed_dir, *interrupt_overrides(9, "SIGKILL"))
    assert killed.returncode == -9, killed.stderr[-3000:]

    # every_n_train_steps=2 last wrote at step 8: batch 2 of epoch 1, in the middle of the epoch.
    checkpoint = torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 8
    loader_state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["epoch"] == 1
    assert loader_state["batches_done"] == 8 - BATCHES_PER_EPOCH
    killed_files = file_hashes(killed_dir)

    resumed_dir = tmp_path / "resumed"
    resumed = run_train(resumed_dir, f"ckpt_path={killed_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected_losses = logged_losses(uninterrupted_run)
    resumed_losses = logged_losses(resumed_dir)
    assert sorted(resumed_losses) == list(range(8, 14))
    for step, loss in resumed_losses.items():
        assert loss == expected_losses[step], f"train/loss at step {step}"
    assert_same_weights(final_weights(resumed_dir), final_weights(uninterrupted_run))
    assert file_hashes(killed_dir) == killed_files, "resuming changed the files of the old run"


@pytest.mark.slow
def test_sigterm_checkpoints_exits_and_resumes_wandb(uninterrupted_run: Path, tmp_path: Path):
    stopped_dir = tmp_path / "stopped"
    stopped = run_train(stopped_dir, "logger=default", *interrupt_overrides(9, "SIGTERM"))

    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped_dir / "checkpoints" / "last.ckpt"
    # The stop happens after the step in progress, so the checkpoint contains step 9.
    assert torch.load(last, weights_only=False)["global_step"] == 9
    assert f'resume with: make train ARGS="ckpt_path={last}"' in one_line(
        stopped.stderr + stopped.stdout
    )

    resumed_dir = tmp_path / "resumed"
    resumed = run_train(
        resumed_dir, "logger=default", f"ckpt_path={last}", "logger.wandb.resume=allow"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(final_weights(resumed_dir), final_weights(uninterrupted_run))

    (first_file,) = find_run_files(stopped_dir)
    (second_file,) = find_run_files(resumed_dir)
    first, second = run_contents(first_file), run_contents(second_file)
    assert second["run_id"] == first["run_id"]
    first_steps = [row["trainer/global_step"] for row in first["history"] if "train/loss" in row]
    second_steps = [row["trainer/global_step"] for row in second["history"] if "train/loss" in row]
    assert max(first_steps) == 8
    assert min(second_steps) == 9
    assert second["config"]["seed"] == 3
    assert second["config"]["run_record"]["seed"] == 3


@pytest.mark.slow
def test_sigint_checkpoints_and_exits(make_config, caplog):
    cfg = make_config(
        "trainer.max_steps=14",
        "data.batch_size=256",
        "test=false",
        *interrupt_overrides(9, "SIGINT"),
    )
    with pytest.raises(TrainingInterrupted) as raised:
        train(cfg)

    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert raised.value.code == 130
    assert raised.value.checkpoint_path == last
    assert torch.load(last, weights_only=False)["global_step"] == 9
    assert (
        f'SIGINT stopped training; resume with: make train ARGS="ckpt_path={last.resolve()}"'
        in caplog.text
    )


def test_continue_wandb_run_only_when_requested():
    checkpoint = {"descend_wandb_run_id": "abc123"}
    with_resume = OmegaConf.create({"logger": {"wandb": {"id": None, "resume": "allow"}}})
    without_resume = OmegaConf.create({"logger": {"wandb": {"id": None, "resume": None}}})

    continue_wandb_run(with_resume, checkpoint)
    continue_wandb_run(without_resume, checkpoint)

    assert with_resume.logger.wandb.id == "abc123"
    assert without_resume.logger.wandb.id is None


def test_tensor_loader_resumes_mid_epoch_and_after_epoch():
    data = torch.arange(10)
    reference = TensorBatchLoader([data], batch_size=3, seed=5)
    reference.set_epoch(1)
    epoch_one = [batch[0].tolist() for batch in reference]
    reference.set_epoch(2)
    epoch_two = [batch[0].tolist() for batch in reference]

    loader = TensorBatchLoader([data], batch_size=3, seed=5)
    loader.set_epoch(1)
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    mid_epoch = loader.state_dict()
    resumed = TensorBatchLoader([data], batch_size=3, seed=0)
    resumed.load_state_dict(mid_epoch)
    resumed.set_epoch(1)
    assert [batch[0].tolist() for batch in resumed] == epoch_one[2:]

    # A state saved after the last batch of epoch 1 must start epoch 2 from its first batch.
    end_of_epoch = resumed.state_dict()
    restarted = TensorBatchLoader([data], batch_size=3, seed=0)
    restarted.load_state_dict(end_of_epoch)
    restarted.set_epoch(2)
    assert [batch[0].tolist() for batch in restarted] == epoch_two


def make_dataloader(seed: int) -> ResumableDataLoader:
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    sampler = ResumableDistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=seed)
    return ResumableDataLoader(
        dataset, batch_size=3, sampler=sampler, generator=torch.Generator().manual_seed(seed)
    )


def test_dataloader_resumes_mid_epoch():
    reference = make_dataloader(7)
    reference.sampler.set_epoch(4)
    expected = [batch[0].tolist() for batch in reference]
    # DistributedSampler's order: randperm(20) seeded with seed + epoch, rank 1 takes every
    # second index from position 1, in batches of 3.
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(7 + 4))
    shard = permutation[1::2].tolist()
    assert expected == [shard[0:3], shard[3:6], shard[6:9], shard[9:10]]

    loader = make_dataloader(7)
    loader.sampler.set_epoch(4)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()

    resumed = make_dataloader(7)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)
    assert [batch[0].tolist() for batch in resumed] == expected[1:]


def test_atomic_checkpoint_io_keeps_old_file_on_failure(tmp_path: Path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"global_step": 1}, path)
    assert torch.load(path)["global_step"] == 1

    def fail_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_io.save_checkpoint({"global_step": 2}, path)

    assert torch.load(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_ckpt_path_last_picks_newest(tmp_path: Path, monkeypatch):
    # resolve_resume_path records its choice for DDP processes; keep it out of later tests.
    monkeypatch.setenv(RESUME_PATH_ENV, "")
    older = tmp_path / "train" / "runs" / "a" / "checkpoints" / "last.ckpt"
    newer = tmp_path / "train" / "runs" / "b" / "checkpoints" / "last.ckpt"
    for index, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + index, 10**18 + index))

    assert find_last_checkpoint(tmp_path) == newer
    assert resolve_resume_path("last", tmp_path) == newer
    assert resolve_resume_path(None, tmp_path) is None


def test_rank_states_restore_random_draws_and_metrics():
    from torchmetrics.classification import MulticlassAccuracy

    metric = MulticlassAccuracy(num_classes=3, average="micro")
    metric(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]))
    module = torch.nn.ModuleDict({"acc": metric})
    rng_states = collect_rng_states()
    metric_states = collect_metric_states(module)
    expected = (torch.rand(3), np.random.rand(), random.random())

    metric.reset()
    restore_rng_states(rng_states)
    restore_metric_states(module, metric_states)
    drawn = (torch.rand(3), np.random.rand(), random.random())

    assert torch.equal(drawn[0], expected[0])
    assert drawn[1:] == expected[1:]
    # One of the two predictions was right.
    assert metric.compute().item() == 0.5


@pytest.mark.slow
def test_dataloader_path_resumes_mid_epoch(make_config):
    """The DataLoader path (one worker process) continues exactly from a step-8 checkpoint."""
    settings = [item for item in RUN_OVERRIDES if not item.startswith("trainer.max_steps")]
    settings += ["data.loader=dataloader", "data.num_workers=1", "trainer.max_epochs=20"]

    # paths.output_dir resolves against the config composed last, so read it before the next one.
    full = make_config(*settings, "trainer.max_steps=14")
    full_dir = Path(full.paths.output_dir)
    train(full)
    first_part = make_config(*settings, "trainer.max_steps=8")
    first_last = Path(first_part.paths.output_dir) / "checkpoints" / "last.ckpt"
    train(first_part)

    loader_state = torch.load(first_last, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert loader_state["combined_loader"][0]["epoch"] == 1
    assert loader_state["combined_loader"][0]["batches_done"] == 8 - BATCHES_PER_EPOCH

    second_part = make_config(*settings, "trainer.max_steps=14", f"ckpt_path={first_last}")
    resumed_dir = Path(second_part.paths.output_dir)
    train(second_part)

    resumed_losses = logged_losses(resumed_dir)
    assert sorted(resumed_losses) == list(range(8, 14))
    expected_losses = logged_losses(full_dir)
    for step, loss in resumed_losses.items():
        assert loss == expected_losses[step], f"train/loss at step {step}"
    assert_same_weights(final_weights(resumed_dir), final_weights(full_dir))


class LastCheckpointProbe(pl.Callback):
    """Record the global step stored in ``last.ckpt`` at the start of every training batch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: list[int | None] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.path.exists():
            self.seen.append(torch.load(self.path, weights_only=False)["global_step"])
        else:
            self.seen.append(None)


def test_last_checkpoint_written_before_first_validation(make_config, monkeypatch):
    # 6 batches per epoch: steps 2 and 4 come before the first validation (after step 6), when
    # val/acc, the monitored metric, does not exist yet.
    cfg = make_config(
        "data.batch_size=256",
        "trainer.max_steps=5",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
    )
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": "test_resume.LastCheckpointProbe", "path": str(last)}
    probes = []
    original = descend.train.instantiate_group

    def keep_probe(group, name):
        objects = original(group, name)
        probes.extend(obj for obj in objects if isinstance(obj, LastCheckpointProbe))
        return objects

    monkeypatch.setattr(descend.train, "instantiate_group", keep_probe)
    train(cfg)

    # Before batches 1..5: nothing, nothing, step 2, step 2, step 4.
    assert probes[0].seen == [None, None, 2, 2, 4]
