"""Reading finished runs and choosing their report, on hand-made run directories."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from descend.experiments.runs import experiment_name, find_runs, load_run
from descend.report import build_summary, markdown_table


def make_run(path, tags, batch_size=64, accumulate=1, metrics_csv=None):
    path.mkdir(parents=True)
    config = {
        "seed": 0,
        "tags": tags,
        "data": {"batch_size": batch_size},
        "trainer": {"accumulate_grad_batches": accumulate},
    }
    OmegaConf.save(OmegaConf.create(config), path / "config.yaml")
    if metrics_csv is not None:
        (path / "csv" / "version_0").mkdir(parents=True)
        (path / "csv" / "version_0" / "metrics.csv").write_text(metrics_csv)
    return path


def test_runs_sorted_in_job_order(tmp_path):
    for job in (10, 2, 1):
        make_run(tmp_path / str(job), ["lr_sweep"])

    assert [run.path.name for run in find_runs(tmp_path)] == ["1", "2", "10"]


def test_metrics_csv_read_by_key(tmp_path):
    metrics = "epoch,step,train/loss,val/loss\n0,0,2.5,\n0,1,2.25,\n0,1,,2.0\n"
    run = load_run(make_run(tmp_path / "0", ["x"], metrics_csv=metrics))

    assert run.series("train/loss") == ([0, 1], [2.5, 2.25])
    assert run.last("val/loss") == 2.0
    assert run.last("test/loss") != run.last("test/loss"), "a missing key reads as NaN"


def test_batch_size_counts_accumulation(tmp_path):
    run = load_run(make_run(tmp_path / "0", ["x"], batch_size=32, accumulate=2))

    assert run.batch_size == 64


def test_experiment_name_from_tags(tmp_path):
    run = load_run(make_run(tmp_path / "0", ["digits", "init_seeds"]))

    assert experiment_name(run) == "init_seeds"


def test_mixed_experiments_rejected(tmp_path):
    make_run(tmp_path / "0", ["lr_sweep"])
    make_run(tmp_path / "1", ["init_seeds"])

    with pytest.raises(ValueError, match="several experiments"):
        build_summary(find_runs(tmp_path))


def test_unknown_experiment_rejected(tmp_path):
    make_run(tmp_path / "0", ["digits"])

    with pytest.raises(ValueError, match="no report exists for experiment=None"):
        build_summary(find_runs(tmp_path))


def test_markdown_table_fills_missing_cells():
    table = markdown_table([{"lr": 0.1, "verdict": "diverged"}, {"lr": 1.0, "extra": float("nan")}])

    assert table.splitlines() == [
        "| lr | verdict | extra |",
        "| --- | --- | --- |",
        "| 0.1 | diverged |  |",
        "| 1 |  | n/a |",
    ]
