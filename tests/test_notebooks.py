"""The notebooks execute from top to bottom and show what their runs produced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from descend.experiments import load_run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, output_root: Path, monkeypatch) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` in a fresh kernel whose runs go below ``output_root``."""
    monkeypatch.setenv("DESCEND_NOTEBOOK_OUTPUT", str(output_root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return notebook


def outputs_of(notebook: nbformat.NotebookNode, kind: str) -> list:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stdout" and output.get("name") == "stdout":
                found.append(output["text"])
            elif kind in output.get("data", {}):
                found.append(output["data"][kind])
    return found


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} is stored with outputs"
                assert cell.execution_count is None, f"{path.name} is stored executed"


@pytest.mark.slow
def test_gd_vs_sgd_notebook_reports_its_runs(tmp_path, monkeypatch):
    notebook = execute("02_gd_vs_sgd.ipynb", tmp_path, monkeypatch)

    printed = "".join(outputs_of(notebook, "stdout"))
    reported = {
        int(size): float(loss)
        for size, loss in re.findall(r"batch size\s+(\d+), seed 0: test loss ([0-9.]+)", printed)
    }
    assert sorted(reported) == [16, 64, 1437]
    for batch_size, loss in reported.items():
        results = json.loads(
            (tmp_path / "02_gd_vs_sgd" / f"batch{batch_size}_seed0" / "results.json").read_text()
        )
        assert loss == pytest.approx(results["metrics"]["test/loss"], abs=5e-4)
    # At equal epochs the mini-batch runs take more steps and end far lower.
    assert reported[16] < reported[1437] / 2
    assert len(outputs_of(notebook, "image/png")) == 1


@pytest.mark.slow
def test_descent_tour_notebook_shows_its_run(tmp_path, monkeypatch):
    notebook = execute("01_descent_tour.ipynb", tmp_path, monkeypatch)
    run = load_run(tmp_path / "01_descent_tour")
    printed = "".join(outputs_of(notebook, "stdout"))

    # 8 epochs of ceil(1437 / 64) = 23 steps.
    steps, accuracy = re.search(
        r"(\d+) optimizer steps, validation accuracy ([0-9.]+)", printed
    ).groups()
    assert int(steps) == 8 * 23
    assert float(accuracy) == pytest.approx(run.last("val/acc"), abs=5e-5)

    # Each detection the notebook lists is the one the callback logged to metrics.csv.
    listed = [int(step) for step in re.findall(r"^step (\d+): ", printed, flags=re.MULTILINE)]
    _, logged = run.series("convergence/step")
    assert listed == [int(step) for step in logged]
    # Gradient norms, the landscape contour, the interpolation curve and the loss curve.
    assert len(outputs_of(notebook, "image/png")) == 4
