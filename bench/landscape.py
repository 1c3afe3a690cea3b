"""Time a 21x21 filter-normalised random plane: descend.landscape against loss-landscapes 3.0.6.

Both evaluate the same trained digits MLP (64-128-10, the default ``model/net=mlp``) on the
same training samples, side by side in one process, repeating each measurement and reporting
the median. ``descend.landscape`` computes loss, accuracy and a standard error per point;
``loss_landscapes.random_plane`` computes the loss only.

For the maximum difference of the values, the directions that ``loss_landscapes`` draws are
rebuilt with its own functions from the same global seed, and ``descend.landscape`` evaluates
exactly the grid points that ``loss_landscapes`` visits. Its grid is not centred on the trained
point and its odd columns are shifted by one step (it walks the columns up and down in place),
which is reproduced here.

Run: ``python bench/landscape.py [--device cuda] [--num-samples 512] [--repeats 3]
[--threads N]``
(needs ``pip install loss-landscapes==3.0.6``, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from descend.data.digits import DigitsDataModule
from descend.landscape import (
    Evaluator,
    ParameterSpace,
    make_eval_batches,
    plane_weights,
    random_plane_surface,
)
from descend.models.nets import MLP

STEPS = 21


def trained_mlp(inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> nn.Module:
    """Train the default MLP for 200 full-batch gradient descent steps (lr 0.5, seed 0)."""
    torch.manual_seed(0)
    model = MLP(input_shape=[1, 8, 8], num_classes=10, hidden_sizes=[128]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs, targets = inputs.to(device), targets.to(device)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def reference_directions(model: nn.Module, seed: int) -> torch.Tensor:
    """Rebuild the two directions ``loss_landscapes.random_plane`` draws after
    ``torch.manual_seed(seed)``, scaled to one grid step, as flat vectors ``[2, size]``."""
    from loss_landscapes.model_interface.model_parameters import orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model

    torch.manual_seed(seed)
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    first = rand_u_like(start)
    second = orthogonal_to(first)
    first.filter_normalize_(start)
    second.filter_normalize_(start)
    for direction in (first, second):
        direction.mul_((start.model_norm() / 1.0 / STEPS) / direction.model_norm())
    return torch.stack([torch.cat([p.reshape(-1) for p in d.parameters]) for d in (first, second)])


def reference_grid() -> torch.Tensor:
    """Coefficients ``[STEPS * STEPS, 2]`` of the points of ``random_plane``'s matrix entries
    ``[i][j]``, in steps: ``a = i - STEPS/2``; ``b = j + 1 - STEPS/2`` for even ``i`` and
    ``j - STEPS/2`` for odd ``i``."""
    rows = []
    for i in range(STEPS):
        for j in range(STEPS):
            offset = j + 1 if i % 2 == 0 else j
            rows.append([i - STEPS / 2, offset - STEPS / 2])
    return torch.tensor(rows, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import loss_landscapes
    from loss_landscapes.metrics import Loss

    device = torch.device(args.device)
    datamodule = DigitsDataModule(batch_size=64, num_classes=10, input_shape=[1, 8, 8])
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    model = trained_mlp(inputs, targets, device)

    batches = make_eval_batches(inputs, targets, args.num_samples, 64, seed=0, device=device)
    samples = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    metric = Loss(nn.CrossEntropyLoss(), samples, labels)

    timings: dict[str, list[float]] = {"auto": [], "vmap": [], "loop": [], "loss-landscapes": []}
    for _ in range(args.repeats):
        for method in ("auto", "vmap", "loop"):
            evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches, method=method)
            timings[method].append(
                time_call(lambda e=evaluator: random_plane_surface(e, seed=0), device)
            )
        timings["loss-landscapes"].append(
            time_call(
                lambda: loss_landscapes.random_plane(
                    model,
                    metric,
                    distance=1,
                    steps=STEPS,
                    normalization="filter",
                    deepcopy_model=True,
                ),
                device,
            )
        )

    # Values at the same points.
    torch.manual_seed(1)
    reference = loss_landscapes.random_plane(
        model, metric, distance=1, steps=STEPS, normalization="filter", deepcopy_model=True
    )
    space = ParameterSpace.of(model)
    directions = reference_directions(model, seed=1).to(device)
    evaluator = Evaluator(model, nn.CrossEntropyLoss(), batches)
    ours = evaluator(
        plane_weights(space.vector(model), directions, reference_grid()), STEPS * STEPS
    ).loss.reshape(STEPS, STEPS)
    difference = np.abs(ours - reference)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(
        f"device {device}, {args.num_samples} samples, {STEPS}x{STEPS} grid, "
        f"median of {args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name, seconds in medians.items():
        ratio = medians["loss-landscapes"] / seconds
        print(f"  {name:16s} {seconds:7.3f} s   loss-landscapes / this = {ratio:5.2f}")
    print(f"  loss range on the compared grid: {reference.min():.4f} .. {reference.max():.4f}")
    print(
        f"  max |difference| {difference.max():.3g}, max relative "
        f"{(difference / np.abs(reference)).max():.3g}"
    )


if __name__ == "__main__":
    main()
