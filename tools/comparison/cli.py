"""The command line of ``tools/compare.py``: parse, build the tasks and models, run the protocol, write the
outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .models import (
    ITNET_OVERRIDES,
    ITNET_ROWS,
    LINEAR_BASELINES,
    SPECIALISTS,
    ModelError,
    active_parameter_count,
    build_itnet,
    parse_itnet_variant,
    sized_specialist,
)
from .protocol import LINEAR_C, Budget, ProtocolResult, RunResult, run_protocol, train_linear, train_neural
from .report import markdown_table, summary_row, write_outputs
from .tasks import QUICK_SIZES, TASKS, TaskData, TaskError, TaskSizes, build_task

DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_STEPS, DEFAULT_BATCH = 200, 32
QUICK_STEPS, QUICK_BATCH, QUICK_SEEDS = 30, 16, (0, 1)
ALL_MODELS = (*ITNET_ROWS, *SPECIALISTS, *LINEAR_BASELINES)
#: The atlas scores whose means over the heads ``atlas.md`` reports (see :mod:`itnet_scale.atlas.scores`).
ATLAS_COLUMNS = ("locality", "distance", "content", "causality")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", allow_abbrev=False,
        description="Train ITNet and size-matched specialists on the same budget; write a table, JSON and a plot.")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=f"default: all of {', '.join(TASKS)}")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"default: every one that fits a task, of {', '.join(ALL_MODELS)}")
    parser.add_argument("--itnet", action="append", default=[], metavar="NAME:key=value,…",
                        help="an ITNet variant row 'itnet-NAME' with ModelConfig overrides (dot keys, e.g. "
                             "conv:layer.kernel_width=16,layers.0-1.support=window); repeatable")
    parser.add_argument("--steps", type=int, help=f"training steps per run (default {DEFAULT_STEPS})")
    parser.add_argument("--batch", type=int, help=f"batch size (default {DEFAULT_BATCH})")
    parser.add_argument("--lrs", type=float, nargs="+", help=f"learning rates swept at the first seed "
                                                              f"(default {' '.join(map(str, DEFAULT_LRS))})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {' '.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("--quick", action="store_true",
                        help=f"small splits {QUICK_SIZES.train}/{QUICK_SIZES.val}/{QUICK_SIZES.test}, "
                             f"{QUICK_STEPS} steps, batch {QUICK_BATCH}, seeds {QUICK_SEEDS} (explicit options win)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="where `make fashion-mnist` and `make janeaustenr` put the real data (default data)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.md, results.json, results.png")
    parser.add_argument("--atlas", action="store_true",
                        help="run the kernel atlas on each ITNet row's model of the first seed at the chosen rate "
                             "(OUT/atlas/TASK/MODEL/: atlas.json, summary.png, kernels_*.png; OUT/atlas.md)")
    return parser


def select_models(task: TaskData, wanted: list[str] | None, variants: dict[str, dict[str, Any]]) -> list[str]:
    """The models run on ``task``: ``wanted`` (default all) that take it, then the ITNet variants."""
    names = []
    for name in wanted or ALL_MODELS:
        neural = name in SPECIALISTS and SPECIALISTS[name].accepts(task)
        linear = LINEAR_BASELINES.get(name) == task.kind
        if name in ITNET_ROWS or (name in task.specialists and (neural or linear)):
            names.append(name)
    return names + list(variants)


def make_trainer(name: str, task: TaskData, budget: Budget, variants: dict[str, dict[str, Any]],
                 itnet_params: int, kept: dict[tuple[float, int], nn.Module] | None = None
                 ) -> Callable[[float, int], RunResult]:
    """``(lr or C, seed) → RunResult`` for model ``name`` on ``task``; an ITNet row's trained models go into
    ``kept`` by ``(lr, seed)`` when it is given."""
    if name in LINEAR_BASELINES:
        return lambda c, seed: train_linear(name, task, c, seed)
    if name in SPECIALISTS:
        build, _, _ = sized_specialist(name, task, itnet_params)
        kept = None
    else:
        build = build_itnet(task, {**ITNET_ROWS, **variants}[name])

    def keep(model: nn.Module, lr: float, seed: int) -> None:
        kept[(lr, seed)] = model

    return lambda lr, seed: train_neural(name, build, task, budget, lr, seed, keep=None if kept is None else keep)


def write_atlas(out: Path, task: TaskData, result: ProtocolResult, model: nn.Module) -> list[str]:
    """The kernel atlas of ``model`` (``result``'s first-seed model at the chosen rate) on the first 8 test inputs,
    written to ``out/atlas/TASK/MODEL/``; returns one markdown row: the heads' mean locality, reach (position
    units) and content dependence, and how many heads each special case got."""
    from itnet_scale.atlas import atlas
    from itnet_scale.atlas.scores import CLASSES

    found = atlas(model, task.test.inputs[:8], forward=lambda module, inputs: module(inputs))
    found.write(out / "atlas" / task.name / result.model, title=f"{task.name} / {result.model}")
    heads = [head for layer in found.layers for head in layer.scores]
    labels = [head.kind for head in heads]
    counts = ", ".join(f"{name} {labels.count(name)}" for name in CLASSES if labels.count(name))
    means = [float(np.nanmean([getattr(head, score) for head in heads])) for score in ATLAS_COLUMNS]
    return [task.name, result.model, f"{result.chosen:g}", *(f"{value:.2f}" for value in means), counts]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    batch = args.batch or (QUICK_BATCH if args.quick else DEFAULT_BATCH)
    seeds = args.seeds or list(QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    lrs = args.lrs or list(DEFAULT_LRS)
    sizes = QUICK_SIZES if args.quick else TaskSizes()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        budget = Budget(steps=steps, batch=batch)
        if any(lr <= 0 for lr in lrs):
            raise ValueError(f"--lrs must be positive, got {lrs}")
        unknown = [name for name in args.models or [] if name not in ALL_MODELS]
        if unknown:
            raise ModelError(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
        variants = dict(parse_itnet_variant(text) for text in args.itnet)
        clash = [name for name in variants if name in ITNET_ROWS]
        if clash:
            raise ModelError(f"--itnet names {clash} clash with the built-in ITNet rows; pick other names")
        tasks = [build_task(name, sizes, args.data_dir) for name in args.tasks or TASKS]
        plan, kept = [], {}
        for task in tasks:
            for overrides in variants.values():
                build_itnet(task, overrides)  # a bad override fails now, not after hours of training
            itnet_params = active_parameter_count(build_itnet(task, {})(), task.train.inputs[:4])
            for name in select_models(task, args.models, variants):
                models = kept.setdefault((task.name, name), {}) if args.atlas else None
                plan.append((task, name, make_trainer(name, task, budget, variants, itnet_params, models)))
        if not plan:
            raise ModelError(f"none of the models {args.models} takes any of the tasks {[t.name for t in tasks]}")
    except (TaskError, ModelError, ValueError) as error:
        parser.error(str(error))
    results: list[ProtocolResult] = []
    atlas_rows: list[list[str]] = []
    total = len(plan) * (len(lrs) + len(seeds) - 1)
    with tqdm(total=total, desc="runs", unit="run") as bar:
        for task, name, trainer in plan:
            hypers = list(LINEAR_C) if name in LINEAR_BASELINES else lrs

            def counted(hyper: float, seed: int, trainer=trainer) -> RunResult:
                run = trainer(hyper, seed)
                bar.update(1)
                return run

            results.append(run_protocol(task.name, name, counted, hypers, seeds, task.higher_is_better))
            bar.write(markdown_table([summary_row(results[-1], task.metric)]).splitlines()[-1])
            models = kept.pop((task.name, name), None)
            if models is not None and (results[-1].chosen, seeds[0]) in models:
                atlas_rows.append(write_atlas(args.out, task, results[-1], models[(results[-1].chosen, seeds[0])]))
    settings = {"budget": asdict(budget), "lrs": lrs, "linear_C": list(LINEAR_C), "seeds": seeds,
                "sizes": asdict(sizes), "itnet_config": {"base": "tiny", **ITNET_OVERRIDES, "layers": {}},
                "itnet_rows": ITNET_ROWS, "itnet_variants": variants, "argv": sys.argv if argv is None else argv}
    write_outputs(args.out, results, tasks, settings)
    if atlas_rows:
        header = ["task", "model", "lr", *(f"mean {score}" for score in ATLAS_COLUMNS),
                  "heads by nearest special case"]
        lines = ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *atlas_rows]]
        (args.out / "atlas.md").write_text("\n".join(lines) + "\n")
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.md, results.json, results.png", file=sys.stderr)
    return 0
