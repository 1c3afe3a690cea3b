"""GradNormMonitor under trainer=ddp_sim (2 CPU processes over gloo), against plain torch."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from conftest import ROOT, compose_config, run_command
from hydra.utils import instantiate

from descend.data.tensor_batches import TensorBatchLoader
from descend.gradients import estimate_noise_scale

pytestmark = pytest.mark.slow

MAX_STEPS = 2


def test_ddp_norm_is_all_reduced_and_logged_once(tmp_path):
    run_dir = tmp_path / "run"
    probe_dir = tmp_path / "probe"
    overrides = [
        "trainer=ddp_sim",
        "logger=csv",
        "extras.print_config=false",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        "~callbacks.model_checkpoint",
        "test=false",
        "seed=0",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.log_every_n_steps=1",
        "callbacks.grad_norm.noise_scale_ema=0.0",
        "+callbacks.probe._target_=grad_norm_probe.GradNormProbe",
        f"+callbacks.probe.out_dir={probe_dir}",
    ]
    python_path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    result = run_command(
        ["descend-train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={"PYTHONPATH": python_path},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(probe_dir / f"rank{r}.pt") for r in range(2)]
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("grad_norm/total")]

    # Logged once per optimizer step (only rank 0 writes), at steps 0 and 1.
    assert [int(row["step"]) for row in rows] == list(range(MAX_STEPS))

    # Direct computation of step 0: each rank's first batch of its shard, at the initial weights.
    cfg = compose_config("train", tmp_path / "expected", ["seed=0"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model.net)
    net.load_state_dict(ranks[0]["initial_state"])
    loss_fn = torch.nn.CrossEntropyLoss()
    rank_grads = []
    for rank in range(2):
        loader = TensorBatchLoader(
            datamodule.splits["train"], batch_size=64, shuffle=True, seed=0, rank=rank, world_size=2
        )
        inputs, targets = next(iter(loader))
        net.zero_grad()
        loss_fn(net(inputs), targets).backward()
        rank_grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    all_reduced = (rank_grads[0] + rank_grads[1]) / 2

    expected_norm = all_reduced.norm().item()
    assert float(rows[0]["grad_norm/total"]) == pytest.approx(expected_norm, rel=1e-5)
    # Both ranks hold the same all-reduced gradient, so last_total_norm agrees exactly.
    assert ranks[0]["total_norms"] == ranks[1]["total_norms"]
    assert ranks[0]["total_norms"][0] == pytest.approx(expected_norm, rel=1e-5)

    # Noise scale: per-rank batches (B = 64) against the all-reduced gradient (B = 128).
    small_sq = (rank_grads[0].square().sum() + rank_grads[1].square().sum()) / 2
    grad_sq, trace_sigma = estimate_noise_scale(small_sq, all_reduced.square().sum(), 64, 128)
    assert float(rows[0]["noise_scale/grad_sq"]) == pytest.approx(grad_sq.item(), rel=1e-4)
    assert float(rows[0]["noise_scale/trace_sigma"]) == pytest.approx(trace_sigma.item(), rel=1e-4)
    expected_b_simple = (trace_sigma / grad_sq).item()
    assert float(rows[0]["noise_scale/b_simple"]) == pytest.approx(expected_b_simple, rel=1e-4)
