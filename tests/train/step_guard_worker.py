"""Worker for tests/train/test_step_guard.py, run on 2 ranks.

Default: rank 1's loss turns NaN at step 2 of 4. ``--offload optimizer`` (ZeRO-2 + offload_optimizer) or
``--offload param`` (ZeRO-3 + offload_param and offload_optimizer): DeepSpeed's CPU Adam steps; 6 steps, rank 1's
loss NaN at step 2 and every rank's loss ×1000 at step 5 (the spike rule, after 2 accepted steps).
"""

from __future__ import annotations

import argparse

import torch

from itnet_scale.parallel import init_distributed
from itnet_scale.train.step_guard import StepGuard, guarded_step
from tests.train.toy_engine import build, held_weights, loss_of, moments, shut_down, weights


def same(a: dict[str, torch.Tensor] | list[torch.Tensor], b: dict[str, torch.Tensor] | list[torch.Tensor]) -> bool:
    """Bitwise equal, tensor by tensor."""
    pairs = zip(a.values(), b.values()) if isinstance(a, dict) else zip(a, b)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in pairs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--offload", choices=("none", "optimizer", "param"), default="none")
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    init_distributed("gloo")
    rank = torch.distributed.get_rank()
    offload = args.offload != "none"
    stage = {"none": args.stage, "optimizer": 2, "param": 3}[args.offload]
    engine, optimizer = build(stage, offload_optimizer=offload, offload_param=args.offload == "param")
    if offload:
        assert type(optimizer).__name__ == "GuardedCPUAdam", type(optimizer)
    guard = StepGuard(spike_factor=10.0, spike_warmup=2) if offload else StepGuard()
    vetoed = {2: "nonfinite_loss", 5: "loss_spike"} if offload else {2: "nonfinite_loss"}
    steps = 6 if offload else 4
    torch.manual_seed(rank)
    for step in range(1, steps + 1):
        loss = loss_of(engine, torch.randn(4, 16))
        if step == 2 and rank == 1:
            loss = loss + float("nan")
        if step == 5 and offload:
            loss = loss * 1000.0
        engine.backward(loss)
        grads = [p.grad for p in engine.module.parameters()] if stage == 0 else []
        reason = guard.decide(loss, grads)
        before, held_before, moments_before = weights(engine), held_weights(engine), moments(optimizer)
        lr_before = engine.get_lr()
        applied = guarded_step(engine, optimizer, reason)
        after, held_after, moments_after = weights(engine), held_weights(engine), moments(optimizer)
        assert all(torch.isfinite(w).all() for w in after.values()), f"step {step}: non-finite weights"
        if step in vetoed:
            assert reason == vetoed[step] and not applied, (step, reason, applied)
            assert same(before, after) and same(held_before, held_after), f"step {step}: weights changed"
            assert same(moments_before, moments_after), f"step {step}: optimizer state changed"
            assert engine.get_lr() == lr_before, (lr_before, engine.get_lr())  # the schedule holds too
        else:
            assert reason is None and applied, (step, reason, applied)
            assert not same(before, after) and not same(held_before, held_after), f"step {step}: no update"
            assert step == 1 or not same(moments_before, moments_after), f"step {step}: moments unchanged"
            assert engine.get_lr() != lr_before
    counters = [state["step"] for state in optimizer.state.values()]
    assert counters and all(int(s) == steps - len(vetoed) for s in counters), counters  # vetoed: never reached
    print(f"rank {rank}: skipped {dict(sorted(guard.skipped.items()))} of {steps} steps, "
          f"engine skipped_steps={engine.skipped_steps}")


if __name__ == "__main__":
    main()
    shut_down()
