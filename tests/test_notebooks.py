"""The notebooks execute from top to bottom and show what their runs produced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
