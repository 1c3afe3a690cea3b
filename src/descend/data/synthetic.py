"""Generated regression data, drawn from a fixed seed and held in memory."""

from __future__ import annotations

import torch

from descend.data.in_memory import InMemoryDataModule


class TanhRegressionDataModule(InMemoryDataModule):
    """Samples ``y = amplitude * tanh(slope * x) + noise_std * e`` with ``x, e ~ N(0, 1)``.

    All splits are drawn once from a generator seeded with ``data_seed`` (never the run's
    ``seed``), so runs with different seeds fit the same samples. Inputs have shape ``[n, 1]``
    and targets ``[n]`` (float32). Fitted by :class:`~descend.models.nets.TanhUnit` with mean
    squared error, the loss has two mirror-image minima near ``(slope, amplitude)`` and
    ``(-slope, -amplitude)``.

    Args:
        num_train, num_val, num_test: samples per split.
        slope, amplitude: parameters of the target function.
        noise_std: standard deviation of the additive Gaussian noise on the targets.
        data_seed: seed of the samples.
        **kwargs: passed to :class:`~descend.data.in_memory.InMemoryDataModule`, without
            ``num_classes`` and ``input_shape`` (a regression has no classes; inputs are ``[1]``).
    """

    def __init__(
        self,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 64,
        slope: float = 1.5,
        amplitude: float = 2.0,
        noise_std: float = 0.3,
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=0, input_shape=(1,), **kwargs)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value <= 0:
                raise ValueError(f"data.{name}={value} is invalid: it must be a positive integer")
        if noise_std < 0:
            raise ValueError(f"data.noise_std={noise_std} is invalid: it must be 0 or positive")
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.slope = slope
        self.amplitude = amplitude
        self.noise_std = noise_std
        self.data_seed = data_seed

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.data_seed)
        total = self.num_train + self.num_val + self.num_test
        inputs = torch.randn(total, 1, generator=generator)
        noise = torch.randn(total, generator=generator)
        targets = self.amplitude * torch.tanh(self.slope * inputs[:, 0]) + self.noise_std * noise

        bounds = (0, self.num_train, self.num_train + self.num_val, total)
        return {
            name: (inputs[start:end], targets[start:end])
            for name, start, end in zip(("train", "val", "test"), bounds, bounds[1:], strict=False)
        }

    def _check_split(self, name: str, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        # Regression targets are real numbers, so the class-range check of the base class does
        # not apply; only the shapes are checked.
        if tuple(inputs.shape[1:]) != self.input_shape or targets.shape != inputs.shape[:1]:
            raise ValueError(
                f"the {name} split has inputs {list(inputs.shape)} and targets "
                f"{list(targets.shape)}: expected [n, 1] and [n]"
            )
