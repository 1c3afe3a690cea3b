"""Invalid settings fail before training with a message naming key, value and allowed range."""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from descend.train import train


def assert_nothing_written(cfg) -> None:
    output_dir = Path(cfg.paths.output_dir)
    assert not (output_dir / "config.yaml").exists(), "the run started before the check"
    assert not (output_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.optimizer.lr=0",
            "model.optimizer.lr=0 is invalid: the learning rate must be a number > 0",
        ),
        ("model.optimizer.lr=-0.1", "model.optimizer.lr=-0.1 is invalid"),
        (
            "data.batch_size=0",
            "data.batch_size=0 is invalid: it must be an integer in [1, size of the training set]",
        ),
        (
            "trainer.accelerator=tpx",
            "trainer.accelerator='tpx' is invalid: use one of ['auto', 'cpu', 'cuda', 'gpu', 'mps', 'tpu']",
        ),
        ("trainer.devices=0", "trainer.devices=0 is invalid: use a positive integer"),
        (
            "ckpt_path=/nonexistent/last.ckpt",
            "ckpt_path=/nonexistent/last.ckpt is invalid: no such file",
        ),
    ],
)
def test_invalid_setting_rejected_before_work(make_config, override, message):
    cfg = make_config(override)
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        train(cfg)
    assert message in str(raised.value)
    assert_nothing_written(cfg)


def test_batch_size_above_train_set_rejected(make_config):
    # Digits with the default fractions: 1797 - 180 - 180 = 1437 training images.
    cfg = make_config("data.batch_size=1438")
    expected = "data.batch_size=1438 is invalid: the training set has only 1437 samples"
    with pytest.raises(ValueError, match=re.escape(expected)):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_more_gpus_than_exist_rejected(make_config):
    count = torch.cuda.device_count()
    cfg = make_config("trainer.accelerator=gpu", f"trainer.devices={count + 1}")
    expected = f"trainer.devices={count + 1} is invalid for trainer.accelerator=gpu: this machine has {count} CUDA GPU(s)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        train(cfg)
    assert_nothing_written(cfg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "grid_points",
            "[0,21]",
            "callbacks.landscape.grid_points=[0, 21] is invalid: each axis of a grid needs an "
            "integer number of points >= 1",
        ),
        (
            "line_points",
            "0",
            "callbacks.landscape.line_points=0 is invalid: each axis of a grid needs an integer "
            "number of points >= 1",
        ),
        (
            "random_extent",
            "[1.0,0.0]",
            "callbacks.landscape.random_extent=[1.0, 0.0] is invalid: each half-width must be a "
            "number > 0",
        ),
    ],
)
def test_empty_landscape_grid_rejected(make_config, key, value, message):
    cfg = make_config(f"callbacks.landscape.{key}={value}")
    with pytest.raises(ValueError) as raised:
        train(cfg)
    assert message in str(raised.value)
    assert_nothing_written(cfg)


def save_model_checkpoint(make_config, path: Path, *overrides: str) -> set[str]:
    """Save a checkpoint holding only the weights of the configured model; return their names."""
    model = hydra.utils.instantiate(make_config(*overrides).model)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, path)
    return set(model.state_dict())


def test_truncated_checkpoint_rejected(make_config, tmp_path):
    path = tmp_path / "truncated.ckpt"
    save_model_checkpoint(make_config, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    cfg = make_config(f"ckpt_path={path}")
    with pytest.raises(
        ValueError, match=re.escape(f"checkpoint {path} could not be read")
    ) as raised:
        train(cfg)
    assert "truncated" in str(raised.value)
    assert_nothing_written(cfg)


def test_checkpoint_of_other_model_rejected(make_config, tmp_path):
    path = tmp_path / "cnn.ckpt"
    cnn_names = save_model_checkpoint(make_config, path, "model/net=cnn")
    mlp_names = set(hydra.utils.instantiate(make_config().model).state_dict())

    cfg = make_config(f"ckpt_path={path}")
    with pytest.raises(ValueError) as raised:
        train(cfg)
    message = str(raised.value)
    assert f"checkpoint {path} is from a different model" in message
    assert f"missing {sorted(mlp_names - cnn_names)[0]}" in message
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_missing_dependency_named(make_config, tmp_path, monkeypatch):
    (tmp_path / "net_with_missing_dependency.py").write_text(
        "import descend_dependency_that_is_not_installed\n\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_config("model.net._target_=net_with_missing_dependency.Net")

    with pytest.raises(ImportError) as raised:
        train(cfg)
    message = str(raised.value)
    assert message.startswith("model: ModuleNotFoundError")
    assert "No module named 'descend_dependency_that_is_not_installed'" in message


def test_zero_training_batches_rejected(make_config):
    cfg = make_config("+trainer.limit_train_batches=0")
    with pytest.raises(ValueError, match="the training loader yielded zero batches"):
        train(cfg)


@pytest.mark.slow
def test_misspelled_monitor_fails_at_first_validation(make_config):
    cfg = make_config("callbacks.model_checkpoint.monitor=val/acx", "data.batch_size=256")
    with pytest.raises(MisconfigurationException) as raised:
        train(cfg)
    message = str(raised.value)
    # Lightning 2.6's ModelCheckpoint raises at the first validation and lists the logged keys.
    assert "`ModelCheckpoint(monitor='val/acx')` could not find the monitored key" in message
    assert "'val/acc'" in message
    assert "'val/loss'" in message
