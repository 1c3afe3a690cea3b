"""Small convolutional network for image inputs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from descend.models.nets.mlp import make_activation


class CNN(nn.Sequential):
    """Blocks of ``Conv3x3 -> [BatchNorm] -> activation -> MaxPool2``, then a two-layer head.

    Each block halves the height and width (rounding down), so an 8x8 digit allows at most three
    blocks and a 28x28 MNIST image four.

    Args:
        input_shape: ``[channels, height, width]`` of one sample.
        num_classes: number of output logits.
        channels: output channels of each convolutional block.
        hidden_size: width of the hidden layer of the head.
        activation: ``relu``, ``tanh``, ``gelu`` or ``sigmoid``.
        batch_norm: insert ``BatchNorm2d`` after each convolution.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 64,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape={list(input_shape)} is invalid for a CNN: it needs "
                "[channels, height, width]"
            )
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            if height < 2 or width < 2:
                raise ValueError(
                    f"channels={list(channels)} has too many blocks for {height}x{width} "
                    "feature maps: each block halves the height and width"
                )
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(make_activation(activation))
            layers.append(nn.MaxPool2d(2))
            in_channels, height, width = out_channels, height // 2, width // 2

        layers += [
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            make_activation(activation),
            nn.Linear(hidden_size, num_classes),
        ]
        super().__init__(*layers)
