"""Worker of the ``train`` suite's ZeRO memory figure, run on every rank by DeepSpeed's launcher.

``python -m <this package>.zero_memory_worker SPEC.json``, started through ``deepspeed --num_accelerators N
--module`` (:func:`.train.run_memory_benchmark`): for each variant of the spec — a ZeRO stage, a precision and extra
``zero_optimization`` keys — build the tiny pretraining model from the same seed, wrap it with
:func:`deepspeed.initialize` under the generated DeepSpeed config (the spec's micro-batch), take one step, run the
next forward and backward, and count this rank's model and optimizer state with
:func:`.state_memory.engine_state_bytes` (gradients, moments and parameters all exist then), then take that step.
Each rank writes ``rank{r}.json`` into the spec's ``out`` folder.

The spec (JSON): ``{"out": DIR, "batch": FILE.safetensors (text_ids, text_attention_mask, mlm_labels),
"vocab_size": V, "micro_batch_size": B, "variants": [{"name": ..., "stage": 0|3, "precision": "fp32", "zero": {...}},
...]}`` (``precision`` defaults to fp32, ``zero`` to nothing).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from itnet_scale.models import create_model
from itnet_scale.parallel.process_group import init_distributed
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.engine import build_engine
from itnet_scale.train.optimizer import OptimizerSettings

from .measure import read_status_kib
from .state_memory import engine_state_bytes, live_tensor_bytes


def measure_variant(variant: dict[str, Any], batch: dict[str, Any], vocab_size: int, micro_batch_size: int) -> dict:
    """Build, step, count and tear down one engine; returns this rank's record."""
    torch.manual_seed(0)  # the same initial weights on every rank
    model = create_model("tiny", vocab_size=vocab_size)
    numel = sum(p.numel() for p in model.parameters())
    settings_ds = DeepSpeedSettings(zero_stage=variant["stage"], precision=variant.get("precision", "fp32"),
                                    micro_batch_size=micro_batch_size)
    engine, optimizer = build_engine(model, settings_ds, OptimizerSettings(), 2, model_width=model.itnet.config.dim,
                                     zero_overrides=variant.get("zero", {}))
    config = engine.config

    def forward_backward(engine) -> float:
        loss = sum(engine(batch).values())
        engine.backward(loss)
        return float(loss)

    losses = [forward_backward(engine)]
    engine.step()
    losses.append(forward_backward(engine))
    counted = engine_state_bytes(engine)
    live = live_tensor_bytes()
    rss = read_status_kib("VmRSS") * 1024
    engine.step()
    params = list({id(p): p for p in engine.module.parameters()}.values())
    persistent = [p for p in params if getattr(p, "ds_persist", False)]
    record = {
        "variant": variant["name"], "stage": variant["stage"], "precision": settings_ds.precision,
        "zero_optimization": config["zero_optimization"],
        "rank": dist.get_rank(), "world_size": dist.get_world_size(), "parameters": numel,
        "parameter_tensors": len(params), "persistent_tensors": len(persistent),
        "persistent_parameters": sum(p.ds_numel for p in persistent),
        "partitioned_tensors": sum(hasattr(p, "ds_tensor") and not getattr(p, "ds_persist", False) for p in params),
        "counted": counted.to_dict(), "live_tensor_bytes": live, "vm_rss_bytes": rss, "losses": losses,
    }
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, model, optimizer, params, persistent
    gc.collect()
    return record


def main(argv: list[str] | None = None) -> None:
    """Count every variant of the spec on this rank and write ``rank{r}.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--local_rank", type=int, default=0)  # passed by DeepSpeed's launcher
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    init_distributed("gloo")
    torch.set_num_threads(1)
    batch = {k: v.bool() if k == "text_attention_mask" else v for k, v in load_file(spec["batch"]).items()}
    records = [measure_variant(v, batch, spec["vocab_size"], spec["micro_batch_size"]) for v in spec["variants"]]
    rank = dist.get_rank()
    out = Path(spec["out"])
    (out / f"rank{rank}.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"rank {rank}: counted {len(records)} variant(s)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
