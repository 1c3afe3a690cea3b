"""In-process training runs on digits: accuracy, run directory contents, full batches, eval."""

import csv
import json
from pathlib import Path

import torch
import yaml

from descend.eval import evaluate
from descend.train import train

# Chance level on 10 balanced classes is 0.1. Two epochs of SGD (lr 0.1, batch 64) reach about
# 0.9 on the 180 test digits; 0.8 leaves room for other platforms' floating point while still
# failing for a model that learns nothing or trains on shuffled labels.
MIN_SHORT_RUN_ACCURACY = 0.8


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "version_0" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_short_run_learns_digits(make_config):
    cfg = make_config()
    metrics = train(cfg)
    assert metrics["test/acc"] >= MIN_SHORT_RUN_ACCURACY


def test_run_directory_records_run(make_config):
    cfg = make_config("trainer.log_every_n_steps=1")
    metrics = train(cfg)
    output_dir = Path(cfg.paths.output_dir)

    config = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert config["seed"] == 0
    assert config["data"]["batch_size"] == 64

    results = json.loads((output_dir / "results.json").read_text())
    assert results["seed"] == 0
    # 1437 samples in batches of 64: 23 steps per epoch, 2 epochs.
    assert results["global_step"] == 46
    assert results["metrics"]["test/acc"] == metrics["test/acc"]

    rows = read_metrics(output_dir)
    steps_with_loss = [int(row["step"]) for row in rows if row["train/loss"]]
    assert steps_with_loss == list(range(46))
    test_rows = [row for row in rows if row["test/acc"]]
    assert float(test_rows[-1]["test/acc"]) == metrics["test/acc"]

    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["descend_config"] == config


def test_full_batch_takes_one_step_per_epoch(make_config):
    cfg = make_config("data.batch_size=1437", "trainer.max_epochs=3")
    train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["global_step"] == 3


def test_drawn_seed_is_recorded(make_config):
    cfg = make_config("seed=null", "trainer.max_epochs=1")
    train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results = json.loads((output_dir / "results.json").read_text())
    config = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert isinstance(results["seed"], int)
    assert config["seed"] == results["seed"]


def test_seeds_change_initialisation(make_config):
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    weights = []
    for seed in (0, 0, 1):
        pl.seed_everything(seed, verbose=False)
        model = instantiate(make_config(f"seed={seed}").model)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_eval_reproduces_test_metrics(make_config):
    train_cfg = make_config()
    train_metrics = train(train_cfg)
    results = json.loads((Path(train_cfg.paths.output_dir) / "results.json").read_text())

    eval_cfg = make_config(f"ckpt_path={results['best_checkpoint']}", name="eval")
    eval_metrics = evaluate(eval_cfg)
    assert eval_metrics["test/acc"] == train_metrics["test/acc"]
    assert eval_metrics["test/loss"] == train_metrics["test/loss"]


def test_last_checkpoint_holds_final_step(make_config):
    # mode=min on val/acc makes the first epoch the "best", so later epochs save no top-k
    # checkpoint; last.ckpt must still follow training to its final step.
    cfg = make_config("trainer.max_epochs=3", "callbacks.model_checkpoint.mode=min", "test=false")
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 * 23
    assert (checkpoints / "epoch_000.ckpt").is_file()


def test_results_record_convergence_verdict(make_config):
    # Full-batch GD with a loose tolerance: the stationary-point detector stops the run, and
    # results.json must report the same step as the convergence/step column of metrics.csv.
    cfg = make_config(
        "data.batch_size=1437",
        "trainer.max_epochs=50",
        "callbacks.convergence.stationary_point.grad_tol=0.5",
        "callbacks.convergence.check_every_n_steps=1",
        "test=false",
    )
    train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results = json.loads((output_dir / "results.json").read_text())
    convergence = results["convergence"]
    assert convergence["reason"] == "stationary_point"
    logged = [row for row in read_metrics(output_dir) if row.get("convergence/step")]
    assert int(float(logged[0]["convergence/step"])) == convergence["step"]
    assert convergence["summary"].startswith(f"converged at step {convergence['step']} (")
    assert results["global_step"] == convergence["step"]
