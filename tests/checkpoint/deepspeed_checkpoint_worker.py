"""Worker for tests/checkpoint/test_deepspeed_checkpoint.py, run on 2 ranks by DeepSpeed's launcher.

``train``: 3 steps, save, 2 steps, save with keep_last=1, then record the weights and the next random draws.
``crash``: resume, take a step, and die on rank 1 in the middle of writing the next checkpoint.
``resume``: resume from ``latest`` and check weights, client state and random draws against the record.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from itnet_scale.checkpoint.deepspeed_checkpoint import load_checkpoint, save_checkpoint
from itnet_scale.parallel import init_distributed
from itnet_scale.train.rng import capture_rng_state, restore_rng_state
from tests.train.toy_engine import build, loss_of, shut_down, weights


def train(engine, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(4, 16)  # drawn from torch's global generator: resumed runs must continue it exactly
        loss = loss_of(engine, x)
        engine.backward(loss)
        engine.step()


def draws() -> torch.Tensor:
    return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))], dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "crash", "resume"])
    parser.add_argument("save_dir")
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    init_distributed("gloo")
    rank = torch.distributed.get_rank()
    engine, _ = build(args.stage)
    record = os.path.join(args.save_dir, f"record-rank{rank}.safetensors")
    if args.mode == "train":
        random.seed(rank)
        np.random.seed(rank)
        torch.manual_seed(100 + rank)
        train(engine, 3)
        save_checkpoint(engine, args.save_dir, 3, {"step": 3}, {"rng": capture_rng_state()}, keep_last=1)
        train(engine, 2)
        save_checkpoint(engine, args.save_dir, 5, {"step": 5}, {"rng": capture_rng_state()}, keep_last=1)
        save_file({**weights(engine), "draws": draws()}, record)
        return
    tag, client_state, rank_state = load_checkpoint(engine, args.save_dir)
    restore_rng_state(rank_state["rng"])
    if args.mode == "crash":
        train(engine, 1)
        if rank == 1:
            def die(*_args, **_kwargs):
                sys.stdout.flush()
                os._exit(17)  # killed while its ZeRO shard is being written

            engine._save_zero_checkpoint = die
        save_checkpoint(engine, args.save_dir, 6, {"step": 6}, {"rng": capture_rng_state()}, keep_last=1)
        return
    expected = load_file(record)
    assert tag == "step000000005" and client_state["step"] == 5, (tag, client_state["step"])
    for name, value in weights(engine).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=f"{name} differs after resume")
    torch.testing.assert_close(draws(), expected["draws"], rtol=0, atol=0, msg="random draws differ after resume")
    print(f"rank {rank}: resumed {tag} exactly")


if __name__ == "__main__":
    main()
    shut_down()
