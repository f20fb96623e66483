"""Parameter counts of every model config (``configs/model``) and DeepSpeed's ZeRO memory estimate per GPU.

Usage::

    python tools/model_sizes.py [--markdown] [--gpus-per-node 8] [--nodes 1] [--deepspeed-report] [--models 1b 7b]
    python tools/model_sizes.py --cluster --models 1b 7b [--gpus 8 64 512] [--micro-batch 1] [--seq 4096]

Models are built on the ``meta`` device, so even ``large`` costs no memory. Counts are per part of the
pretraining model and add up to the total: the backbone, each encoder, each pretraining head (the MLM decoder
is tied to the text embedding, which is counted once, in the text encoder). "largest layer" is the largest
module's own parameters, as DeepSpeed's ``model_to_params`` defines it for ZeRO-3.

Memory: the model states (fp16/bf16 parameters and gradients, fp32 master weights and Adam moments) per GPU for
ZeRO-2 and ZeRO-3 without offload, from DeepSpeed's estimators — the functions its
``estimate_zero2_model_states_mem_needs_all_cold`` / ``estimate_zero3_model_states_mem_needs_all_cold`` call
for each offload option (those print rather than return). ``--deepspeed-report`` also prints their reports
(every offload option) for each config.

``--cluster``: per-GPU memory of training each model on 8 to 512 GPUs (8 per node): the model states of ZeRO-2 and
ZeRO-3, each without offload, with ``offload_optimizer`` and (ZeRO-3) with ``offload_param`` too, from the same
DeepSpeed estimators (with their CPU memory per node), plus the activations of one micro-batch of ``--micro-batch``
sequences of ``--seq`` tokens, without and with activation checkpointing of every block.

Activations are **measured, then scaled**: one block of each distinct layer setting of the config (window / global
exact / low rank …) runs a training forward for real, at its full width, on ``MEASURE_TOKENS`` tokens (batch 1,
fp32, kernels eager) under :func:`torch.autograd.graph.saved_tensors_hooks`; the distinct storages autograd keeps for
backward, parameters excluded, give bytes per token — floating-point ones counted at 2 bytes (bf16 training). The
blocks keep O(N) per sequence (the exact integrator's tiles are recomputed in backward, low rank keeps chunk
states), so this scales linearly to ``--seq``. Without checkpointing a micro-batch keeps every block's bytes; with
checkpointing of every block it keeps each block's input (``dim`` × 2 bytes per token) plus one block's bytes while
that block recomputes. Both add the MLM head's logits over every text token (``vocab`` × (2 bytes bf16 + 4 bytes of
the fp32 cross-entropy)). Not counted: the encoders' own activations (small beside the blocks), temporary buffers of
a kernel, allocator fragmentation, ZeRO's communication buckets: the "fits" column counts on 90 % of the GPU's
memory (``USABLE_SHARE``) and leaves the rest for those.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

import torch

from benchmarks import Table
from itnet_scale.models import ModelConfig, create_model, list_models, load_model_config
from itnet_scale.nn import ITNetBlock
from itnet_scale.nn.encoders import POS_DIM, text_positions

#: Tokens of the measuring forward (one sequence): long enough that per-sequence constants vanish, short enough
#: that a 7B block's forward takes seconds on a CPU.
MEASURE_TOKENS = 256
GIB = 2**30
TRAINING_FLOAT_BYTES = 2  # bf16 activations
#: (name, ZeRO stage, offload_optimizer, offload_param) of the --cluster table.
ZERO_SETTINGS = (("ZeRO-2", 2, False, False), ("ZeRO-2 + offload_optimizer", 2, True, False),
                 ("ZeRO-3", 3, False, False), ("ZeRO-3 + offload_optimizer", 3, True, False),
                 ("ZeRO-3 + offload_optimizer + offload_param", 3, True, True))
DEFAULT_GPUS = (8, 16, 32, 64, 128, 256, 512)
#: The share of a GPU's memory the "fits" column counts on: the rest for what the estimate leaves out.
USABLE_SHARE = 0.9

PARTS = ("backbone", "text encoder", "image encoder", "point encoder", "MLM head", "ITC head", "MPM head",
         "MPP head")


def part_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of each part of a pretraining model (0 for a part its ``modalities`` leave out); a parameter
    shared by two parts (the tied MLM decoder) counts in the first, so the parts add up to the total."""
    itnet = model.itnet
    modules = (itnet.backbone, itnet.encoder.text, itnet.encoder.image, itnet.encoder.points, model.mlm, model.itc,
               model.mpm, model.mpp)
    seen: set[int] = set()
    counts = {}
    for name, module in zip(PARTS, modules, strict=True):
        fresh = [p for p in module.parameters() if id(p) not in seen] if module is not None else []
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


def zero_setting_memory(total: int, largest: int, stage: int, offload_optimizer: bool, offload_param: bool,
                        gpus_per_node: int, nodes: int) -> tuple[int, int]:
    """``(bytes per GPU, CPU bytes per node)`` of the model states under one ZeRO setting (DeepSpeed's estimators;
    additional_buffer_factor 1.5 on the CPU side, as its reports use)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=offload_optimizer)
    else:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes,
                                                            cpu_offload=offload_optimizer,
                                                            cpu_offload_params=offload_param, zero_init=True)
    return int(gpu), int(cpu)


def saved_bytes_per_token(config: ModelConfig, layer_index: int, tokens: int = MEASURE_TOKENS) -> float:
    """Bytes per token that block ``layer_index`` of ``config`` keeps for backward in bf16 training (measured in
    fp32, floating-point storages counted at :data:`TRAINING_FLOAT_BYTES`; see the module doc)."""
    transform = config.transforms()[layer_index]
    torch.manual_seed(0)
    block = ITNetBlock(config.dim, config.heads, pos_dim=POS_DIM, mlp_ratio=config.mlp_ratio, dropout=config.dropout,
                       drop_path=config.drop_path * layer_index / max(config.depth - 1, 1), norm_eps=config.norm_eps,
                       transform=transform).train()
    parameters = {p.untyped_storage().data_ptr() for p in block.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            scale = TRAINING_FLOAT_BYTES / t.element_size() if t.is_floating_point() else 1.0
            kept[storage.data_ptr()] = int(storage.nbytes() * scale)
        return t

    x = torch.randn(1, tokens, config.dim, requires_grad=True)
    pos = text_positions(tokens)[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, pos)
    return sum(kept.values()) / tokens


def activation_bytes(config: ModelConfig, micro_batch: int, seq: int) -> tuple[int, int]:
    """``(without, with activation checkpointing of every block)``: bytes one micro-batch of ``micro_batch``
    sequences of ``seq`` tokens keeps for backward (see the module doc)."""
    layers = [asdict(layer) for layer in config.layer_configs()]
    per_token: dict[str, float] = {}
    per_block = []
    for index, layer in enumerate(layers):
        key = repr(layer)
        if key not in per_token:
            per_token[key] = saved_bytes_per_token(config, index)
        per_block.append(per_token[key])
    tokens = micro_batch * seq
    logits = tokens * config.vocab_size * (TRAINING_FLOAT_BYTES + 4)
    without = tokens * sum(per_block) + logits
    checkpointed = tokens * (config.depth * config.dim * TRAINING_FLOAT_BYTES + max(per_block)) + logits
    return int(without), int(checkpointed)


def cluster_table(names: list[str], gpus: list[int], gpus_per_node: int, micro_batch: int, seq: int,
                  gpu_gib: float) -> Table:
    """Per-GPU memory of each model under each ZeRO setting and GPU count (see the module doc)."""
    columns = ["model", "GPUs", "ZeRO setting", "model states GiB/GPU", "CPU GiB/node", "+ activations GiB",
               "+ activations, checkpointed GiB", f"fits {gpu_gib:g} GB (90 %)"]
    title = (f"per-GPU memory: model states (DeepSpeed's estimators, mixed-precision Adam) + activations of one "
             f"micro-batch of {micro_batch} × {seq} tokens (bf16; measured per block and scaled, see "
             f"tools/model_sizes.py), without / with activation checkpointing of every block; {gpus_per_node} GPUs "
             f"per node")
    table = Table(title, columns, right_aligned=set(columns[1:2] + columns[3:7]))
    budget = USABLE_SHARE * gpu_gib * 1e9 / GIB  # a "80 GB" GPU holds 80·10⁹ bytes, ~74.5 GiB; 90 % of it usable
    for name in names:
        config = load_model_config(name)
        with torch.device("meta"):
            model = create_model(config)
        total, largest = sum(part_counts(model).values()), largest_layer(model)
        without, checkpointed = activation_bytes(config, micro_batch, seq)
        for count in gpus:
            nodes = max(1, count // gpus_per_node)
            per_node = min(count, gpus_per_node)
            for label, stage, offload_optimizer, offload_param in ZERO_SETTINGS:
                states, cpu = zero_setting_memory(total, largest, stage, offload_optimizer, offload_param, per_node,
                                                  nodes)
                plain, saved = (states + without) / GIB, (states + checkpointed) / GIB
                fits = "yes" if plain <= budget else "with checkpointing" if saved <= budget else "no"
                table.add_row([name, str(count), label, f"{states / GIB:.2f}",
                               f"{cpu / GIB:.0f}" if offload_optimizer else "", f"{plain:.2f}", f"{saved:.2f}", fits])
    return table


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
    parser.add_argument("--models", nargs="+", metavar="NAME", help="model configs (default: all)")
    parser.add_argument("--cluster", action="store_true",
                        help="per-GPU memory on --gpus GPUs, every ZeRO/offload setting, with activations")
    parser.add_argument("--gpus", type=int, nargs="+", default=list(DEFAULT_GPUS),
                        help="GPU counts of --cluster (default 8 16 32 64 128 256 512)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU of --cluster (default 1)")
    parser.add_argument("--seq", type=int, default=4096, help="tokens per sequence of --cluster (default 4096)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU for the fits column (default 80)")
    args = parser.parse_args(argv)
    if args.gpus_per_node < 1 or args.nodes < 1:
        parser.error(f"--gpus-per-node and --nodes must be >= 1, got {args.gpus_per_node}, {args.nodes}")
    names = args.models or list_models()
    unknown = [name for name in names if name not in list_models()]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list_models()}")
    if args.cluster:
        if min(args.gpus) < 1 or args.micro_batch < 1 or args.seq < 2 or args.gpu_memory <= 0:
            parser.error("--gpus, --micro-batch must be >= 1, --seq >= 2, --gpu-memory > 0")
        bad = [count for count in args.gpus if count > args.gpus_per_node and count % args.gpus_per_node]
        if bad:
            parser.error(f"--gpus {bad}: more than one node must be whole nodes of --gpus-per-node="
                         f"{args.gpus_per_node}")
        os.environ["ITNET_COMPILE"] = "0"  # the measuring forwards run once: eager kernels
        table = cluster_table(names, args.gpus, args.gpus_per_node, args.micro_batch, args.seq, args.gpu_memory)
        print(table.render_markdown() if args.markdown else table.render_text())
        return 0
    rows = sorted((size_row(name, args.gpus_per_node, args.nodes, args.deepspeed_report) for name in names),
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
