#!/usr/bin/env python
"""Pretrain ITNet on DeepSpeed: ``deepspeed launch/pretrain.py --config configs/pretrain/NAME.yaml [key=value ...]``.

Parses the config (errors name the bad key before anything starts), then hands it to the pretraining recipe on the
trainer core (:mod:`itnet_scale.train.pretraining`). ``--deepspeed_config FILE`` merges a DeepSpeed JSON of your own
over the generated one. ``--allow_pipe_urls`` lets stream paths be ``pipe:`` shell commands (a config alone never
runs one). Re-running the same command resumes from the run's latest checkpoint.

A problem found before training starts (the config, the data: a missing shard set, a bad shard under
``strict: true`` …) is printed once, by rank 0, as one ``error: …`` line, and every rank exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from itnet_scale.train.command_line import (
    add_config_arguments,
    exit_process,
    leave_process_group,
    report_startup_error,
)
from itnet_scale.train.config import load_pretrain_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_config_arguments(parser)
    parser.add_argument("--deepspeed_config", type=Path, default=None, help="your DeepSpeed JSON, over ours")
    args = parser.parse_args(argv)
    try:
        config = load_pretrain_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as error:
        return report_startup_error(error)
    # Imported once the config is good: a bad key is reported in a second, before DeepSpeed and the model load.
    from itnet_scale.train.pretraining import Pretrainer

    try:
        trainer = Pretrainer(config, args.deepspeed_config, allow_pipe_urls=args.allow_pipe_urls)
    except (ValueError, FileNotFoundError) as error:  # bad input found while setting up: named, not a traceback
        return report_startup_error(error)
    trainer.run()
    leave_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
