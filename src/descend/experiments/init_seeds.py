"""The ``init_seeds`` experiment: the same network trained from several seeds, and the loss on
the straight line between each pair of solutions.

For final weights ``theta_i`` and ``theta_j`` the curve is ``L((1 - alpha) theta_i + alpha
theta_j)`` for ``alpha`` in ``[0, 1]``, evaluated on a fixed, seeded subset of the training split
with :func:`descend.landscape.interpolation_curve`. Its barrier height, ``max(L) - max(L(0),
L(1))``, is 0 when nothing separates the two minima along that line (they are linearly
connected) and positive when the line climbs over a ridge between them.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from matplotlib.figure import Figure

from descend.experiments.runs import Run, Summary
from descend.landscape import (
    Curve,
    Evaluator,
    ParameterSpace,
    interpolation_curve,
    make_eval_batches,
)
from descend.landscape.parameters import write_parameters
from descend.utils.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"


def final_weights(run: Run, module: torch.nn.Module) -> torch.Tensor:
    """Return the flat weights of ``run``'s last checkpoint, in ``module``'s parameter order."""
    checkpoint = load_checkpoint(run.path / CHECKPOINT)
    module.load_state_dict(checkpoint["state_dict"])
    return ParameterSpace.of(module).vector(module)


def build_evaluator(run: Run, num_samples: int, batch_size: int, seed: int) -> Evaluator:
    """Rebuild ``run``'s model and a fixed evaluation subset of its training split."""
    module = hydra.utils.instantiate(run.config.model)
    datamodule = hydra.utils.instantiate(run.config.data)
    datamodule.setup("fit")
    inputs, targets = datamodule.splits["train"]
    batches = make_eval_batches(inputs, targets, num_samples, batch_size, seed)
    return Evaluator(module, module.loss, batches, distributed=False)


def pair_curves(
    runs: list[Run],
    num_points: int = 21,
    num_samples: int | None = 512,
    batch_size: int = 128,
    seed: int = 0,
) -> list[tuple[Run, Run, Curve]]:
    """Return the interpolation curve between the final weights of every pair of runs."""
    evaluator = build_evaluator(runs[0], num_samples, batch_size, seed)
    module = evaluator.model
    space = ParameterSpace.of(module)
    weights = [final_weights(run, module) for run in runs]

    curves = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        write_parameters(module, space, weights[j])
        curve = interpolation_curve(evaluator, weights[i], num_points=num_points, margin=0.0)
        curves.append((runs[i], runs[j], curve))
        log.info(
            "Seeds %d -> %d: barrier height %.4g", runs[i].seed, runs[j].seed, curve.barrier_height
        )
    return curves


def plot_pair_curves(curves: list[tuple[Run, Run, Curve]]) -> Figure:
    """Left: the loss along each pair's line; right: the barrier heights as a matrix."""
    seeds = sorted({run.seed for first, second, _ in curves for run in (first, second)})
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    for first, second, curve in curves:
        left.plot(curve.alpha, curve.loss, marker=".", label=f"seed {first.seed} -> {second.seed}")
    left.set_yscale("log")
    left.set_xlabel("alpha: (1 - alpha) theta_first + alpha theta_second")
    left.set_ylabel("training loss (512 samples)")
    left.set_title("Loss on the line between two solutions")
    left.legend(fontsize=7, ncol=2)

    matrix = np.full((len(seeds), len(seeds)), np.nan)
    for first, second, curve in curves:
        i, j = seeds.index(first.seed), seeds.index(second.seed)
        matrix[i, j] = matrix[j, i] = curve.barrier_height
    np.fill_diagonal(matrix, 0.0)
    image = right.imshow(matrix, cmap="magma")
    figure.colorbar(image, ax=right, label="barrier height (loss)")
    middle = np.nanmax(matrix) / 2
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value < middle else "black"
        right.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=9)
    right.set_xticks(range(len(seeds)), [str(seed) for seed in seeds])
    right.set_yticks(range(len(seeds)), [str(seed) for seed in seeds])
    right.set_xlabel("seed")
    right.set_ylabel("seed")
    right.set_title("Barrier between the minima of two seeds")
    figure.tight_layout()
    return figure


def summarize(runs: list[Run]) -> Summary:
    """Build the table (one row per pair of seeds) and the interpolation figure."""
    if len(runs) < 2:
        raise ValueError(
            f"init_seeds needs at least 2 runs to interpolate between, found {len(runs)}: "
            "sweep over seeds (descend-train -m experiment=init_seeds)"
        )
    curves = pair_curves(runs)
    rows = []
    for first, second, curve in curves:
        rows.append(
            {
                "seed_first": first.seed,
                "seed_second": second.seed,
                "loss_first": float(curve.loss[0]),
                "loss_second": float(curve.loss[-1]),
                "loss_max": float(np.max(curve.loss)),
                "barrier_height": curve.barrier_height,
                "monotone": curve.monotone,
                "test_acc_first": first.last("test/acc"),
                "test_acc_second": second.last("test/acc"),
            }
        )
    return Summary(rows=rows, figures={"interpolation": plot_pair_curves(curves)})
