"""Turn a finished multirun into its summary figures and table.

``python -m descend.report <multirun dir>`` (or ``make report SWEEP=<multirun dir>``) reads each
run's ``config.yaml``, ``results.json`` and ``csv/version_0/metrics.csv``, picks the report of the
experiment the runs were started with (``experiment=<name>``), and writes into
``<multirun dir>/report/`` (or ``--output``):

* ``<experiment>_<figure>.png``: the summary figures;
* ``<experiment>.md`` and ``<experiment>.csv``: the table, one row per run.

No W&B account is needed. When the runs also logged to W&B, the figures and the table go to one
more W&B run (job type ``report``, grouped under the multirun's name) in the same mode. So offline
runs give an offline report run, which ``make sync`` uploads with the others.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from descend.experiments.runs import Run, Summary, experiment_name, find_runs

log = logging.getLogger(__name__)

# Experiment name -> module whose `summarize(runs) -> Summary` builds its report.
REPORTS = {
    "two_params": "descend.experiments.two_params",
    "gd_vs_sgd": "descend.experiments.gd_vs_sgd",
    "init_seeds": "descend.experiments.init_seeds",
    "lr_sweep": "descend.experiments.lr_sweep",
}


def build_summary(runs: list[Run]) -> tuple[str, Summary]:
    """Return the experiment name shared by ``runs`` and its summary."""
    names = {experiment_name(run) for run in runs}
    if len(names) != 1:
        raise ValueError(
            f"the runs come from several experiments ({sorted(map(str, names))}): report one "
            "multirun at a time"
        )
    name = names.pop()
    if name not in REPORTS:
        raise ValueError(
            f"no report exists for experiment={name}: reports exist for {sorted(REPORTS)}"
        )
    module = importlib.import_module(REPORTS[name])
    return name, module.summarize(runs)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Return ``rows`` as a GitHub markdown table (missing cells are empty)."""
    columns = table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [format_value(row[key]) if key in row else "" for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(name: str, summary: Summary, output_dir: Path) -> dict[str, Path]:
    """Write the figures (PNG) and the table (markdown and CSV); return the paths written, by
    figure name, ``"markdown"`` and ``"csv"``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for figure_name, figure in summary.figures.items():
        path = output_dir / f"{name}_{figure_name}.png"
        figure.savefig(path, dpi=110)
        written[figure_name] = path

    markdown_path = output_dir / f"{name}.md"
    markdown_path.write_text(markdown_table(summary.rows))
    csv_path = output_dir / f"{name}.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=table_columns(summary.rows))
        writer.writeheader()
        writer.writerows(summary.rows)
    return {**written, "markdown": markdown_path, "csv": csv_path}


def wandb_mode(runs: list[Run]) -> str | None:
    """Return ``"online"`` or ``"offline"`` when the runs logged to W&B, else ``None``."""
    modes = set()
    for run in runs:
        wandb_dir = run.path / "wandb"
        if any(wandb_dir.glob("offline-run-*")):
            modes.add("offline")
        if any(wandb_dir.glob("run-*")):
            modes.add("online")
    if not modes:
        return None
    return "online" if "online" in modes else "offline"


def log_to_wandb(
    name: str,
    summary: Summary,
    figure_paths: dict[str, Path],
    runs: list[Run],
    sweep_dir: Path,
    mode: str,
) -> Path:
    """Log the figures (the PNG files written) and the table to a new W&B run; return its local
    directory."""
    import wandb

    wandb_config = runs[0].config.get("logger", {}).get("wandb") or {}
    output_dir = sweep_dir / "report"
    output_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=wandb_config.get("project", "descend"),
        entity=wandb_config.get("entity"),
        dir=str(output_dir),
        mode=mode,
        job_type="report",
        group=sweep_dir.name,
        name=f"{name}-report-{sweep_dir.name}",
        config={"experiment": name, "sweep_dir": str(sweep_dir.resolve()), "runs": len(runs)},
    )
    columns = table_columns(summary.rows)
    table = wandb.Table(
        columns=columns,
        data=[[format_value(row.get(key, "")) for key in columns] for row in summary.rows],
    )
    # wandb 0.31 reads a matplotlib Figure only after pyplot was imported, so it gets the files.
    images = {f"report/{key}": wandb.Image(str(figure_paths[key])) for key in summary.figures}
    run.log({**images, "report/table": table})
    local_dir = Path(run.dir).parent
    run.finish()
    return local_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m descend.report",
        description="Write the summary figures and table of a finished multirun.",
    )
    parser.add_argument("sweep", type=Path, help="multirun directory (logs/train/multiruns/...)")
    parser.add_argument(
        "--output", type=Path, default=None, help="output directory (default: <sweep>/report)"
    )
    parser.add_argument(
        "--wandb",
        choices=("auto", "off"),
        default="auto",
        help="auto: log to W&B when the runs did, in their mode; off: never",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    runs = find_runs(args.sweep)
    name, summary = build_summary(runs)
    output_dir = args.output or args.sweep / "report"
    written = write_report(name, summary, output_dir)
    for path in written.values():
        log.info("Wrote %s", path)

    mode = wandb_mode(runs) if args.wandb == "auto" else None
    if mode is not None:
        local_dir = log_to_wandb(name, summary, written, runs, args.sweep, mode)
        log.info("Logged the report to W&B (%s): %s", mode, local_dir)
    sys.stdout.write(markdown_table(summary.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
