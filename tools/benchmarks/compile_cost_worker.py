"""Run by the ``compile`` suite in a fresh process (its own inductor cache): training steps of the tiny model on a
sequence of ``(batch, length)`` shapes, then the same sequence again (everything compiled); one JSON line of wall
times on stdout.

Only ``create_model("tiny")`` and the model's ``losses`` are used, so the same worker measures another checkout of
the library (``--library``: put first on the import path by the suite)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from itnet_scale.models import create_model


def step(model: torch.nn.Module, batch: int, length: int, generator: torch.Generator) -> float:
    """Seconds of one forward + backward of an MLM batch of text."""
    ids = torch.randint(5, 3000, (batch, length), generator=generator)
    labels = torch.where(torch.rand(batch, length, generator=generator) < 0.15, ids, torch.full_like(ids, -100))
    start = time.perf_counter()
    losses = model({"text_ids": ids, "mlm_labels": labels})
    sum(losses.values()).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True, help="batch:length,batch:length,...")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("tiny").train()
    generator = torch.Generator().manual_seed(0)
    shapes = [tuple(int(v) for v in item.split(":")) for item in args.shapes.split(",")]
    first = [step(model, batch, length, generator) for batch, length in shapes]
    again = [step(model, batch, length, generator) for batch, length in shapes]
    print(json.dumps({"shapes": shapes, "first": first, "again": again}), flush=True)


if __name__ == "__main__":
    main()
