"""Analyses and figures of the experiments in ``configs/experiment/``, read from finished runs."""

from descend.experiments.runs import Run, experiment_name, find_runs, load_run

__all__ = ["Run", "experiment_name", "find_runs", "load_run"]
