"""Sequence parallelism for the whole model: sharded over 2 ranks (and 2 × 2), the tiny model gives the outputs,
losses, gradients and optimizer step of one rank; layers that cannot be sequence-parallel are refused up front."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from torch import nn

from itnet_scale.models import create_model
from itnet_scale.nn import IntegralTransform, ITNetBackbone
from itnet_scale.parallel import (
    SequenceParallel,
    apply_sequence_parallel,
    check_sequence_parallel,
    check_sequence_parallel_size,
    sequence_parallel_deepspeed_config,
)
from tests.distributed import run_deepspeed

WORKER = Path(__file__).with_name("model_sp_worker.py")
MODEL_CASES = ["tiny/text_mlm", "tiny/image_text", "tiny/points_mpp", "lowrank_causal/text_mlm"]


def fake(size: int) -> SequenceParallel:
    """A layout without process groups: enough for the checks that run before any collective."""
    return SequenceParallel(size, 0, None, 0, 1, None, None)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(("ranks", "cases", "stages"), [
    (2, MODEL_CASES, "0,1,2,3"),
    (4, [], "0,2,3"),  # 2 data-parallel groups of 2: the engines' step on the mean over different batches
])
def test_sequence_parallel_model_matches_one_rank(ranks, cases, stages):
    """``sequence_parallel_size=2``, fp32, at 1e-5: the tiny model's hidden states, losses and parameter
    gradients (``loss_scale`` · loss, reduced as DeepSpeed reduces) on an MLM text batch of odd length with
    padding, an image–text batch (MLM + contrastive, three backbone passes) and a points batch, and a causal
    low-rank text model (carried state); then one clipped SGD step through a DeepSpeed engine with
    ``mpu=sp.mpu`` at each ZeRO stage: reduced gradients, grad norm and new weights. Bad sizes are refused."""
    process = run_deepspeed(WORKER, ["--cases", ",".join(cases), "--stages", stages], ranks=ranks, timeout=400)
    assert process.returncode == 0, process.stdout[-4000:]
    for rank in range(ranks):
        expected = ["groups match", *(f"{case} matches" for case in cases),
                    *(f"zero{stage} step matches" for stage in stages.split(",")),
                    "refused: sequence_parallel_size must be an integer >= 1, got 0",
                    "refused: sequence_parallel_size must be an integer >= 1, got -1",
                    f"refused: sequence_parallel_size={ranks + 1} does not divide the world size {ranks}",
                    "refused: zero_optimization.reduce_scatter=True cannot run with sequence_parallel_size=2",
                    "refused: zero_optimization.contiguous_gradients=False cannot run"]
        for line in expected:
            assert f"rank {rank}: {line}" in process.stdout, (rank, line, process.stdout[-3000:])


def test_layers_that_cannot_be_sequence_parallel_are_named():
    model = create_model("tiny", layers={"2": {"integrator": "montecarlo"},
                                         "3": {"integrator": "lowrank", "support": "all"}})
    with pytest.raises(ValueError) as error:
        apply_sequence_parallel(model, fake(2))
    message = str(error.value)
    assert message.startswith("sequence_parallel_size=2 cannot run this model: layer 2: the montecarlo integrator "
                              "cannot be sequence-parallel")
    assert "layer 3: the lowrank integrator with support='all' is not causal" in message
    assert "layer 0" not in message and "layer 1" not in message
    assert type(model.itnet.backbone) is ITNetBackbone  # refused before anything changed
    assert all(type(block.mixer) is IntegralTransform for block in model.itnet.backbone.blocks)
    assert apply_sequence_parallel(model, fake(1)) is model  # size 1: nothing to check, nothing to do


def test_heads_must_divide_by_the_size_for_exact_layers():
    model = create_model("tiny")  # 4 heads, exact layers
    assert check_sequence_parallel(model, 2) == [model.itnet.backbone]
    assert check_sequence_parallel(model, 4) == [model.itnet.backbone]
    with pytest.raises(ValueError, match=r"layer 0: heads=4 is not divisible by sequence_parallel_size=3 "):
        check_sequence_parallel(model, 3)
    causal = create_model("tiny", layer={"integrator": "lowrank", "support": "causal", "rank": 8},
                          layers={"0-1": {"support": "causal"}})
    assert check_sequence_parallel(causal, 3)  # the carried state splits no heads


def test_a_model_without_backbone_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="Linear holds no ITNetBackbone"):
        check_sequence_parallel(nn.Linear(2, 2), 2)
    for size in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="sequence_parallel_size must be an integer >= 1"):
            check_sequence_parallel_size(size)
    with pytest.raises(ValueError, match="sequence_parallel_size=4 does not divide the world size 6"):
        check_sequence_parallel_size(4, 6)
    check_sequence_parallel_size(3, 6)


def test_deepspeed_config_for_zero3_uses_the_all_reduce_path():
    config = {"zero_optimization": {"stage": 3, "overlap_comm": True}, "gradient_clipping": 1.0}
    adjusted = sequence_parallel_deepspeed_config(config, fake(2))
    assert adjusted["zero_optimization"] == {"stage": 3, "overlap_comm": True, "reduce_scatter": False}
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True}  # the input is not changed
    assert sequence_parallel_deepspeed_config(config, fake(1)) == config
    stage2 = {"zero_optimization": {"stage": 2, "reduce_scatter": True}}
    assert sequence_parallel_deepspeed_config(stage2, fake(2)) == stage2
    with pytest.raises(ValueError, match=r"zero_optimization.reduce_scatter=True cannot run"):
        sequence_parallel_deepspeed_config({"zero_optimization": {"stage": 3, "reduce_scatter": True}}, fake(2))


def test_the_layout_is_shared_by_copies():
    sp = fake(2)
    assert copy.deepcopy(sp) is sp
    assert sp.loss_scale == 0.5 and fake(4).loss_scale == 0.25
