"""The console scripts as a user runs them: W&B offline runs, multiruns, DDP, bad overrides."""

import json
import math
import subprocess

import pytest
from conftest import ROOT, VENV_BIN, run_command
from wandb_records import find_run_files, run_contents

from descend.landscape import load_landscape

pytestmark = pytest.mark.slow

QUICK = ("trainer.max_epochs=1", "extras.print_config=false", "~callbacks.rich_progress_bar")


def test_train_without_credentials_writes_wandb_offline_run(tmp_path):
    # No WANDB_MODE, no API key and a home without ~/.netrc: the logger must pick offline mode
    # by itself, without a login prompt (stdin is closed, so a prompt would fail the run).
    run_dir = tmp_path / "run"
    result = run_command(
        ["descend-train", *QUICK, "seed=5", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path), "NETRC": None},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test accuracy:" in result.stdout + result.stderr

    run_files = find_run_files(run_dir)
    assert len(run_files) == 1
    contents = run_contents(run_files[0])
    assert contents["config"]["seed"] == 5
    assert contents["config"]["model"]["optimizer"]["lr"] == 0.1
    results = json.loads((run_dir / "results.json").read_text())
    assert contents["summary"]["test/acc"] == pytest.approx(results["metrics"]["test/acc"])
    logged_steps = [
        row["trainer/global_step"] for row in contents["history"] if "train/loss" in row
    ]
    # log_every_n_steps=10 over 23 steps logs after steps 10 and 20 (global_step 9 and 19).
    assert logged_steps == [9, 19]

    # What the default callbacks send to W&B: gradient norms, detector statistics, and the
    # landscape figures, curve tables and scalars that match the files of the run directory.
    logged = {key: value for row in contents["history"] for key, value in row.items()}
    assert "grad_norm/total" in logged
    assert "convergence/grad_norm" in logged
    for figure in ("trajectory_contour", "trajectory_surface", "interpolation"):
        assert logged[f"landscape/{figure}._type"] == "images/separated"
        assert (run_dir / "landscape" / f"{figure}.png").is_file()
    plane = load_landscape(run_dir / "landscape" / "trajectory.npz")
    assert logged["landscape/trajectory/explained_variance_pc1"] == pytest.approx(
        float(plane.explained_variance_ratio[0])
    )
    curve = load_landscape(run_dir / "landscape" / "interpolation.npz")
    assert logged["landscape/interpolation_curve_table.nrows"] == len(curve.alpha)


def test_concurrent_runs_get_distinct_directories(tmp_path):
    overrides = [*QUICK, "logger=csv", "trainer.max_steps=2", "test=false"]
    command = [str(VENV_BIN / "descend-train"), *overrides]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr.decode()[-3000:]
    run_dirs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        assert (run_dir / "results.json").is_file()


def test_multirun_directory_and_wandb_run_per_job(tmp_path):
    result = run_command(
        ["descend-train", "-m", *QUICK, "trainer.max_steps=3", "test=false", "seed=1,2,3"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    job_dirs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in job_dirs] == ["0", "1", "2"]

    seeds, run_ids = [], []
    for job_dir in job_dirs:
        run_files = find_run_files(job_dir)
        assert len(run_files) == 1
        contents = run_contents(run_files[0])
        seeds.append(contents["config"]["seed"])
        run_ids.append(contents["run_id"])
        assert json.loads((job_dir / "results.json").read_text())["seed"] == seeds[-1]
    assert seeds == [1, 2, 3]
    assert len(set(run_ids)) == 3


def test_ddp_sim_one_directory_one_wandb_run(tmp_path):
    result = run_command(
        ["descend-train", "trainer=ddp_sim", *QUICK, "trainer.max_epochs=2"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 1
    assert len(find_run_files(run_dirs[0])) == 1

    # Each of the 2 ranks gets ceil(1437 / 2) = 719 samples: ceil(719 / 64) = 12 steps an epoch.
    steps_per_epoch = math.ceil(math.ceil(1437 / 2) / 64)
    results = json.loads((run_dirs[0] / "results.json").read_text())
    assert results["global_step"] == 2 * steps_per_epoch


def test_misspelled_override_fails_before_training(tmp_path):
    result = run_command(["descend-train", "trainer.max_epoch=1"], cwd=tmp_path)
    assert result.returncode != 0
    assert "trainer.max_epoch" in result.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.ckpt"))


def test_make_eval_reports_training_metrics(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_command(
        ["descend-train", *QUICK, "logger=csv", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())

    evaluated = run_command(
        [
            "descend-eval",
            f"ckpt_path={results['best_checkpoint']}",
            "extras.print_config=false",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    eval_results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert eval_results["metrics"]["test/acc"] == results["metrics"]["test/acc"]


def test_make_help_lists_targets():
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True)
    for target in ("train", "test", "test-fast", "eval", "lint", "format", "sync", "clean"):
        assert f" {target} " in result.stdout or f"{target} " in result.stdout
