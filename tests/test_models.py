"""Networks and the classification module: shapes, parameter counts, argument checks."""

import functools

import pytest
import torch
from torch import nn

from descend.models import ClassificationModule
from descend.models.nets import CNN, MLP


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mlp_parameter_count_and_output():
    net = MLP(input_shape=[1, 8, 8], num_classes=10, hidden_sizes=[128])
    # 64 inputs -> 128 hidden (weights + biases) -> 10 logits.
    assert count_parameters(net) == 64 * 128 + 128 + 128 * 10 + 10
    assert net(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_mlp_without_hidden_layers_is_logistic_regression():
    net = MLP(input_shape=[1, 8, 8], num_classes=10, hidden_sizes=[])
    linear_layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linear_layers) == 1
    assert count_parameters(net) == 64 * 10 + 10


def test_cnn_shapes_on_digits():
    net = CNN(input_shape=[1, 8, 8], num_classes=10, channels=[16, 32], hidden_size=64)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    # Two blocks halve 8x8 twice: the head gets 32 channels of 2x2.
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][0]
    assert head.in_features == 32 * 2 * 2


def test_cnn_too_many_blocks_rejected():
    with pytest.raises(ValueError, match="too many blocks"):
        CNN(input_shape=[1, 8, 8], num_classes=10, channels=[4, 4, 4, 4])


def test_unknown_activation_rejected():
    with pytest.raises(ValueError, match="activation='swish' is invalid"):
        MLP(input_shape=[4], num_classes=2, activation="swish")


@pytest.mark.parametrize("lr", [0.0, -0.1])
def test_non_positive_learning_rate_rejected(lr):
    optimizer = functools.partial(torch.optim.SGD, lr=lr)
    with pytest.raises(ValueError, match=f"model.optimizer.lr={lr} is invalid"):
        ClassificationModule(MLP([4], 2), nn.CrossEntropyLoss(), optimizer, num_classes=2)


def test_training_step_loss_is_cross_entropy():
    torch.manual_seed(0)
    net = MLP([4], 3, hidden_sizes=[])
    module = ClassificationModule(
        net, nn.CrossEntropyLoss(), functools.partial(torch.optim.SGD, lr=0.1), num_classes=3
    )
    inputs = torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, logits, _ = module._shared_step((inputs, targets))
    log_probs = torch.log_softmax(net(inputs), dim=1)
    expected = -log_probs[torch.arange(6), targets].mean()
    torch.testing.assert_close(loss, expected)
