#!/usr/bin/env python
"""Held-out evaluation of a pretrained model, as pretraining runs it.

Usage::

    python tools/evaluate_pretrained.py CHECKPOINT --config configs/pretrain/NAME.yaml [key=value ...]
    deepspeed --num_accelerators N tools/evaluate_pretrained.py CHECKPOINT --config ... [--json OUT.json]

``CHECKPOINT``: a DeepSpeed checkpoint (a tag folder, or a run's checkpoint folder whose ``latest`` is followed;
any ZeRO stage and world size, read weights-only) or a library-format folder of a pretraining model. The config
gives the data (its streams' ``heldout`` sets), the tokenizer and the ``eval`` section; the overrides are the
pretraining config's (e.g. ``eval.max_batches=10``). Under ``deepspeed`` every rank evaluates its share once.
Prints the metrics as a Markdown table (rank 0); ``--json`` also writes them. Bad input exits with status 2 and
one line naming it. The evaluation is :mod:`itnet_scale.train.evaluation`; this is its command line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist

from itnet_scale.checkpoint.sources import load_source_model, open_source
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.parallel import init_distributed
from itnet_scale.train.command_line import (
    add_config_arguments,
    exit_process,
    leave_process_group,
    report_startup_error,
)
from itnet_scale.train.config import load_pretrain_config
from itnet_scale.train.evaluation import Evaluator, metrics_table
from itnet_scale.train.pretrain_data import MicroBatchBuilder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("checkpoint", type=Path, help="a DeepSpeed checkpoint or a library-format folder")
    add_config_arguments(parser, config_required=True)
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    args = parser.parse_intermixed_args(argv)
    try:
        metrics = evaluate(args.checkpoint, args.config, args.overrides, allow_pipe_urls=args.allow_pipe_urls)
    except (ValueError, FileNotFoundError) as error:
        return report_startup_error(error)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"held-out evaluation of {args.checkpoint}:\n{metrics_table([metrics])}", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return 0


def evaluate(checkpoint: Path, config_path: Path, overrides: list[str], *,
             allow_pipe_urls: bool = False) -> dict[str, float]:
    """The held-out metrics of ``checkpoint`` under the pretraining config (``{"step": …, <metric>: …}``)."""
    config = load_pretrain_config(config_path, overrides)
    source = open_source(checkpoint)
    if source.task != "pretraining":
        raise ValueError(f"{checkpoint} holds a {source.task!r} model; held-out evaluation needs a pretraining "
                         "model (its contrastive and masked-modeling heads)")
    data, tokenizer = config.data_config(), Tokenizer.from_dir(config.tokenizer)
    model = load_source_model(source)
    assert isinstance(model, ITNetForPretraining)
    if model.itnet.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{checkpoint}: the model's vocab_size={model.itnet.config.vocab_size} is smaller than "
                         f"the tokenizer's {tokenizer.vocab_size} ids ({config.tokenizer})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher with several ranks
        init_distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
        return MicroBatchBuilder(stream, kind, index, config.tokenizer, config.objectives, model.itnet.config,
                                 data.seed)

    evaluator = Evaluator(data, config.eval, tokenizer, builder, prompt_tokens=config.objectives.max_caption_tokens,
                          rank=rank, world_size=world, allow_pipe_urls=allow_pipe_urls)
    if not evaluator:
        raise ValueError(f"no stream of {config.data} names a heldout shard set: nothing to evaluate")
    metrics = {"step": float(source.info.get("step") or 0), **evaluator.evaluate(model)}
    leave_process_group()
    return metrics


if __name__ == "__main__":
    exit_process(main())
