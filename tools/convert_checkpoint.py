#!/usr/bin/env python
"""Convert checkpoints (also installed as ``itnet-convert-checkpoint``).

Usage::

    python tools/convert_checkpoint.py library RUN/checkpoints OUT [--dtype fp32|bf16|fp16] [--max-shard-size 5GB]
                                               [--task backbone] [--verify] [--overwrite]
    python tools/convert_checkpoint.py verify RUN/checkpoints/stepN OUT
    python tools/convert_checkpoint.py universal RUN/checkpoints/stepN NEW_RUN/checkpoints

``library``: a DeepSpeed checkpoint (ZeRO 0–3, any world size, universal; a tag folder, or a run's checkpoint
folder whose ``latest`` is followed) → a library folder (``config.yaml`` + ``model.safetensors``, sharded with an
index above ``--max-shard-size``), streamed through DeepSpeed's own consolidation; ``--verify`` runs a fixed batch
through the source and the converted model and fails (exit 1, the max abs diff printed) unless they agree to 1e-5.
The folder starts a run with ``launch/pretrain.py ... init_from=OUT`` or loads with ``Model.from_pretrained(OUT)``.

``universal``: a ZeRO 1–3 DeepSpeed checkpoint → DeepSpeed's universal checkpoint (``ds_to_universal``, reading
weights-only), written as ``NEW_RUN/checkpoints/stepN`` with ``latest`` pointing at it, so that
``launch/pretrain.py ... run_dir=NEW_RUN`` resumes it on any number of ranks.

Bad input exits with status 2 and a message naming the file and the tensor. The logic is
:mod:`itnet_scale.checkpoints`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from itnet_scale.checkpoints import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
