"""tools/model_sizes.py prints one row per model config, smallest first, with parts that add up to the total
and DeepSpeed's ZeRO estimates."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itnet_scale.models import create_model, load_model_config

TOOL = Path(__file__).resolve().parents[2] / "tools" / "model_sizes.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("model_sizes", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line]


@pytest.mark.slow
def test_prints_one_row_per_config():
    result = subprocess.run([sys.executable, str(TOOL), "--markdown", "--gpus-per-node", "4", "--nodes", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2×4 GPUs" in result.stdout
    header, *body = markdown_rows(result.stdout)
    assert header[:5] == ["model", "dim", "depth", "heads", "total M"] and header[-2:] == ["ZeRO-2 GiB/GPU",
                                                                                        "ZeRO-3 GiB/GPU"]
    assert [row[0] for row in body] == ["tiny", "small", "base", "large", "1b", "7b"]
    for row in body:
        total, parts = float(row[4]), [float(c) for c in row[5:13]]
        assert abs(sum(parts) - total) < 0.005 * total + 0.01, row  # the parts are the whole
        zero2, zero3 = float(row[14]), float(row[15])
        assert 0 < zero3 <= zero2, row  # ZeRO-3 partitions the fp16 parameters too
        # ZeRO-2 on 8 GPUs: 2 bytes/param of fp16 weights + 18 bytes/param of the rest, split 8 ways
        assert zero2 == pytest.approx(total * 1e6 * (2 + 18 / 8) / 2**30, abs=0.006), row
    base = next(row for row in body if row[0] == "base")
    assert 85 <= float(base[5]) <= 110  # a BERT-base / ViT-B sized backbone


def test_parts_add_up_and_the_tied_decoder_counts_once():
    with torch.device("meta"):
        model = create_model("tiny")
    tool = load_tool()
    counts = tool.part_counts(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # parameters() dedups ties
    decoder = model.mlm.decoder
    assert counts["MLM head"] == sum(p.numel() for p in model.mlm.parameters()) - decoder.weight.numel()
    assert counts["backbone"] == sum(p.numel() for p in model.itnet.backbone.parameters())
    assert tool.largest_layer(model) == decoder.weight.numel() + decoder.bias.numel()  # the tied decoder module


def test_zero_memory_matches_deepspeeds_own_report(capsys):
    """The table's per-GPU figures are the no-offload lines of DeepSpeed's ``*_all_cold`` reports."""
    tool = load_tool()
    total, largest = 115_952_753, 24_608_000
    zero2, zero3 = tool.zero_memory(total, largest, gpus_per_node=8, nodes=1)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    estimate_zero2_model_states_mem_needs_all_cold(total, 8, 1)
    estimate_zero3_model_states_mem_needs_all_cold(total, largest, 8, 1)
    lines = capsys.readouterr().out.splitlines()
    zero2_line = next(line for line in lines if line.endswith("offload_optimizer=none") and "param" not in line)
    no_offload = "offload_param=none, offload_optimizer=none, zero_init=1"
    zero3_line = next(line for line in lines if line.endswith(no_offload))
    assert zero2_line.split("|")[1].strip() == f"{zero2 / 2**30:.2f}GB"
    assert zero3_line.split("|")[1].strip() == f"{zero3 / 2**30:.2f}GB"


def test_block_activations_are_linear_in_tokens_and_near_the_blocks_tensors(monkeypatch):
    """The measured bytes per token do not depend on the measuring length (the scaling to long sequences holds),
    and match the block's kept tensors: ~19 widths per token at 2 bytes (LayerNorm and projection inputs, q, k, v,
    the transform's output, the MLP's 4-wide hidden twice …) plus the kernel MLP's a, b."""
    monkeypatch.setenv("ITNET_COMPILE", "0")  # as the tool runs them: eager kernels
    tool = load_tool()
    config = load_model_config("tiny")
    for layer in (0, 3):  # windowed exact, global exact
        short, long = (tool.saved_bytes_per_token(config, layer, tokens) for tokens in (128, 512))
        assert long == pytest.approx(short, rel=0.03)
        assert 15 * config.dim * 2 <= long <= 25 * config.dim * 2, long
    without, checkpointed = tool.activation_bytes(config, micro_batch=2, seq=1024)
    logits = 2 * 1024 * config.vocab_size * 6
    assert logits < checkpointed < without
    blocks = (without - logits) / config.depth  # every block alike but windows: about one block's kept bytes each
    assert checkpointed - logits == pytest.approx(2 * 1024 * config.depth * config.dim * 2 + blocks, rel=0.1)


@pytest.mark.slow
def test_cluster_table_per_gpu_memory():
    result = subprocess.run([sys.executable, str(TOOL), "--cluster", "--markdown", "--models", "tiny", "1b", "--gpus",
                             "8", "64", "--seq", "2048"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 × 2048 tokens" in result.stdout
    header, *body = markdown_rows(result.stdout)
    assert header[:3] == ["model", "GPUs", "ZeRO setting"] and header[-1] == "fits 80 GB (90 %)"
    assert len(body) == 2 * 2 * 5 and {row[2] for row in body} == {s[0] for s in load_tool().ZERO_SETTINGS}
    for row in body:
        states, plain, saved = float(row[3]), float(row[5]), float(row[6])
        assert states < saved < plain, row  # checkpointing keeps less than every block's activations
        assert row[7] == "yes" and (row[4] != "") == ("offload" in row[2]), row
    one_b = {(row[1], row[2]): float(row[3]) for row in body if row[0] == "1b"}
    assert one_b[("8", "ZeRO-3")] < one_b[("8", "ZeRO-2")] and one_b[("64", "ZeRO-3")] < one_b[("8", "ZeRO-3")]
    assert one_b[("8", "ZeRO-3 + offload_optimizer + offload_param")] < one_b[("8", "ZeRO-3 + offload_optimizer")]


@pytest.mark.parametrize(("args", "message"), [(["--models", "huge"], r"--models: unknown \['huge'\]"),
                                               (["--cluster", "--gpus", "12"], r"--gpus \[12\]: more than one node")])
def test_bad_arguments_are_named(args, message):
    result = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
