"""Poisoned steps are skipped on every rank, leave weights, moments and schedule alone, and are counted."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from itnet_scale.train.engine import offloads_optimizer
from itnet_scale.train.optimizer import GuardedAdamW, OptimizerSettings, VetoableStep, build_optimizer, lr_factor
from itnet_scale.train.step_guard import StepGuard
from tests.distributed import run_deepspeed

WORKER = Path(__file__).with_name("step_guard_worker.py")


@pytest.mark.parametrize("offload", [False, True], ids=["adamw", "cpu-adam"])
def test_vetoed_steps_change_nothing_until_cleared(offload):
    """Both optimizers: torch's AdamW, and DeepSpeed's CPU Adam (ZeRO-Offload's; its C++ op built by make venv)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, OptimizerSettings(lr=0.1, weight_decay=0.5), offload=offload)
    assert isinstance(optimizer, VetoableStep)
    assert isinstance(optimizer, GuardedAdamW) != offload
    assert type(optimizer).__mro__[2].__name__ == ("DeepSpeedCPUAdam" if offload else "AdamW")
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 3]  # the matrix decays; bias, norm don't
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    (model(torch.randn(2, 4)) * torch.randn(2, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.skip_next = True
    optimizer.step()
    optimizer.step()  # ZeRO calls step once per group: the veto holds until cleared
    if offload:
        optimizer.step_subgroup(0)  # the per sub-group step of DeepSpeed's ZeRO-3 offload paths is vetoed too
    assert optimizer.overflow and not optimizer.state  # no moments were created
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optimizer.skip_next = False
    optimizer.step()
    assert not optimizer.overflow and all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_offloaded_optimizer_states_are_read_from_the_final_config():
    assert offloads_optimizer({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    assert offloads_optimizer({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}})
    assert not offloads_optimizer({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "none"}}})
    assert not offloads_optimizer({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
    assert not offloads_optimizer({"zero_optimization": {"stage": 0}})


def test_schedule_warms_up_from_the_first_step_and_ends_at_the_floor():
    factors = [lr_factor(step, 4, 10, 0.1) for step in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in itertools.pairwise(factors[3:10]))
    assert factors[9] == pytest.approx(0.1) and factors[11] == pytest.approx(0.1)


def test_guard_reasons_and_spike_rule():
    guard = StepGuard(spike_factor=3.0, spike_window=5, spike_warmup=3)
    assert guard.decide(torch.tensor(float("nan"))) == "nonfinite_loss"
    assert guard.decide(torch.tensor(1.0), [torch.tensor([1.0, float("inf")])]) == "nonfinite_grad"
    assert guard.decide(torch.tensor(10.0)) is None  # no history yet: not a spike
    for value in (1.0, 1.0):
        assert guard.decide(torch.tensor(value)) is None
    assert guard.decide(torch.tensor(50.0)) == "loss_spike"  # 50 > 3 × mean(10, 1, 1)
    assert guard.decide(torch.tensor(2.0), [None, torch.ones(3)]) is None
    assert dict(guard.skipped) == {"nonfinite_loss": 1, "nonfinite_grad": 1, "loss_spike": 1}
    with pytest.raises(ValueError, match=r"spike_factor must be 0 \(off\) or > 1"):
        StepGuard(spike_factor=0.5)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_nan_on_one_rank_skips_the_step_on_all(stage):
    """2 ranks; rank 1's loss is NaN at step 2 of 4: both ranks skip it (weights, moments and lr unchanged),
    the other steps apply, every weight stays finite (asserted in the worker)."""
    process = run_deepspeed(WORKER, ["--stage", str(stage)])
    assert process.returncode == 0, process.stdout[-4000:]
    for rank in (0, 1):
        assert f"rank {rank}: skipped {{'nonfinite_loss': 1}} of 4 steps" in process.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("offload", ["optimizer", "param"])
def test_offloaded_steps_run_on_deepspeeds_cpu_adam_and_are_vetoed_the_same(offload):
    """2 ranks, DeepSpeed's CPU Adam (ZeRO-Offload): ZeRO-2 with offload_optimizer, ZeRO-3 with offload_param (and
    offload_optimizer). A step vetoed for a NaN loss on one rank (step 2) and one vetoed by the spike rule (step 5)
    leave the fp32 master weights, the weights the ranks hold and every Adam moment bitwise unchanged, and the
    schedule where it was; the applied steps change all of them (asserted in the worker)."""
    process = run_deepspeed(WORKER, ["--offload", offload])
    assert process.returncode == 0, process.stdout[-4000:]
    for rank in (0, 1):
        assert f"rank {rank}: skipped {{'loss_spike': 1, 'nonfinite_loss': 1}} of 6 steps" in process.stdout
