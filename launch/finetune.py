#!/usr/bin/env python
"""Fine-tune ITNet on a benchmark: ``deepspeed launch/finetune.py --config configs/finetune/TASK.yaml data_root=DIR
[init_from=MODEL] [key=value ...]``.

Parses the config (errors name the bad key before anything starts), then hands it to the fine-tuning recipe on the
trainer core (:mod:`itnet_scale.train.finetuning`). ``init_from``: a library-format model folder or a DeepSpeed
checkpoint folder (converted on the fly); without it the model trains from scratch. ``eval_only=true split=test``
evaluates ``init_from`` and writes the benchmark's submission file and ``metrics.json`` into ``run_dir``.
``--deepspeed_config FILE`` merges a DeepSpeed JSON of your own over the generated one. Re-running the same command
resumes from the run's latest checkpoint, mid-epoch included.

A problem found before training starts (the config, a missing or malformed benchmark file …) is printed once, by
rank 0, as one ``error: …`` line, and every rank exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from itnet_scale.train.command_line import add_config_arguments, exit_process, leave_process_group, report_startup_error
from itnet_scale.train.finetune_config import load_finetune_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_config_arguments(parser, what="a fine-tuning YAML (configs/finetune/*.yaml)", pipe_urls=False)
    parser.add_argument("--deepspeed_config", type=Path, default=None, help="your DeepSpeed JSON, over ours")
    args = parser.parse_args(argv)
    try:
        config = load_finetune_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as error:
        return report_startup_error(error)
    # Imported once the config is good: a bad key is reported in a second, before DeepSpeed and the model load.
    from itnet_scale.train.finetuning import Finetuner

    try:
        trainer = Finetuner(config, args.deepspeed_config)
    except (ValueError, FileNotFoundError) as error:  # bad input found while setting up: named, not a traceback
        return report_startup_error(error)
    if config.eval_only:
        trainer.evaluate_only()
    else:
        trainer.run()
    leave_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
