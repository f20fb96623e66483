"""The demo's fine-tuning runs and their table: each task of :data:`DEMO_TASKS` fine-tuned with ``deepspeed
launch/finetune.py`` on 2 CPU ranks from the pretrained demo model (``init_from``) and from scratch, the same
config and data, the runs one after another; then ``results.md`` and ``results.json`` from each run's
``metrics.json`` (written by the recipe: the best value of the primary metric, its step, the steps run), its
``eval.jsonl`` (every evaluation) and the command's wall time.

The settings are the task configs' with CPU-sized overrides (:data:`COMMON_OVERRIDES` and each task's): the tiny
model (the demo model's size), fp32, no weight EMA (a handful of epochs is too short for a 0.9999 average), no
test-time voting, a few epochs. The from-scratch runs differ in one more setting: no layer-wise learning-rate decay
(``optimizer.layer_decay=1``), which only makes sense for pretrained lower layers — slowing the lower layers of a
random model would handicap the baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .datasets import DATA_FOLDERS, read_descriptions

#: Overrides of every run: the CPU's settings.
COMMON_OVERRIDES = ("model=tiny", "deepspeed.precision=fp32", "deepspeed.zero_stage=1", "ema.decay=0.0",
                    "eval.every_epochs=1", "checkpoint.save_every=100000", "checkpoint.keep_last=1",
                    "logging.print_every=10", "seed=0")
#: The from-scratch runs' extra override (see the module doc).
SCRATCH_OVERRIDES = ("optimizer.layer_decay=1.0",)
INITS = ("pretrained", "scratch")


@dataclass(frozen=True)
class DemoTask:
    """One fine-tuning task of the demo: the benchmark's config, the data set (a key of
    :data:`~.datasets.DATA_FOLDERS`) and the task's overrides."""

    name: str
    config: str
    data: str
    overrides: tuple[str, ...]


DEMO_TASKS = (
    DemoTask("imagenet", "configs/finetune/imagenet.yaml", "fashion",
             ("epochs=6", "warmup_epochs=1", "augment.image.size=32", "augment.image.channels=3",
              "augment.image.crop_pct=1.0", "augment.image.scale=[0.5,1.0]", "augment.mix.mixup_alpha=0.0",
              "augment.mix.cutmix_alpha=0.0", "optimizer.lr=1.0e-3", "deepspeed.micro_batch_size=32",
              "eval.batch_size=100")),
    DemoTask("sst2", "configs/finetune/sst2.yaml", "austen",
             ("epochs=6", "warmup_epochs=0.5", "max_text_tokens=64", "optimizer.lr=5.0e-4",
              "deepspeed.micro_batch_size=32", "eval.batch_size=100")),
    DemoTask("modelnet40", "configs/finetune/modelnet40.yaml", "shapes",
             ("epochs=20", "warmup_epochs=1", "eval.votes=0", "optimizer.lr=1.0e-3",
              "deepspeed.micro_batch_size=32", "eval.batch_size=60")),
    DemoTask("vqav2", "configs/finetune/vqav2.yaml", "easyvqa",
             ("epochs=6", "warmup_epochs=1", "augment.image.size=32", "vqav2.min_answer_count=1",
              "max_text_tokens=24", "optimizer.lr=5.0e-4", "deepspeed.micro_batch_size=32", "eval.batch_size=100")),
    DemoTask("nlvr2", "configs/finetune/nlvr2.yaml", "fashion_pairs",
             ("epochs=6", "warmup_epochs=1", "augment.image.size=32", "model_overrides.image_pair_form=single",
              "max_text_tokens=24", "optimizer.lr=5.0e-4", "deepspeed.micro_batch_size=32", "eval.batch_size=100")),
)


@dataclass
class DemoRun:
    """One fine-tuning run: its task, ``init`` (``pretrained`` or ``scratch``), run folder, command and the line
    on its data set."""

    task: DemoTask
    init: str
    run_dir: Path
    command: list[str]
    data: str


@dataclass
class RunResult:
    """What a run gave: its wall time (s), exit status, ``metrics.json`` and evaluations (empty if it failed)."""

    task: str
    init: str
    data: str
    run_dir: str
    command: list[str]
    seconds: float
    returncode: int
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.metrics)


def deepspeed_command() -> str:
    """The ``deepspeed`` launcher beside this interpreter (the venv's), else the one on ``PATH``."""
    beside = Path(sys.executable).with_name("deepspeed")
    found = str(beside) if beside.is_file() else shutil.which("deepspeed")
    if found is None:
        raise FileNotFoundError("no deepspeed launcher beside the Python interpreter or on PATH: install DeepSpeed "
                                "(make venv)")
    return found


def plan_runs(data_root: Path, model: Path, out: Path, tasks: Sequence[DemoTask] = DEMO_TASKS,
              ranks: int = 2, extra: Sequence[str] = ()) -> list[DemoRun]:
    """Every task from ``model`` and from scratch, in that order, each in ``out/<task>-<init>``, on the data
    sets the ``data`` command wrote to ``data_root``; ``extra`` overrides go last (after the task's)."""
    launcher = deepspeed_command()
    descriptions = read_descriptions(data_root)
    runs = []
    for task in tasks:
        for init in INITS:
            run_dir = Path(out) / f"{task.name}-{init}"
            overrides = [*COMMON_OVERRIDES, *task.overrides, f"data_root={Path(data_root) / DATA_FOLDERS[task.data]}",
                         f"run_dir={run_dir}"]
            overrides += [f"init_from={model}"] if init == "pretrained" else list(SCRATCH_OVERRIDES)
            command = [launcher, "--num_accelerators", str(ranks), "launch/finetune.py", "--config", task.config,
                       *overrides, *extra]
            runs.append(DemoRun(task, init, run_dir, command, descriptions[task.data]))
    return runs


def read_evaluations(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a run's ``eval.jsonl`` (none if it is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def execute(run: DemoRun, log: Path) -> RunResult:
    """Run ``run`` afresh (its folder removed first: the launcher would resume it), output to ``log``."""
    shutil.rmtree(run.run_dir, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        returncode = subprocess.run(run.command, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ),
                                    check=False).returncode
    seconds = time.perf_counter() - began
    metrics_file = run.run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    return RunResult(run.task.name, run.init, run.data, str(run.run_dir), run.command, seconds,
                     returncode, metrics, read_evaluations(run.run_dir / "eval.jsonl"))


def first_step_reaching(evaluations: Sequence[dict[str, Any]], metric: str, value: float) -> int | None:
    """The first evaluated step whose ``metric`` is at least ``value`` (None: never)."""
    return next((int(e["step"]) for e in evaluations if metric in e and e[metric] >= value), None)


def _minutes(seconds: float) -> str:
    """``m:ss``."""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def results_markdown(results: Sequence[RunResult]) -> str:
    """The runs' table (``task | data | init | metric | best value | steps | time``) and, per task, pretrained −
    scratch: the best values and their difference, both runs' first evaluation (after epoch 1: the head start),
    and the step at which the pretrained run first reached the scratch run's best."""
    lines = ["| task | data | init | metric | best value | steps | time |", "|---|---|---|---|---:|---:|---:|"]
    for r in results:
        if r.ok:
            best = f"{r.metrics['best']:.4f} (step {r.metrics['best_step']})"
            lines.append(f"| {r.task} | {r.data} | {r.init} | {r.metrics['primary_metric']} | {best} | "
                         f"{r.metrics['steps']} | {_minutes(r.seconds)} |")
        else:
            lines.append(f"| {r.task} | {r.data} | {r.init} | — | failed (exit {r.returncode}; "
                         f"{r.run_dir}.log) | — | {_minutes(r.seconds)} |")
    lines += ["", "| task | metric | pretrained | scratch | pretrained − scratch | first evaluation, pretrained / "
              "scratch | pretrained reaches scratch's best |", "|---|---|---:|---:|---:|---|---|"]
    by_key = {(r.task, r.init): r for r in results}
    for task in dict.fromkeys(r.task for r in results):
        pretrained, scratch = by_key.get((task, "pretrained")), by_key.get((task, "scratch"))
        if not (pretrained and scratch and pretrained.ok and scratch.ok):
            continue
        metric = pretrained.metrics["primary_metric"]
        a, b = pretrained.metrics["best"], scratch.metrics["best"]
        first = [run.evaluations[0] for run in (pretrained, scratch) if run.evaluations]
        start = (f"{first[0][metric]:.4f} / {first[1][metric]:.4f} (step {first[0]['step']})" if len(first) == 2
                 else "—")
        step = first_step_reaching(pretrained.evaluations, metric, b)
        reach = f"at step {step} of {pretrained.metrics['steps']}" if step is not None else "never"
        lines.append(f"| {task} | {metric} | {a:.4f} | {b:.4f} | {a - b:+.4f} | {start} | {reach} |")
    return "\n".join(lines) + "\n"


def write_results(results: Sequence[RunResult], out: Path, total_seconds: float) -> tuple[Path, Path]:
    """``out/results.md`` (the table and the total time) and ``out/results.json`` (every run's command, wall time,
    metrics.json and evaluations)."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(results) + f"\nAll {len(results)} runs: {_minutes(total_seconds)} (m:ss).\n"
    (out / "results.md").write_text(markdown, encoding="utf-8")
    payload = {"runs": [{**asdict(r), "ok": r.ok} for r in results], "total_seconds": total_seconds}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out / "results.md", out / "results.json"


__all__ = ["COMMON_OVERRIDES", "DEMO_TASKS", "INITS", "SCRATCH_OVERRIDES", "DemoRun", "DemoTask", "RunResult",
           "deepspeed_command", "execute", "first_step_reaching", "plan_runs", "read_evaluations",
           "results_markdown", "write_results"]
