"""The landscape callback and command on real training runs."""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import ROOT, run_command
from omegaconf import OmegaConf

from descend.landscape import (
    Evaluator,
    load_landscape,
    make_eval_batches,
    random_plane_surface,
    trajectory_plane_surface,
)
from descend.landscape_cli import compute_from_checkpoint
from descend.train import train
from descend.utils.checkpoints import load_checkpoint, stored_run_config

# A model with dropout (draws from the global torch stream), BatchNorm (buffers) and momentum
# (optimizer state), so that any leak of the callback changes the trained weights.
SENSITIVE_RUN = (
    "model.net.dropout=0.2",
    "model.net.batch_norm=true",
    "model.optimizer.momentum=0.9",
    "trainer.max_epochs=3",
)
SMALL_LANDSCAPE = (
    # last.ckpt is a copy of the latest saved checkpoint; saving every epoch makes it the final
    # weights, which the landscapes are centred on.
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.landscape.grid_points=[7,5]",
    "callbacks.landscape.line_points=9",
    "callbacks.landscape.num_samples=128",
    "callbacks.landscape.batch_size=32",
    "callbacks.landscape.snapshot_every_n_steps=5",
)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def without_landscape(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    training_rows = []
    for row in rows:
        values = {k: v for k, v in row.items() if not k.startswith("landscape")}
        if any(v for k, v in values.items() if k not in ("epoch", "step")):
            training_rows.append(values)
    return training_rows


def rebuild_model(checkpoint_path: Path):
    checkpoint = load_checkpoint(checkpoint_path)
    run_cfg = stored_run_config(checkpoint, checkpoint_path)
    datamodule = hydra.utils.instantiate(run_cfg.data)
    datamodule.setup("fit")
    model = hydra.utils.instantiate(run_cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    return model, datamodule, run_cfg


@pytest.mark.slow
def test_callback_leaves_training_unchanged(make_config):
    plain_cfg = make_config(
        *SENSITIVE_RUN, "~callbacks.landscape", "callbacks.model_checkpoint.save_top_k=-1"
    )
    plain_metrics = train(plain_cfg)
    # Resolve now: the run directory interpolates the Hydra config of the latest make_config.
    plain_dir = Path(plain_cfg.paths.output_dir)
    watched_cfg = make_config(
        *SENSITIVE_RUN,
        *SMALL_LANDSCAPE,
        "callbacks.landscape.every_n_epochs=1",
        "callbacks.landscape.surfaces=[trajectory,random,interpolation,random_line]",
        "callbacks.landscape.bn_mode=recompute",
        "callbacks.landscape.num_bn_batches=2",
        "callbacks.landscape.save_figures=false",
    )
    watched_metrics = train(watched_cfg)
    watched_dir = Path(watched_cfg.paths.output_dir)
    assert watched_dir != plain_dir
    assert (watched_dir / "landscape" / "random_epoch001.npz").is_file(), "no mid-fit landscape"
    plain = torch.load(plain_dir / "checkpoints" / "last.ckpt", weights_only=False)
    watched = torch.load(watched_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert plain["global_step"] == watched["global_step"] == 3 * 23, "last.ckpt is not final"
    for key, value in plain["state_dict"].items():
        assert torch.equal(watched["state_dict"][key], value), f"{key} differs"
    plain_state = plain["optimizer_states"][0]["state"]
    watched_state = watched["optimizer_states"][0]["state"]
    for index, entry in plain_state.items():
        assert torch.equal(watched_state[index]["momentum_buffer"], entry["momentum_buffer"])

    assert without_landscape(read_metrics(watched_dir)) == without_landscape(
        read_metrics(plain_dir)
    )
    for key, value in plain_metrics.items():
        assert watched_metrics[key] == value, key


@pytest.mark.slow
def test_callback_outputs_match_recomputation(make_config):
    cfg = make_config(
        *SMALL_LANDSCAPE, "callbacks.landscape.surfaces=[trajectory,random,interpolation]"
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    landscape_dir = run_dir / "landscape"
    for name in (
        "trajectory_contour.png",
        "trajectory_surface.png",
        "random_contour.png",
        "interpolation.png",
        "trajectory_path.csv",
        "snapshots.npz",
    ):
        assert (landscape_dir / name).is_file(), f"{name} is missing"

    trajectory = load_landscape(landscape_dir / "trajectory.npz")
    random_plane = load_landscape(landscape_dir / "random.npz")
    assert random_plane.seed == 0
    assert random_plane.settings["num_samples"] == 128

    # The centre of both planes is the final model's eval-mode loss on the subset.
    model, datamodule, _ = rebuild_model(run_dir / "checkpoints" / "last.ckpt")
    inputs, targets = datamodule.splits["train"]
    batches = make_eval_batches(inputs, targets, 128, 32, seed=0)
    model.eval()
    with torch.no_grad():
        subset = torch.cat([b[0] for b in batches])
        expected = model.loss(model(subset), torch.cat([b[1] for b in batches])).item()
    assert trajectory.centre_loss() == pytest.approx(expected, rel=1e-5)
    assert random_plane.centre_loss() == pytest.approx(expected, rel=1e-5)

    # The logged scalars are those of the files.
    logged = [row for row in read_metrics(run_dir) if row["landscape/trajectory/centre_loss"]]
    assert len(logged) == 1
    assert float(logged[0]["landscape/trajectory/explained_variance_pc1"]) == pytest.approx(
        float(trajectory.explained_variance_ratio[0])
    )

    # The command recomputes the same random plane from the checkpoint.
    command_cfg = make_config(
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "surfaces=[random]",
        "grid_points=[7,5]",
        "num_samples=128",
        "batch_size=32",
        "save_figures=false",
        name="landscape",
        quiet=False,
    )
    summary = compute_from_checkpoint(command_cfg)
    recomputed = load_landscape(Path(command_cfg.output_dir) / "random.npz")
    np.testing.assert_allclose(recomputed.loss, random_plane.loss, rtol=1e-6)
    assert summary["landscape/random/centre_loss"] == pytest.approx(random_plane.centre_loss())


@pytest.mark.slow
def test_ddp_sim_gathers_single_process_surface(tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_command(
        [
            "descend-train",
            "trainer=ddp_sim",
            "trainer.max_epochs=2",
            "logger=csv",
            "~callbacks.rich_progress_bar",
            "~callbacks.model_summary",
            "extras.print_config=false",
            "seed=0",
            "test=false",
            *SMALL_LANDSCAPE,
            "callbacks.landscape.surfaces=[random,trajectory]",
            "callbacks.landscape.save_figures=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    model, datamodule, _ = rebuild_model(run_dir / "checkpoints" / "last.ckpt")
    inputs, targets = datamodule.splits["train"]
    batches = make_eval_batches(inputs, targets, 128, 32, seed=0)
    evaluator = Evaluator(model, model.loss, batches, distributed=False)

    gathered = load_landscape(run_dir / "landscape" / "random.npz")
    single = random_plane_surface(evaluator, seed=0, num_points=(7, 5))
    np.testing.assert_allclose(gathered.loss, single.loss, rtol=1e-6)
    np.testing.assert_allclose(gathered.accuracy, single.accuracy, rtol=0, atol=1e-12)

    with np.load(run_dir / "landscape" / "snapshots.npz") as data:
        snapshots, steps = torch.from_numpy(data["snapshots"]), data["steps"]
    gathered_path = load_landscape(run_dir / "landscape" / "trajectory.npz")
    single_path = trajectory_plane_surface(evaluator, snapshots, steps, (7, 5))
    np.testing.assert_allclose(gathered_path.loss, single_path.loss, rtol=1e-6)
    np.testing.assert_allclose(
        gathered_path.trajectory.true_loss, single_path.trajectory.true_loss, rtol=1e-6
    )

    # Only rank 0 logs: one row of landscape scalars.
    logged = [row for row in read_metrics(run_dir) if row.get("landscape/random/centre_loss")]
    assert len(logged) == 1
    assert OmegaConf.load(run_dir / "config.yaml").trainer.devices == 2
