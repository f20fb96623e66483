"""Parameter counts of every model config, and DeepSpeed's estimate of the ZeRO memory per GPU.

Usage::

    python tools/model_sizes.py [--gpus-per-node 8] [--nodes 1] [--markdown]

Models are built on the ``meta`` device, so even ``large`` costs no memory. Counts are per part: the backbone,
each encoder (with the modality embeddings in "text"), the pretraining heads (the MLM decoder is tied to the
text embedding and counted once). Memory: DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
``estimate_zero3_model_states_mem_needs``) for mixed-precision Adam without offload, per GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itnet_scale.benchmarking import Table
from itnet_scale.models import create_model, list_models


def count(module: torch.nn.Module) -> int:
    """Distinct parameters of ``module`` (tied weights once)."""
    return sum({id(p): p.numel() for p in module.parameters()}.values())


def sizes(name: str, gpus_per_node: int, nodes: int) -> list[str]:
    """One table row for model ``name``."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    with torch.device("meta"):
        model = create_model(name)
    itnet = model.itnet
    total = count(model)
    heads = total - count(itnet)
    largest = max(p.numel() for p in model.parameters())
    _, zero2 = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes, cpu_offload=False,
                                                        cpu_offload_params=False)
    millions = [count(part) / 1e6 for part in (itnet.backbone, itnet.text, itnet.image, itnet.points)]
    millions[1] += count(itnet.modality) / 1e6
    config = model.itnet.config
    return [name, f"{config.dim}", f"{config.depth}", f"{config.heads}", f"{total / 1e6:.2f}",
            *(f"{m:.3f}" for m in millions), f"{heads / 1e6:.2f}", f"{zero2 / 2**30:.2f}", f"{zero3 / 2**30:.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    gpus = f"{args.nodes}×{args.gpus_per_node} GPUs"
    table = Table(f"model sizes (M parameters; ZeRO memory per GPU for model states, {gpus}, GiB)",
                  ["model", "dim", "depth", "heads", "total M", "backbone M", "text enc M", "image enc M",
                   "point enc M", "heads M", "ZeRO-2 GiB", "ZeRO-3 GiB"],
                  sorted((sizes(name, args.gpus_per_node, args.nodes) for name in list_models()),
                         key=lambda row: float(row[4])),
                  right_aligned={"dim", "depth", "heads", "total M", "backbone M", "text enc M", "image enc M",
                                 "point enc M", "heads M", "ZeRO-2 GiB", "ZeRO-3 GiB"})
    print(table.render_markdown() if args.markdown else table.render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
