"""Worker for tests/train/test_step_guard.py, run on 2 ranks: rank 1's loss turns NaN at step 2."""

from __future__ import annotations

import argparse

import torch

from itnet_scale.parallel import init_distributed
from itnet_scale.train.step_guard import StepGuard, guarded_step
from tests.train.toy_engine import build, loss_of, shut_down, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    init_distributed("gloo")
    rank = torch.distributed.get_rank()
    engine, optimizer = build(args.stage)
    guard = StepGuard()
    torch.manual_seed(rank)
    for step in range(1, 5):
        loss = loss_of(engine, torch.randn(4, 16))
        if step == 2 and rank == 1:
            loss = loss + float("nan")
        engine.backward(loss)
        grads = [p.grad for p in engine.module.parameters()] if args.stage == 0 else []
        reason = guard.decide(loss, grads)
        before = weights(engine)
        lr_before = engine.get_lr()
        applied = guarded_step(engine, optimizer, reason)
        after = weights(engine)
        changed = any(not torch.equal(before[name], after[name]) for name in before)
        assert all(torch.isfinite(w).all() for w in after.values()), f"step {step}: non-finite weights"
        if step == 2:
            assert reason == "nonfinite_loss" and not applied and not changed, (step, reason, applied, changed)
            assert engine.get_lr() == lr_before, (lr_before, engine.get_lr())  # the schedule holds too
        else:
            assert reason is None and applied and changed, (step, reason, applied, changed)
            assert engine.get_lr() != lr_before
    moments = [state["step"] for state in optimizer.state.values()]
    assert all(int(s) == 3 for s in moments), moments  # the skipped step never reached the moments
    print(f"rank {rank}: skipped {dict(guard.skipped)} of 4 steps, engine skipped_steps={engine.skipped_steps}")


if __name__ == "__main__":
    main()
    shut_down()
