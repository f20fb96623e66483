#!/usr/bin/env python
"""Pretrain ITNet on DeepSpeed: ``deepspeed launch/pretrain.py --config configs/pretrain/NAME.yaml [key=value ...]``.

Parses the config (errors name the bad key before anything starts), then hands it to the loop in
:mod:`itnet_scale.train.loop`. ``--deepspeed_config FILE`` merges a DeepSpeed JSON of your own over the generated
one. Re-running the same command resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from itnet_scale.train.config import load_pretrain_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--config", type=Path, help="a pretraining YAML (configs/pretrain/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (omegaconf dot-list)")
    parser.add_argument("--deepspeed_config", type=Path, default=None, help="your DeepSpeed JSON, over ours")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    args = parser.parse_args(argv)
    try:
        config = load_pretrain_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported once the config is good: a bad key is reported in a second, before DeepSpeed and the model load.
    from itnet_scale.train.loop import run_pretraining

    run_pretraining(config, args.deepspeed_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
