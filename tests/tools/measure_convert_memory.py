"""Peak memory of converting a ~116M-parameter DeepSpeed checkpoint to the library format (not a test: slow).

    python tests/tools/measure_convert_memory.py run DIR [--stages 0 2 3] [--dtype fp32] [--max-shard-size 5GB]

For each ZeRO stage: builds ``create_model("base")`` (115.95 M parameters, 463.8 MB in fp32) under DeepSpeed on one
CPU rank, takes one AdamW step (so the optimizer files hold both moments, as a real checkpoint does) and saves it
with the loop's :func:`~itnet_scale.checkpoint.deepspeed_checkpoint.save_checkpoint`; then converts it in a fresh
subprocess and reports that process's peak resident memory over the conversion alone: the peak is reset
(``/proc/self/clear_refs`` ← 5) after the imports, so ``VmHWM`` afterwards is the conversion's peak, of which
``baseline`` (the interpreter, torch, DeepSpeed and the model code, resident before it starts) is not the
conversion's own. Prints one JSON line per stage. It imports the installed ``itnet_scale`` (``make venv``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MAX_SHARD_SIZE = "5GB"  # the converter's default (itnet_scale.checkpoint.library.DEFAULT_MAX_SHARD_SIZE)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def build(stage: int, directory: Path) -> None:
    """One AdamW step of the base model at ZeRO ``stage`` on one rank, saved to ``directory/checkpoints``."""
    import torch

    from benchmarks.train import init_single_process
    from itnet_scale.checkpoint.deepspeed_checkpoint import save_checkpoint
    from itnet_scale.config import to_yaml
    from itnet_scale.models import create_model
    from itnet_scale.train.deepspeed_config import DeepSpeedSettings
    from itnet_scale.train.engine import build_engine
    from itnet_scale.train.optimizer import OptimizerSettings

    init_single_process()
    torch.manual_seed(0)
    model = create_model("base")
    config = model.itnet.config
    engine, _ = build_engine(model, DeepSpeedSettings(zero_stage=stage, micro_batch_size=2),
                             OptimizerSettings(warmup_steps=1), total_steps=10, model_width=config.dim)
    ids = torch.randint(5, config.vocab_size, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    loss = engine({"text_ids": ids, "mlm_labels": labels})["mlm"]
    engine.backward(loss)
    engine.step()
    client_state = {"step": 1, "model_config": to_yaml(config), "objectives": ["mlm"], "world_size": 1,
                    "data": {"text": {"units": 1, "samples": 2}}}
    save_checkpoint(engine, directory / "checkpoints", 1, client_state)


def measure(checkpoint: Path, output: Path, dtype: str, max_shard_size: str) -> None:
    """Convert ``checkpoint`` → ``output`` in this process and print the peak RSS of the conversion (JSON)."""
    import resource

    import deepspeed.utils.zero_to_fp32  # noqa: F401  (imported before the peak is reset, as the tool imports it)
    import torch  # noqa: F401

    from itnet_scale.checkpoint.conversion import convert_to_library
    from itnet_scale.checkpoint.deepspeed_checkpoint import deepspeed_record_types
    from itnet_scale.checkpoint.sources import meta_model
    from itnet_scale.models import load_model_config

    # The libraries a conversion loads whatever the model's size (building any ITNet model, even on the meta device,
    # loads the kernels' modules: ~150 MB resident) are loaded before the peak is reset: they are not the
    # conversion's memory. They stay in the absolute peak_rss.
    deepspeed_record_types()
    meta_model("pretraining", load_model_config("tiny"), None)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status("VmRSS")
    began = time.perf_counter()
    result = convert_to_library(checkpoint, output, dtype=dtype, max_shard_size=max_shard_size, overwrite=True)
    seconds = time.perf_counter() - began
    peak = _status("VmHWM")
    print(json.dumps({"checkpoint": str(checkpoint), "dtype": dtype, "max_shard_size": max_shard_size,
                      "files": len(result.files), "seconds": round(seconds, 1), "output_bytes": result.bytes,
                      "baseline_rss": baseline, "peak_rss": peak, "peak_over_baseline": peak - baseline,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(directory: Path, stages: list[int], dtype: str, max_shard_size: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    fp32_bytes = 115_952_753 * 4
    for stage in stages:
        run_dir = directory / f"zero{stage}"
        if not (run_dir / "checkpoints" / "latest").is_file():
            subprocess.run([sys.executable, __file__, "build", str(stage), str(run_dir)], check=True, env=env)
        done = subprocess.run([sys.executable, __file__, "measure", str(run_dir / "checkpoints"),
                               str(directory / f"library{stage}"), "--dtype", dtype, "--max-shard-size",
                               max_shard_size], check=True, env=env,
                              capture_output=True, text=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures.update(stage=stage, model_fp32_bytes=fp32_bytes,
                       peak_over_baseline_vs_model=round(figures["peak_over_baseline"] / fp32_bytes, 2),
                       peak_vs_model=round(figures["peak_rss"] / fp32_bytes, 2))
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("directory", type=Path)
    run_parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    run_parser.add_argument("--dtype", default="fp32")
    run_parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("stage", type=int)
    build_parser.add_argument("directory", type=Path)
    measure_parser = commands.add_parser("measure")
    measure_parser.add_argument("checkpoint", type=Path)
    measure_parser.add_argument("output", type=Path)
    measure_parser.add_argument("--dtype", default="fp32")
    measure_parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE)
    args = parser.parse_args()
    if args.command == "run":
        run(args.directory, args.stages, args.dtype, args.max_shard_size)
    elif args.command == "build":
        build(args.stage, args.directory)
    else:
        measure(args.checkpoint, args.output, args.dtype, args.max_shard_size)


if __name__ == "__main__":
    main()
