"""Training-loop throughput: descend's loop vs a hand-written PyTorch loop vs a DataLoader feed.

All three train the default experiment's model (the digits MLP, built from configs/train.yaml)
with the same optimiser and batch size on the CPU, in one process, interleaved over several
rounds. Each round reports optimizer steps per second; the median over rounds is compared.

    .venv/bin/python bench/train_loop.py [--epochs 20] [--rounds 5] [--threads N] [overrides]

* descend: Lightning ``Trainer.fit`` on ``DigitsDataModule`` (tensor batches on the device)
  with the ``ClassificationModule``, logging every 10 steps to a CSV logger as ``make train``
  does; validation, checkpointing and the progress bar are off so only the training loop counts.
* hand-written: the same model, loss, SGD and per-epoch seeded permutation in a plain loop.
* DataLoader: the same LightningModule and trainer settings, fed by
  ``DataLoader(TensorDataset(...), shuffle=True)`` with per-sample indexing and collate.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def build_default(seed: int = 0, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"seed={seed}", *overrides])
    pl.seed_everything(seed, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    return cfg, datamodule, model


def make_trainer(epochs: int, log_dir: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(log_dir),
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def time_descend(model, datamodule, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = make_trainer(epochs, log_dir)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        elapsed = time.perf_counter() - start
    return trainer.global_step / elapsed


def time_dataloader(model, datamodule, epochs: int) -> float:
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    loader = DataLoader(
        TensorDataset(inputs, targets), batch_size=datamodule.batch_size, shuffle=True
    )
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = make_trainer(epochs, log_dir)
        start = time.perf_counter()
        trainer.fit(model, train_dataloaders=loader)
        elapsed = time.perf_counter() - start
    return trainer.global_step / elapsed


def time_hand_written(model, datamodule, epochs: int, seed: int = 0) -> float:
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    net = model.net
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = model.optimizer_factory(params=net.parameters())
    batch_size = datamodule.batch_size
    steps = 0
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed + epoch))
        for first in range(0, len(targets), batch_size):
            index = order[first : first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
            steps += 1
    elapsed = time.perf_counter() - start
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 keeps torch's default)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides of the default config, e.g. model.net.hidden_sizes=[512,512]",
    )
    args = parser.parse_args()
    overrides = tuple(args.overrides)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cfg, datamodule, model = build_default(overrides=overrides)
    initial_state = copy.deepcopy(model.state_dict())

    rates: dict[str, list[float]] = {"descend": [], "hand-written": [], "DataLoader": []}
    for _ in range(args.rounds):
        for name, timer in (
            ("descend", time_descend),
            ("hand-written", time_hand_written),
            ("DataLoader", time_dataloader),
        ):
            _, fresh_datamodule, fresh_model = build_default(overrides=overrides)
            fresh_model.load_state_dict(initial_state)
            rates[name].append(timer(fresh_model, fresh_datamodule, args.epochs))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"model: {cfg.model.net._target_} hidden {list(cfg.model.net.hidden_sizes)}, "
        f"batch {cfg.data.batch_size}, {args.epochs} epochs x {args.rounds} rounds"
    )
    for name, value in medians.items():
        spread = ", ".join(f"{v:.0f}" for v in rates[name])
        print(f"{name:>13}: {value:8.0f} steps/s (rounds: {spread})")
    print(
        f"descend / hand-written: {medians['descend'] / medians['hand-written']:.2f}x (target >= 0.5x)"
    )
    print(
        f"descend / DataLoader:   {medians['descend'] / medians['DataLoader']:.2f}x (target >= 2x)"
    )


if __name__ == "__main__":
    main()
