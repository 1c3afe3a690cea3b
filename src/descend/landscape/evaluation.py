"""Loss and accuracy of a model at many points of parameter space.

Two ways to evaluate a set of points, both with the model in eval mode and without autograd:

* ``vmap``: ``torch.func.functional_call`` under ``torch.func.vmap`` over a chunk of stacked
  parameter sets, so one forward pass serves ``chunk_size`` points. The model's own tensors are
  never written.
* ``loop``: copy each point's weights into the model and run it; the weights, buffers and
  flags are restored bit for bit afterwards.

``method="auto"`` times both on the first points and keeps the faster one for that model shape,
device and batch shape (the choice is cached for the process). On a CPU it also tries one
intra-op thread, and restores ``torch.get_num_threads()`` afterwards.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from descend.landscape.parameters import ParameterSpace
from descend.landscape.state import preserved_model_state

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
# Maps a 1-D tensor of point indices to the flat weights of those points, [len(indices), size].
WeightSource = Callable[[torch.Tensor], torch.Tensor]

_METHOD_CACHE: dict[tuple, tuple[str, int | None]] = {}
METHODS = ("auto", "vmap", "loop")


class BatchNormMode(str, Enum):
    """Statistics used by BatchNorm layers at each point.

    ``trained``: the running statistics of the trained model, unchanged. ``recompute``: reset
    and re-estimated at every point from ``bn_batches`` (cumulative average, train mode), which
    forces the ``loop`` method and costs ``len(bn_batches)`` extra forward passes per point.
    """

    TRAINED = "trained"
    RECOMPUTE = "recompute"


@dataclass(frozen=True)
class PointMetrics:
    """Per-point results, each an array of shape ``[num_points]``.

    ``loss`` is the sample-weighted mean of the per-batch losses (the loss over all evaluation
    samples for a mean-reduced loss). ``standard_error`` is the standard error of that mean
    estimated from the spread of the per-batch losses (NaN with a single batch). ``accuracy`` is
    the share of samples whose arg-max output equals the integer target (NaN for floating point
    targets).
    """

    loss: np.ndarray
    accuracy: np.ndarray
    standard_error: np.ndarray


def make_eval_batches(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_samples: int | None,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[Batch]:
    """Return a fixed evaluation subset, moved to ``device`` once and cut into batches.

    The subset is ``num_samples`` samples drawn without replacement by a private generator
    seeded with ``seed`` (all samples, in a seeded order, for ``None`` or a larger number).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} is invalid: it must be a positive integer")
    total = inputs.shape[0]
    if num_samples is not None and num_samples <= 0:
        raise ValueError(
            f"num_samples={num_samples} is invalid: it must be a positive integer or null for "
            f"all {total} samples"
        )
    count = total if num_samples is None else min(num_samples, total)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=generator)[:count]
    subset_inputs = inputs.detach().cpu()[chosen].to(device)
    subset_targets = targets.detach().cpu()[chosen].to(device)
    return list(zip(subset_inputs.split(batch_size), subset_targets.split(batch_size), strict=True))


def plane_weights(
    origin: torch.Tensor, directions: torch.Tensor, coefficients: torch.Tensor
) -> WeightSource:
    """Weights ``origin + coefficients[i] @ directions`` for point ``i``.

    ``directions`` is ``[k, size]`` and ``coefficients`` ``[num_points, k]``.
    """

    def weights(indices: torch.Tensor) -> torch.Tensor:
        chunk = coefficients[indices.to(coefficients.device)].to(directions)
        return torch.addmm(origin.unsqueeze(0), chunk, directions)

    return weights


def stacked_weights(vectors: torch.Tensor, device: torch.device | str) -> WeightSource:
    """Weights ``vectors[i]`` for point ``i`` (``vectors`` may stay on the CPU)."""

    def weights(indices: torch.Tensor) -> torch.Tensor:
        return vectors[indices.to(vectors.device)].to(device, torch.float32)

    return weights


def evaluate_points(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Sequence[Batch],
    weights: WeightSource,
    num_points: int,
    method: str = "auto",
    chunk_size: int = 32,
    bn_mode: str | BatchNormMode = BatchNormMode.TRAINED,
    bn_batches: Sequence[Batch] = (),
    samples_per_forward: int = 512,
) -> PointMetrics:
    """Evaluate ``loss_fn(model(x), y)`` over ``batches`` at ``num_points`` weight vectors.

    The model is left exactly as it was: parameters, buffers, ``training`` and
    ``requires_grad`` flags. Consecutive batches are concatenated into forward passes of up to
    ``samples_per_forward`` samples, and ``vmap`` evaluates ``chunk_size`` points per pass, so
    its activation memory is about ``chunk_size * samples_per_forward`` samples' worth.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: use one of {METHODS}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size} is invalid: it must be a positive integer")
    if not batches:
        raise ValueError("batches is empty: pass at least one (inputs, targets) batch")
    bn_mode = BatchNormMode(bn_mode)
    if bn_mode is BatchNormMode.RECOMPUTE and not bn_batches:
        raise ValueError(
            "bn_mode='recompute' needs bn_batches: pass the training batches to re-estimate "
            "the BatchNorm statistics from"
        )
    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    if bn_mode is BatchNormMode.RECOMPUTE and has_bn:
        method = "loop"

    if samples_per_forward <= 0:
        raise ValueError(
            f"samples_per_forward={samples_per_forward} is invalid: it must be a positive integer"
        )
    space = ParameterSpace.of(model)
    groups = _group_batches(batches, samples_per_forward, loss_fn)
    sizes = torch.tensor([len(targets) for _, targets in batches], dtype=torch.float64)
    losses = torch.empty(num_points, len(batches), dtype=torch.float64)
    correct = torch.zeros(num_points, dtype=torch.float64)
    classification = not batches[0][1].is_floating_point()
    recompute = bn_batches if bn_mode is BatchNormMode.RECOMPUTE and has_bn else ()

    with preserved_model_state(model), torch.no_grad():
        model.eval()
        threads = None
        if method == "auto":
            method, threads = _choose_method(
                model, space, loss_fn, groups, weights, num_points, chunk_size
            )
        with _intra_op_threads(threads):
            for first in range(0, num_points, chunk_size):
                indices = torch.arange(first, min(first + chunk_size, num_points))
                if method == "vmap":
                    chunk_losses, chunk_correct = _evaluate_vmap(
                        model, space, loss_fn, groups, weights(indices)
                    )
                else:
                    chunk_losses, chunk_correct = _evaluate_loop(
                        model, space, loss_fn, groups, weights(indices), recompute
                    )
                losses[indices] = chunk_losses
                correct[indices] = chunk_correct

    return _summarise(losses, correct, sizes, classification)


def _summarise(
    losses: torch.Tensor, correct: torch.Tensor, sizes: torch.Tensor, classification: bool
) -> PointMetrics:
    shares = sizes / sizes.sum()
    mean = losses @ shares
    num_batches = len(sizes)
    if num_batches > 1:
        spread = ((losses - mean.unsqueeze(1)) ** 2) @ (shares**2)
        standard_error = torch.sqrt(spread * num_batches / (num_batches - 1))
    else:
        standard_error = torch.full_like(mean, float("nan"))
    if classification:
        accuracy = correct / sizes.sum()
    else:
        accuracy = torch.full_like(mean, float("nan"))
    return PointMetrics(mean.numpy(), accuracy.numpy(), standard_error.numpy())


def _count_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.is_floating_point() or outputs.ndim < 2:
        return torch.zeros((), device=outputs.device)
    return (outputs.argmax(dim=-1) == targets).sum()


# Losses whose mean reduction is the plain mean of their unreduced values, so per-batch means
# can be computed from one unreduced call per forward pass (class weights excluded).
_ELEMENTWISE_LOSSES = (
    nn.CrossEntropyLoss,
    nn.NLLLoss,
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)


@dataclass(frozen=True)
class _ForwardGroup:
    """Consecutive evaluation batches concatenated into one forward pass.

    ``slices`` contains each batch's ``(start, end, targets)`` within the outputs. With
    ``sample_loss`` (the loss without reduction), the per-batch means come from one call and
    the matrix ``batch_means`` ``[samples, batches]`` (entries ``1 / batch size``).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    slices: tuple[tuple[int, int, torch.Tensor], ...]
    sample_loss: Callable | None
    batch_means: torch.Tensor | None


def _group_batches(
    batches: Sequence[Batch], samples_per_forward: int, loss_fn: Callable
) -> list[_ForwardGroup]:
    """Concatenate batches into forward passes of at most ``samples_per_forward`` samples (a
    larger batch stays alone). Valid because the model is in eval mode, where no layer mixes
    samples."""
    groups, pending, count = [], [], 0
    for batch in batches:
        if pending and count + len(batch[1]) > samples_per_forward:
            groups.append(_make_group(pending, loss_fn))
            pending, count = [], 0
        pending.append(batch)
        count += len(batch[1])
    groups.append(_make_group(pending, loss_fn))
    return groups


def _make_group(batches: Sequence[Batch], loss_fn: Callable) -> _ForwardGroup:
    slices, start = [], 0
    for _, targets in batches:
        slices.append((start, start + len(targets), targets))
        start += len(targets)
    targets = torch.cat([t for _, t in batches])

    sample_loss = _unreduced(loss_fn, targets)
    batch_means = None
    if sample_loss is not None:
        batch_means = torch.zeros(start, len(slices), device=targets.device)
        for column, (first, last, _) in enumerate(slices):
            batch_means[first:last, column] = 1.0 / (last - first)
    inputs = torch.cat([inputs for inputs, _ in batches])
    return _ForwardGroup(inputs, targets, tuple(slices), sample_loss, batch_means)


def _unreduced(loss_fn: Callable, targets: torch.Tensor) -> Callable | None:
    """Return a copy of ``loss_fn`` with ``reduction="none"`` when its mean is the plain mean
    of those values for these targets, else ``None``."""
    if type(loss_fn) not in _ELEMENTWISE_LOSSES or loss_fn.reduction != "mean":
        return None
    if getattr(loss_fn, "weight", None) is not None:
        return None
    ignore_index = getattr(loss_fn, "ignore_index", None)
    if ignore_index is not None and bool((targets == ignore_index).any()):
        return None
    unreduced = copy.copy(loss_fn)
    unreduced.reduction = "none"
    return unreduced


def _point_outputs(loss_fn, outputs: torch.Tensor, group: _ForwardGroup):
    """Return what one point needs kept from a forward pass of ``group``.

    With an unreduced loss these are the per-sample losses and the predicted classes (a
    placeholder zero for outputs that are not class scores), reduced for a whole chunk of points at once by
    :func:`_reduce_group`. Otherwise they are the per-batch losses and the number of correct
    predictions.
    """
    classification = not group.targets.is_floating_point() and outputs.ndim >= 2
    if group.sample_loss is not None:
        per_sample = group.sample_loss(outputs, group.targets)
        if classification:
            return per_sample, outputs.argmax(dim=-1)
        return per_sample, outputs.new_zeros(())
    losses = [loss_fn(outputs[start:end], targets) for start, end, targets in group.slices]
    return torch.stack(losses), _count_correct(outputs, group.targets)


def _reduce_group(group: _ForwardGroup, first: torch.Tensor, second: torch.Tensor):
    """Turn the stacked outputs of :func:`_point_outputs` (leading dimension: points) into
    per-batch losses ``[points, batches]`` and correct counts ``[points]``."""
    if group.sample_loss is None:
        return first, second
    per_sample = first.reshape(first.shape[0], first.shape[1], -1).mean(dim=2)
    if second.ndim == 2:
        correct = (second == group.targets).sum(dim=1)
    else:
        correct = torch.zeros_like(second)
    return per_sample @ group.batch_means, correct


def _evaluate_vmap(model, space, loss_fn, groups, flat_weights):
    buffers = dict(model.named_buffers())
    parameters = space.unflatten(flat_weights)
    losses, correct = [], 0
    for group in groups:

        def point(point_parameters, group=group):
            outputs = torch.func.functional_call(
                model, (point_parameters, buffers), (group.inputs,)
            )
            return _point_outputs(loss_fn, outputs, group)

        group_losses, group_correct = _reduce_group(group, *torch.func.vmap(point)(parameters))
        losses.append(group_losses.double().cpu())
        correct = correct + group_correct.double().cpu()
    return torch.cat(losses, dim=1), correct


def _evaluate_loop(model, space, loss_fn, groups, flat_weights, bn_batches):
    # Per-point work is limited to the forward pass, because small operations dominate the
    # time. Losses and predictions are computed once per chunk.
    parameters = [dict(model.named_parameters())[name] for name in space.names]
    per_parameter = [values.unbind(0) for values in space.unflatten(flat_weights).values()]
    kept: list[list] = [[] for _ in groups]
    for point_values in zip(*per_parameter, strict=True):
        torch._foreach_copy_(parameters, list(point_values))
        if bn_batches:
            _reestimate_batch_norm(model, bn_batches)
        for group, outputs in zip(groups, kept, strict=True):
            point_outputs = model(group.inputs)
            if group.sample_loss is None:
                point_outputs = _point_outputs(loss_fn, point_outputs, group)
            outputs.append(point_outputs)

    losses, correct = [], 0
    for group, outputs in zip(groups, kept, strict=True):
        if group.sample_loss is None:
            first = torch.stack([item[0] for item in outputs])
            second = torch.stack([item[1] for item in outputs])
        else:
            # With an unreduced loss, the loss and the predictions of all points of the chunk
            # come from one call each on the stacked outputs.
            first, second = _chunk_outputs(group, torch.stack(outputs))
        group_losses, group_correct = _reduce_group(group, first, second)
        losses.append(group_losses.double().cpu())
        correct = correct + group_correct.double().cpu()
    return torch.cat(losses, dim=1), correct


def _chunk_outputs(group: _ForwardGroup, stacked: torch.Tensor):
    """Return :func:`_point_outputs` for a ``[points, samples, ...]`` stack of model outputs,
    computed for all points at once (``group.sample_loss`` must be set)."""
    points, samples = stacked.shape[:2]
    flat = stacked.reshape(points * samples, *stacked.shape[2:])
    targets = group.targets.repeat(points, *([1] * (group.targets.ndim - 1)))
    per_sample = group.sample_loss(flat, targets)
    per_sample = per_sample.reshape(points, samples, *per_sample.shape[1:])
    if not group.targets.is_floating_point() and stacked.ndim >= 3:
        return per_sample, stacked.argmax(dim=-1)
    return per_sample, stacked.new_zeros(points)


def _reestimate_batch_norm(model: nn.Module, bn_batches: Sequence[Batch]) -> None:
    """Replace every BatchNorm layer's running statistics by their cumulative average over
    ``bn_batches`` at the current weights (momentum ``None``), then return to eval mode."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    for inputs, _ in bn_batches:
        model(inputs)
    for layer in layers:
        layer.eval()


def _choose_method(model, space, loss_fn, groups, weights, num_points, chunk_size):
    """Time vmap and the loop on the first points; return the faster method and thread count.

    On a CPU both are also timed with one intra-op thread: small per-point operations often
    run faster without the thread pool's synchronisation, above all on a busy machine.
    """
    device = next(model.parameters()).device
    key = (
        type(model),
        space.shapes,
        device.type,
        tuple(g.inputs.shape for g in groups),
        chunk_size,
    )
    if key in _METHOD_CACHE:
        return _METHOD_CACHE[key]

    flat = weights(torch.arange(min(chunk_size, num_points)))
    probe = flat[: min(8, len(flat))]
    thread_options: list[int | None] = [None]
    if device.type == "cpu" and torch.get_num_threads() > 1:
        thread_options.append(1)

    seconds_per_point: dict[tuple[str, int | None], float] = {}
    vmap_works = True
    for threads in thread_options:
        with _intra_op_threads(threads):
            if vmap_works:
                try:
                    # The first vmapped call pays a one-off set-up cost (about 0.3 s on a
                    # CPU), which would bias the timing against vmap.
                    _evaluate_vmap(model, space, loss_fn, groups[:1], flat[:1])
                    seconds_per_point["vmap", threads] = _time_per_point(
                        device, len(flat), _evaluate_vmap, model, space, loss_fn, groups, flat
                    )
                except Exception as error:  # noqa: BLE001 - any failure rules out vmap
                    log.info("vmap evaluation failed (%s: %s)", type(error).__name__, error)
                    vmap_works = False
            _evaluate_loop(model, space, loss_fn, groups[:1], probe[:1], ())
            seconds_per_point["loop", threads] = _time_per_point(
                device, len(probe), _evaluate_loop, model, space, loss_fn, groups, probe, ()
            )

    choice = min(seconds_per_point, key=seconds_per_point.get)
    log.info(
        "Landscape evaluation on %s, ms per point: %s; using %s with %s",
        device.type,
        ", ".join(
            f"{method} ({threads or torch.get_num_threads()} threads) {seconds * 1e3:.2f}"
            for (method, threads), seconds in seconds_per_point.items()
        ),
        choice[0],
        f"{choice[1]} thread" if choice[1] else "the default threads",
    )
    _METHOD_CACHE[key] = choice
    return choice


def _time_per_point(device, count, function, *args) -> float:
    _synchronize(device)
    started = time.perf_counter()
    function(*args)
    _synchronize(device)
    return (time.perf_counter() - started) / count


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads (``None``: unchanged), then restore."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Evaluator:
    """A model, a loss, a fixed evaluation subset and how to evaluate points on it.

    With ``distributed=True`` and an initialised ``torch.distributed`` process group, each rank
    evaluates the points ``rank, rank + world_size, ...`` and the results are gathered on every
    rank (``all_gather_object``), so all ranks return the full result.
    """

    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Sequence[Batch]
    method: str = "auto"
    chunk_size: int = 32
    bn_mode: str | BatchNormMode = BatchNormMode.TRAINED
    bn_batches: Sequence[Batch] = ()
    distributed: bool = True
    samples_per_forward: int = 512

    def __call__(self, weights: WeightSource, num_points: int) -> PointMetrics:
        rank, world_size = _distribution() if self.distributed else (0, 1)
        if world_size == 1:
            return self._evaluate(weights, num_points)

        own = torch.arange(rank, num_points, world_size)
        part = self._evaluate(lambda indices: weights(own[indices]), len(own))
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, (own.numpy(), part))

        merged = {name: np.empty(num_points) for name in ("loss", "accuracy", "standard_error")}
        for indices, metrics in gathered:
            for name, array in merged.items():
                array[indices] = getattr(metrics, name)
        return PointMetrics(**merged)

    def _evaluate(self, weights: WeightSource, num_points: int) -> PointMetrics:
        if num_points == 0:
            return PointMetrics(np.empty(0), np.empty(0), np.empty(0))
        return evaluate_points(
            self.model,
            self.loss_fn,
            self.batches,
            weights,
            num_points,
            method=self.method,
            chunk_size=self.chunk_size,
            bn_mode=self.bn_mode,
            bn_batches=self.bn_batches,
            samples_per_forward=self.samples_per_forward,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def settings(self) -> dict:
        """Return the evaluation settings stored with every result."""
        return {
            "num_samples": int(sum(len(targets) for _, targets in self.batches)),
            "num_batches": len(self.batches),
            "bn_mode": BatchNormMode(self.bn_mode).value,
            "num_bn_batches": len(self.bn_batches),
        }


def _distribution() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
