"""Parameter counts of every model config (``configs/model``) and DeepSpeed's ZeRO memory estimate per GPU.

Usage::

    python tools/model_sizes.py [--markdown] [--gpus-per-node 8] [--nodes 1] [--deepspeed-report]

Models are built on the ``meta`` device, so even ``large`` costs no memory. Counts are per part of the
pretraining model and add up to the total: the backbone, each encoder, each pretraining head (the MLM decoder
is tied to the text embedding, which is counted once, in the text encoder). "largest layer" is the largest
module's own parameters, as DeepSpeed's ``model_to_params`` defines it for ZeRO-3.

Memory: the model states (fp16/bf16 parameters and gradients, fp32 master weights and Adam moments) per GPU for
ZeRO-2 and ZeRO-3 without offload, from DeepSpeed's estimators — the functions its
``estimate_zero2_model_states_mem_needs_all_cold`` / ``estimate_zero3_model_states_mem_needs_all_cold`` call
for each offload option (those print rather than return). ``--deepspeed-report`` also prints their reports
(every offload option) for each config.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks import Table
from itnet_scale.models import create_model, list_models

PARTS = ("backbone", "text encoder", "image encoder", "point encoder", "MLM head", "ITC head", "MPM head",
         "MPP head")


def part_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of each part of a pretraining model; a parameter shared by two parts (the tied MLM decoder)
    counts in the first, so the parts add up to the total."""
    itnet = model.itnet
    modules = (itnet.backbone, itnet.encoder.text, itnet.encoder.image, itnet.encoder.points, model.mlm, model.itc,
               model.mpm, model.mpp)
    seen: set[int] = set()
    counts = {}
    for name, module in zip(PARTS, modules, strict=True):
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        counts[name] = sum(p.numel() for p in fresh)
    unassigned = [n for n, p in model.named_parameters() if id(p) not in seen]
    if unassigned:
        raise RuntimeError(f"parameters outside every counted part: {unassigned}")
    return counts


def largest_layer(model: torch.nn.Module) -> int:
    """The most parameters one module holds itself (DeepSpeed's ``largest_layer_params``)."""
    return max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())


def zero_memory(total: int, largest: int, gpus_per_node: int, nodes: int) -> tuple[int, int]:
    """Bytes per GPU of the model states under ZeRO-2 and ZeRO-3, no offload (DeepSpeed's estimators)."""
    # The estimators are arithmetic: name the accelerator so DeepSpeed's import does not probe for one and print
    # a warning into the table's output.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2 = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes, cpu_offload=False,
                                                        cpu_offload_params=False, zero_init=True)
    return zero2, zero3


def size_row(name: str, gpus_per_node: int, nodes: int, deepspeed_report: bool = False) -> list[str]:
    """One table row for the model config ``name``."""
    with torch.device("meta"):
        model = create_model(name)
    counts = part_counts(model)
    total, largest = sum(counts.values()), largest_layer(model)
    zero2, zero3 = zero_memory(total, largest, gpus_per_node, nodes)
    if deepspeed_report:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

        print(f"\n## {name}: ZeRO-2")
        estimate_zero2_model_states_mem_needs_all_cold(total, gpus_per_node, nodes)
        print(f"## {name}: ZeRO-3")
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, gpus_per_node, nodes)
    config = model.itnet.config
    return [name, str(config.dim), str(config.depth), str(config.heads), f"{total / 1e6:.2f}",
            *(f"{counts[part] / 1e6:.3f}" for part in PARTS), f"{largest / 1e6:.2f}",
            f"{zero2 / 2**30:.2f}", f"{zero3 / 2**30:.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--deepspeed-report", action="store_true",
                        help="also print DeepSpeed's own estimates for every offload option")
    args = parser.parse_args(argv)
    if args.gpus_per_node < 1 or args.nodes < 1:
        parser.error(f"--gpus-per-node and --nodes must be >= 1, got {args.gpus_per_node}, {args.nodes}")
    rows = sorted((size_row(name, args.gpus_per_node, args.nodes, args.deepspeed_report) for name in list_models()),
                  key=lambda row: float(row[4]))
    columns = ["model", "dim", "depth", "heads", "total M", *(f"{part} M" for part in PARTS), "largest layer M",
               "ZeRO-2 GiB/GPU", "ZeRO-3 GiB/GPU"]
    title = (f"model sizes (M parameters) and ZeRO model-state memory per GPU without offload "
             f"({args.nodes}×{args.gpus_per_node} GPUs: nodes × GPUs per node; mixed-precision Adam)")
    table = Table(title, columns, rows, right_aligned=set(columns[1:]))
    if args.deepspeed_report:
        print()
    print(table.render_markdown() if args.markdown else table.render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
