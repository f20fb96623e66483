#!/usr/bin/env python
"""Convert checkpoints.

Usage::

    python tools/convert_checkpoint.py universal RUN/checkpoints/stepN NEW_RUN/checkpoints

``universal``: a ZeRO 1–3 DeepSpeed checkpoint → DeepSpeed's universal checkpoint (``ds_to_universal``, reading
weights-only), written as ``NEW_RUN/checkpoints/stepN`` with ``latest`` pointing at it, so that
``launch/pretrain.py ... run_dir=NEW_RUN`` resumes it on any number of ranks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from itnet_scale.train.checkpoint import convert_to_universal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    universal = commands.add_parser("universal", help="ZeRO 1–3 checkpoint → DeepSpeed universal checkpoint")
    universal.add_argument("checkpoint", type=Path, help="a tag folder, e.g. runs/a/checkpoints/step000000200")
    universal.add_argument("output", type=Path, help="the checkpoint folder of the run that resumes it")
    args = parser.parse_args(argv)
    try:
        target = convert_to_universal(args.checkpoint, args.output)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"universal checkpoint: {target} (latest → {target.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
