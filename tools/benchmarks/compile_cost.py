"""The ``compile`` suite: what a new batch size or sequence length costs in compilation.

The exact integrator's tile functions run through ``torch.compile``; a kernel is keyed by the tile's shape
(:mod:`itnet_scale.ops.compile`). This suite times training steps of the tiny model (text MLM, forward +
backward) on a sequence of shapes — the first call, a new batch size, new lengths, a last short batch, a larger
evaluation batch — in a fresh process with an empty inductor cache, so every compile is paid where it happens;
then the same sequence again, everything compiled. A step's first time minus its second is what its shape cost
in compilation.

``--baseline PATH`` runs the same steps on another checkout of the library (its folder holding ``itnet_scale``) in
the same way, one process after the other, and prints the two side by side: a before/after of a change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import BenchmarkSuite, SuiteReport, SuiteUsageError, Table
from .measure import describe_environment

#: (what the call is, batch, length): the order is the scenario.
SCENARIO = [
    ("first call", 8, 64),
    ("new batch size", 5, 64),
    ("new length (edge tiles)", 8, 50),
    ("another new length", 8, 45),
    ("new batch size and length", 3, 37),
    ("longer: new whole-tile extents", 16, 128),
    ("new batch size at that length", 7, 128),
    ("evaluation-sized batch", 32, 128),
    ("another length, last short batch", 5, 100),
]
TOOLS = Path(__file__).resolve().parents[1]


def run_worker(library: Path | None, threads: int, timeout: float) -> dict[str, list[float]]:
    """``{"first": seconds per scenario step, "again": the same steps repeated}``, measured in a fresh process with
    an empty inductor cache; ``library`` (a folder holding ``itnet_scale``) is put first on its import path."""
    shapes = ",".join(f"{batch}:{length}" for _, batch, length in SCENARIO)
    with tempfile.TemporaryDirectory() as cache:
        path = [*([str(library)] if library is not None else []), str(TOOLS), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        env.pop("ITNET_COMPILE", None)
        process = subprocess.run([sys.executable, "-m", "benchmarks.compile_cost_worker", "--shapes", shapes,
                                  "--threads", str(threads)], cwd=TOOLS, env=env, capture_output=True, text=True,
                                 timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the compile-cost worker failed ({library or 'this library'}):\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    return {"first": result["first"], "again": result["again"]}


class CompileSuite(BenchmarkSuite):
    name = "compile"
    description = "compilation cost of new batch sizes and lengths: tiny-model training steps in a fresh process"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                            help="another checkout (the folder holding its itnet_scale) to measure the same way")
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement process")

    def run(self, args: argparse.Namespace) -> SuiteReport:
        if args.baseline is not None and not (args.baseline / "itnet_scale" / "__init__.py").is_file():
            raise SuiteUsageError(f"--baseline {args.baseline}: no itnet_scale package there")
        runs = {"this": run_worker(None, args.threads, args.timeout)}
        if args.baseline is not None:
            runs["baseline"] = run_worker(args.baseline, args.threads, args.timeout)
        names = [name for name in ("baseline", "this") if name in runs]
        columns = ["call", "batch", "length"] + [f"{name} {part}" for name in names
                                                 for part in ("first s", "again s", "compile s")]
        table = Table(f"compile: tiny model, text MLM training step (forward + backward), fresh inductor cache, "
                      f"{args.threads} threads; seconds per call, the first time and again", columns,
                      right_aligned=set(columns[1:]))
        for index, (what, batch, length) in enumerate(SCENARIO):
            cells = []
            for name in names:
                first, again = runs[name]["first"][index], runs[name]["again"][index]
                cells += [f"{first:.2f}", f"{again:.2f}", f"{max(0.0, first - again):.2f}"]
            table.add_row([what, str(batch), str(length), *cells])
        notes = []
        for name in names:
            first, again = runs[name]["first"], runs[name]["again"]
            later = sum(max(0.0, f - a) for f, a in zip(first[1:], again[1:]))
            notes.append(f"{name}: the first call compiled for {first[0] - again[0]:.1f} s; the {len(first) - 1} "
                         f"calls of new shapes after it for {later:.1f} s in all")
        data = {"scenario": [{"call": w, "batch": b, "length": n} for w, b, n in SCENARIO], "seconds": runs,
                "baseline": None if args.baseline is None else str(args.baseline),
                "environment": describe_environment("cpu", getattr(args, "argv", None))}
        return SuiteReport([table], notes=notes, data=data)
