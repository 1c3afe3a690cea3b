"""Benchmark: how early and how reliably the stationary phase of constant-lr SGD is detected.

Two synthetic problems with a computable onset of the stationary phase (the first step at
which the expected inner product of successive stochastic gradients is negative):

- streaming least squares, onset from the exact second-moment recursion;
- streaming logistic regression, onset from the Monte Carlo mean over independent replicates.

Over ``--seeds`` independent runs (vectorised with torch), it compares the false-alarm rate
(a verdict before the onset) and the median detection delay (verdict step - onset, over runs
without a false alarm) of

- ``PflugDetector`` with its default window (100) and with window 50, and the classical
  sum-since-start sign rule;
- Lightning's ``EarlyStopping`` on the training loss averaged over "epochs" of ``--epoch-steps``
  steps, with its usual settings (patience 3, min_delta 0) and with the smallest patience whose
  false-alarm rate does not exceed the Pflug detector's (tuned to the same false-alarm rate).

Run: ``PYTHONPATH=src python bench/convergence.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import EarlyStopping

from descend.convergence import PflugDetector
from descend.convergence.synthetic import (
    SGDTrace,
    least_squares_expected_inner_product,
    least_squares_sgd,
    logistic_regression_sgd,
    onset_step,
)

log = logging.getLogger("bench.convergence")


@dataclass
class Outcome:
    name: str
    false_alarm_rate: float
    median_delay: float
    no_verdict_rate: float


def summarise(name: str, verdict_steps: list[int], onset: int) -> Outcome:
    """Turn per-run verdict steps (-1: none) into the false-alarm rate and median delay."""
    runs = len(verdict_steps)
    false_alarms = sum(1 for step in verdict_steps if 0 < step < onset)
    delays = [step - onset for step in verdict_steps if step >= onset]
    median_delay = statistics.median(delays) if delays else math.nan
    no_verdict = verdict_steps.count(-1)
    return Outcome(name, false_alarms / runs, median_delay, no_verdict / runs)


def pflug_verdicts(trace: SGDTrace, **detector_args) -> list[int]:
    verdicts = []
    for run in trace.inner_product.tolist():
        detector = PflugDetector(**detector_args)
        verdict = -1
        for step, inner_product in enumerate(run, start=1):
            if detector.update(step, inner_product) is not None:
                verdict = step
                break
        verdicts.append(verdict)
    return verdicts


def early_stopping_verdicts(trace: SGDTrace, epoch_steps: int, patience: int) -> list[int]:
    """Apply Lightning's EarlyStopping rule to the epoch-mean training loss of each run."""
    runs, steps = trace.loss.shape
    epochs = steps // epoch_steps
    epoch_losses = trace.loss[:, : epochs * epoch_steps].reshape(runs, epochs, epoch_steps).mean(2)
    verdicts = []
    for run in epoch_losses:
        # NOTE: _evaluate_stopping_criteria is the private method EarlyStopping calls at each
        # check (Lightning 2.6); calling it keeps Lightning's own comparison and patience logic.
        early_stopping = EarlyStopping(
            monitor="train/loss", mode="min", patience=patience, min_delta=0.0
        )
        verdict = -1
        for epoch, loss in enumerate(run):
            should_stop, _ = early_stopping._evaluate_stopping_criteria(loss.reshape(()))
            if should_stop:
                verdict = (epoch + 1) * epoch_steps
                break
        verdicts.append(verdict)
    return verdicts


def compare(trace: SGDTrace, onset: int, epoch_steps: int, max_patience: int) -> list[Outcome]:
    pflug = summarise("PflugDetector (window 100, level 0.05)", pflug_verdicts(trace), onset)
    short_window = summarise(
        "PflugDetector (window 50, level 0.05)", pflug_verdicts(trace, window=50), onset
    )
    classical = summarise(
        "Pflug sum since start, S_n < 0", pflug_verdicts(trace, window=None, level=0.5), onset
    )
    usual = summarise(
        "EarlyStopping(patience=3)", early_stopping_verdicts(trace, epoch_steps, 3), onset
    )
    tuned = None
    for patience in range(1, max_patience + 1):
        candidate = summarise(
            f"EarlyStopping(patience={patience}), tuned",
            early_stopping_verdicts(trace, epoch_steps, patience),
            onset,
        )
        if candidate.false_alarm_rate <= pflug.false_alarm_rate:
            tuned = candidate
            break
    outcomes = [pflug, short_window, classical, usual]
    if tuned is None:
        log.warning(
            "No patience up to %d reaches the Pflug detector's false-alarm rate", max_patience
        )
    else:
        outcomes.append(tuned)
    return outcomes


def monte_carlo_onset(trace: SGDTrace, smoothing: int = 21) -> int:
    """Onset from the replicate mean of the inner products, smoothed over ``smoothing`` steps."""
    mean = trace.inner_product[:, 1:].mean(dim=0).view(1, 1, -1)
    smoothed = torch.nn.functional.avg_pool1d(
        mean, smoothing, stride=1, padding=smoothing // 2, count_include_pad=False
    ).view(-1)
    return onset_step(torch.cat([torch.tensor([math.nan], dtype=smoothed.dtype), smoothed]))


def least_squares_problem(
    args: argparse.Namespace, generator: torch.Generator
) -> tuple[SGDTrace, int]:
    curvatures = torch.tensor([1.0, 0.8, 0.6, 0.4])
    initial_error = torch.full((4,), 10.0)
    settings = dict(noise_std=1.0, batch_size=4, lr=0.1, steps=args.steps)
    expected = least_squares_expected_inner_product(curvatures, initial_error, **settings)
    trace = least_squares_sgd(
        curvatures, initial_error, **settings, seeds=args.seeds, generator=generator
    )
    return trace, onset_step(expected)


def logistic_problem(args: argparse.Namespace, generator: torch.Generator) -> tuple[SGDTrace, int]:
    true_weights = torch.tensor([2.0, -1.5, 1.0, 0.5])
    initial_weights = -1.5 * true_weights
    settings = dict(batch_size=8, lr=0.2, steps=args.steps)
    replicates = logistic_regression_sgd(
        true_weights, initial_weights, **settings, seeds=args.onset_replicates, generator=generator
    )
    trace = logistic_regression_sgd(
        true_weights, initial_weights, **settings, seeds=args.seeds, generator=generator
    )
    return trace, monte_carlo_onset(replicates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="independent SGD runs per problem")
    parser.add_argument("--steps", type=int, default=1500, help="SGD steps per run")
    parser.add_argument("--epoch-steps", type=int, default=20, help="steps per EarlyStopping check")
    parser.add_argument(
        "--max-patience", type=int, default=30, help="largest patience tried when tuning"
    )
    parser.add_argument(
        "--onset-replicates", type=int, default=2000, help="runs averaged for the logistic onset"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    problems = {
        "least squares (d=4, batch 4, lr 0.1)": least_squares_problem,
        "logistic regression (d=4, batch 8, lr 0.2)": logistic_problem,
    }
    for title, build in problems.items():
        trace, onset = build(args, generator)
        log.info(
            "\n%s: onset at step %d, %d runs of %d steps", title, onset, args.seeds, args.steps
        )
        log.info("| detector | false alarms | median delay (steps) | no verdict |")
        log.info("|---|---|---|---|")
        for outcome in compare(trace, onset, args.epoch_steps, args.max_patience):
            log.info(
                "| %s | %.1f%% | %s | %.1f%% |",
                outcome.name,
                100 * outcome.false_alarm_rate,
                "none" if math.isnan(outcome.median_delay) else f"{outcome.median_delay:.0f}",
                100 * outcome.no_verdict_rate,
            )
    log.info("\nTotal time: %.1f s", time.perf_counter() - start)


if __name__ == "__main__":
    main()
