"""Data modules: the digits split, MNIST from IDX files, and the errors for bad settings."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from descend.data import DigitsDataModule, MissingDataError, MNISTDataModule
from descend.data import mnist as mnist_module

DIGITS_KWARGS = {"batch_size": 64, "num_classes": 10, "input_shape": [1, 8, 8]}


def test_digits_split_sizes_and_disjoint():
    datamodule = DigitsDataModule(**DIGITS_KWARGS)
    datamodule.setup("fit")
    sizes = {name: len(split[1]) for name, split in datamodule.splits.items()}
    assert sizes == {"train": 1437, "val": 180, "test": 180}

    # The splits are consecutive slices of one permutation of all 1797 indices, so they are
    # disjoint; recompute the test split's labels from that permutation.
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    labels = torch.as_tensor(load_digits().target)
    assert torch.equal(datamodule.splits["val"][1], labels[order[1437:1617]])
    assert torch.equal(datamodule.splits["test"][1], labels[order[1617:]])


def test_digits_standardised_with_train_statistics():
    datamodule = DigitsDataModule(**DIGITS_KWARGS)
    datamodule.setup("fit")
    train_x = datamodule.splits["train"][0]
    assert abs(float(train_x.mean())) < 1e-5
    assert abs(float(train_x.std()) - 1.0) < 1e-5

    # Independent recomputation from scikit-learn's raw pixels with the same permutation.
    digits = load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    raw_train = torch.as_tensor(digits.images, dtype=torch.float32)[order[:1437]] / 16.0
    expected = (raw_train - raw_train.mean()) / raw_train.std()
    torch.testing.assert_close(train_x.squeeze(1), expected)
    assert torch.equal(datamodule.splits["train"][1], torch.as_tensor(digits.target)[order[:1437]])


def test_digits_split_ignores_run_seed():
    first = DigitsDataModule(seed=1, **DIGITS_KWARGS)
    second = DigitsDataModule(seed=2, **DIGITS_KWARGS)
    first.setup("fit")
    second.setup("fit")
    assert torch.equal(first.splits["test"][0], second.splits["test"][0])


def test_batch_size_larger_than_train_set_rejected():
    datamodule = DigitsDataModule(**{**DIGITS_KWARGS, "batch_size": 1438})
    with pytest.raises(
        ValueError, match=r"data.batch_size=1438 is invalid.*only 1437 samples.*1437"
    ):
        datamodule.setup("fit")


@pytest.mark.parametrize("batch_size", [0, -3])
def test_non_positive_batch_size_rejected(batch_size):
    with pytest.raises(ValueError, match=f"data.batch_size={batch_size} is invalid"):
        DigitsDataModule(**{**DIGITS_KWARGS, "batch_size": batch_size})


def test_wrong_num_classes_rejected():
    datamodule = DigitsDataModule(**{**DIGITS_KWARGS, "num_classes": 5})
    with pytest.raises(ValueError, match=r"data.num_classes=5 does not match"):
        datamodule.setup("fit")


def write_idx_images(path: Path, images: np.ndarray) -> None:
    header = struct.pack(">IIII", 0x00000803, images.shape[0], images.shape[1], images.shape[2])
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">II", 0x00000801, labels.shape[0]) + labels.astype(np.uint8).tobytes()
    )


def make_mnist_files(root: Path, folder: str, num_train: int = 30, num_test: int = 12) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, size=(num_train, 28, 28)),
        "train_labels": np.arange(num_train) % 10,
        "test_images": rng.integers(0, 256, size=(num_test, 28, 28)),
        "test_labels": (np.arange(num_test) + 3) % 10,
    }
    write_idx_images(raw / "train-images-idx3-ubyte", arrays["train_images"])
    write_idx_labels(raw / "train-labels-idx1-ubyte", arrays["train_labels"])
    write_idx_images(raw / "t10k-images-idx3-ubyte", arrays["test_images"])
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", arrays["test_labels"])
    return arrays


@pytest.mark.parametrize(
    ("dataset", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_reads_generated_idx_files(tmp_path, dataset, folder):
    arrays = make_mnist_files(tmp_path, folder)
    datamodule = MNISTDataModule(
        data_dir=str(tmp_path),
        dataset=dataset,
        download=False,
        val_size=6,
        batch_size=8,
        num_classes=10,
        input_shape=[1, 28, 28],
    )
    datamodule.prepare_data()
    datamodule.setup("fit")

    assert len(datamodule.splits["train"][1]) == 24
    assert len(datamodule.splits["val"][1]) == 6
    assert datamodule.splits["test"][1].tolist() == arrays["test_labels"].tolist()

    train_pixels = arrays["train_images"].astype(np.float64) / 255.0
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    train_idx = order[6:].numpy()
    mean = train_pixels[train_idx].mean()
    std = train_pixels[train_idx].std(ddof=1)
    expected_test = (arrays["test_images"] / 255.0 - mean) / std
    np.testing.assert_allclose(
        datamodule.splits["test"][0].squeeze(1).numpy(), expected_test, atol=1e-5
    )


def test_mnist_missing_directory_names_files(tmp_path):
    datamodule = MNISTDataModule(
        data_dir=str(tmp_path / "nowhere"),
        download=False,
        batch_size=8,
        num_classes=10,
        input_shape=[1, 28, 28],
    )
    with pytest.raises(MissingDataError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "download is off" in message


def test_mnist_failed_download_explains(tmp_path, monkeypatch):
    class OfflineMNIST:
        def __init__(self, *args, **kwargs):
            raise OSError("network is unreachable")

    monkeypatch.setitem(mnist_module.DATASETS, "mnist", OfflineMNIST)
    datamodule = MNISTDataModule(
        data_dir=str(tmp_path),
        download=True,
        batch_size=8,
        num_classes=10,
        input_shape=[1, 28, 28],
    )
    with pytest.raises(MissingDataError, match="the download failed: network is unreachable"):
        datamodule.prepare_data()
