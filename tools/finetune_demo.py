#!/usr/bin/env python
"""Fine-tuning on real(ish) data, end to end (``make finetune-demo``): write Fashion-MNIST as an ImageNet tree,
sentences of two Jane Austen novels as GLUE SST-2, synthetic shapes as ModelNet40, easy-VQA as VQA v2 and
Fashion-MNIST pairs with statements as NLVR2 (``data``), then fine-tune each from the pretrained demo model and
from scratch on 2 CPU ranks and write the table (``run``). The logic is the ``demo_finetuning`` package next to this
script.

Examples::

    python tools/finetune_demo.py data --data-dir data --out runs/finetune-demo/data --overwrite
    python tools/finetune_demo.py run --data runs/finetune-demo/data --model models/demo --out runs/finetune-demo
    python tools/finetune_demo.py run ... --tasks sst2 --set epochs=1     # one task, extra overrides on every run
    python tools/finetune_demo.py run ... --tasks nlvr2 --set model_overrides.image_pair_form=paired
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from comparison.tasks import TaskError
from demo_finetuning.datasets import DATA_FOLDERS, DemoDataSizes, write_demo_data
from demo_finetuning.runs import DEMO_TASKS, execute, plan_runs, results_markdown, write_results


def write_data(args: argparse.Namespace) -> int:
    if args.overwrite:
        for name in DATA_FOLDERS.values():
            shutil.rmtree(args.out / name, ignore_errors=True)
    began = time.perf_counter()
    try:
        roots = write_demo_data(args.data_dir, args.out, DemoDataSizes(), seed=args.seed)
    except (TaskError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, root in roots.items():
        print(f"{name}: {root}")
    print(f"written in {time.perf_counter() - began:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    known = [task.name for task in DEMO_TASKS]
    unknown = [name for name in args.tasks if name not in known]
    if unknown:
        print(f"error: unknown task(s) {unknown}; the demo's tasks are {known}", file=sys.stderr)
        return 2
    if not (args.model / "config.yaml").is_file():
        print(f"error: {args.model} is not a library-format model folder (no config.yaml): convert the demo's "
              "checkpoint first (make finetune-demo does)", file=sys.stderr)
        return 2
    try:
        runs = plan_runs(args.data, args.model, args.out, [t for t in DEMO_TASKS if t.name in args.tasks],
                         extra=args.set)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results, began = [], time.perf_counter()
    for number, planned in enumerate(runs, start=1):
        log = planned.run_dir.with_name(planned.run_dir.name + ".log")
        print(f"[{number}/{len(runs)}] {planned.task.name} from {planned.init}: {' '.join(planned.command)}",
              flush=True)
        result = execute(planned, log)
        status = (f"best {result.metrics['primary_metric']} = {result.metrics['best']:.4f}" if result.ok
                  else f"FAILED (exit {result.returncode}), see {log}")
        print(f"    {status}; {result.seconds:.0f} s", flush=True)
        results.append(result)
    markdown, json_file = write_results(results, args.out, time.perf_counter() - began)
    print(results_markdown(results))
    print(f"written: {markdown}, {json_file}")
    return 0 if all(result.ok for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write the five data sets in the benchmarks' layouts")
    data.add_argument("--data-dir", type=Path, default=Path("data"),
                      help="holds fashion-mnist/ and janeaustenr/ (make fashion-mnist janeaustenr)")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--overwrite", action="store_true", help="replace the data sets already in --out")
    data.set_defaults(handler=write_data)
    runs = commands.add_parser("run", help="fine-tune every task from --model and from scratch; write the table")
    runs.add_argument("--data", type=Path, required=True, help="the `data` command's --out")
    runs.add_argument("--model", type=Path, required=True, help="the pretrained library-format model folder")
    runs.add_argument("--out", type=Path, required=True, help="run folders, logs, results.md and results.json")
    runs.add_argument("--tasks", nargs="+", default=[task.name for task in DEMO_TASKS])
    runs.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run, last")
    runs.set_defaults(handler=run)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
