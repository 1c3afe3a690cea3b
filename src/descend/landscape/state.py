"""Guards that leave a model and the global random streams exactly as they were."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore the model's parameters, buffers, ``training`` flags, ``requires_grad`` flags and
    BatchNorm momenta on exit, bit for bit, even when the body raises.

    Values are restored with ``copy_`` into the original tensors, so optimisers and DDP keep
    holding the same parameter objects.
    """
    with torch.no_grad():
        parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    training = {module: module.training for module in model.modules()}
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, _BatchNorm)}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(parameters[name])
                p.requires_grad_(requires_grad[name])
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for module, mode in training.items():
            module.training = mode
        for module, momentum in momenta.items():
            module.momentum = momentum


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python random streams on exit."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
