#!/usr/bin/env python
"""Inspect a checkpoint (also installed as ``itnet-inspect-checkpoint``).

Usage::

    python tools/inspect_checkpoint.py RUN/checkpoints            # the latest tag of a run
    python tools/inspect_checkpoint.py RUN/checkpoints/stepN --json
    python tools/inspect_checkpoint.py LIBRARY_FOLDER

For a DeepSpeed checkpoint (ZeRO 0–3, universal) or a library folder: the step, consumed samples per stream, the
objectives, the model config, the parameter count (tied weights once) and per-module sizes, dtypes and files —
from the headers and ``client_state`` alone (weights-only, memory-mapped; the weights are not read). ``--json``
prints the same as JSON. Bad input exits with status 2. The logic is :mod:`itnet_scale.checkpoints`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from itnet_scale.checkpoints import inspect_main

if __name__ == "__main__":
    sys.exit(inspect_main())
