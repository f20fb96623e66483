"""The comparison's outputs under ``--out``: ``results.md`` (the table), ``results.json`` (every run, the
budget, the ITNet configuration, the environment) and ``results.png`` (a bar chart per task)."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import finite_for_json

from .protocol import ProtocolResult
from .tasks import TaskData

COLUMNS = ("task", "model", "params", "chosen lr", "test metric (mean ± std)", "train loss", "wall s / run")


def summary_row(result: ProtocolResult, metric: str) -> dict[str, Any]:
    """The table's figures of one model on one task (means over the seed runs; std with ``ddof=0``)."""
    tests = np.array(result.test_metrics(), dtype=float)
    seeds = result.seeds
    return {"task": result.task, "model": result.model, "params": seeds[0].params, "chosen": result.chosen,
            "metric": metric, "test_mean": float(np.mean(tests)), "test_std": float(np.std(tests)),
            "train_loss": float(np.mean([run.train_loss for run in seeds])),
            "wall_s": float(np.mean([run.wall_s for run in [*result.sweep, *seeds[1:]]])),
            "seeds": len(seeds)}


def _hyper(model: str, value: float) -> str:
    return f"C={value:g}" if model in ("logreg", "tfidf") else f"{value:g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a GitHub Markdown table, one row per task and model."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in rows:
        scale, unit = (100.0, "% acc") if row["metric"] == "accuracy" else (1.0, " rel. L2")
        metric = (f"{scale * row['test_mean']:.4g} ± {scale * row['test_std']:.2g}{unit}"
                  if math.isfinite(row["test_mean"]) else "diverged")
        lines.append(f"| {row['task']} | {row['model']} | {row['params']:,} | {_hyper(row['model'], row['chosen'])} "
                     f"| {metric} | {row['train_loss']:.4g} | {row['wall_s']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], tasks: list[TaskData], path: Path) -> None:
    """One bar chart per task: each model's test metric, the std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(tasks))
    lines = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        mine = [row for row in rows if row["task"] == task.name]
        scale = 100.0 if task.metric == "accuracy" else 1.0
        means = [scale * row["test_mean"] for row in mine]
        axis.bar(range(len(mine)), means, yerr=[scale * row["test_std"] for row in mine],
                 color=["tab:orange" if row["model"].startswith("itnet") else "tab:blue" for row in mine])
        axis.set_xticks(range(len(mine)), [row["model"] for row in mine], rotation=40, ha="right", fontsize=8)
        axis.set_title(task.name, fontsize=10)
        axis.set_ylabel("test accuracy (%)" if task.metric == "accuracy" else "test relative L2 (lower is better)",
                        fontsize=8)
    for axis in list(axes.flat)[len(tasks):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(out: Path, results: list[ProtocolResult], tasks: list[TaskData], settings: dict[str, Any]) -> dict:
    """Write ``results.md``, ``results.json`` and ``results.png`` under ``out``; returns the JSON payload."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    by_task = {task.name: task for task in tasks}
    rows = [summary_row(result, by_task[result.task].metric) for result in results]
    table = markdown_table(rows)
    notes = [f"- {task.name}: {task.description}; metric: {task.metric}" for task in tasks]
    (out / "results.md").write_text(table + "\n\n" + "\n".join(notes) + "\n")
    payload = {
        "settings": settings,
        "tasks": {task.name: {"description": task.description, "metric": task.metric, "train": len(task.train),
                              "val": len(task.val), "test": len(task.test)} for task in tasks},
        "summary": rows,
        "runs": [{**run.to_dict(), "phase": phase} for result in results
                 for phase, runs in (("sweep", result.sweep), ("seed", result.seeds[1:])) for run in runs],
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    (out / "results.json").write_text(json.dumps(finite_for_json(payload), indent=2, allow_nan=False) + "\n")
    plot(rows, tasks, out / "results.png")
    return payload
