#!/usr/bin/env python
"""Inspect a checkpoint (also installed as ``itnet-inspect-checkpoint``).

Usage::

    python tools/inspect_checkpoint.py RUN/checkpoints            # the latest tag of a run
    python tools/inspect_checkpoint.py RUN/checkpoints/stepN --json
    python tools/inspect_checkpoint.py LIBRARY_FOLDER

For a DeepSpeed checkpoint (ZeRO 0–3, universal) or a library folder: the step, consumed samples per stream, the
objectives, the model config, the parameter count (tied weights once) and per-module sizes, dtypes and files —
from the headers and ``client_state`` alone (weights-only, memory-mapped; the weights are not read). ``--json``
prints the same as JSON. Bad input exits with status 2. The logic is :mod:`itnet_scale.checkpoint.inspection`; this
module is its command line only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from itnet_scale.checkpoint.deepspeed_checkpoint import deepspeed_logs_to_stderr
from itnet_scale.checkpoint.inspection import format_report, inspect_checkpoint


def inspect_main(argv: list[str] | None = None) -> int:
    """``itnet-inspect-checkpoint`` / ``tools/inspect_checkpoint.py``: exit 0, or 2 on bad input."""
    parser = argparse.ArgumentParser(prog="inspect_checkpoint", description="What a DeepSpeed checkpoint (tag "
                                     "folder or a run's checkpoints folder) or a library folder holds: step, "
                                     "consumed samples, objectives, model config, parameters, module sizes.",
                                     allow_abbrev=False)
    parser.add_argument("path", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    deepspeed_logs_to_stderr()
    try:
        report = inspect_checkpoint(args.path)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(inspect_main())
