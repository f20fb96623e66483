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
:mod:`itnet_scale.checkpoint` (:mod:`~itnet_scale.checkpoint.conversion`, :mod:`~itnet_scale.checkpoint.verification`,
:func:`~itnet_scale.checkpoint.deepspeed_checkpoint.convert_to_universal`); this module is its command line only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from itnet_scale.checkpoint.conversion import convert_to_library
from itnet_scale.checkpoint.deepspeed_checkpoint import convert_to_universal, deepspeed_logs_to_stderr
from itnet_scale.checkpoint.inspection import human_size
from itnet_scale.checkpoint.library import DEFAULT_MAX_SHARD_SIZE
from itnet_scale.checkpoint.sources import open_source
from itnet_scale.checkpoint.verification import VerificationError, verify_conversion
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import load_model_config

_CONVERT_DOC = """Convert checkpoints.

  library SOURCE OUTPUT   a DeepSpeed checkpoint (ZeRO 0–3, any world size, universal; a tag folder or a run's
                          checkpoints folder, whose `latest` is followed) → a library folder (config.yaml +
                          model.safetensors); --verify checks the outputs match before the folder appears.
  verify SOURCE LIBRARY   check an existing library folder against its source.
  universal CKPT OUTPUT   a ZeRO 1–3 checkpoint → DeepSpeed's universal checkpoint in OUTPUT/<tag> (resume on any
                          number of ranks with run_dir=<parent of OUTPUT>).

A library folder starts a run: `launch/pretrain.py ... init_from=OUTPUT` (or `Model.from_pretrained(OUTPUT)`).
"""



def _model_config_file(path: Path | None) -> ModelConfig | None:
    """The ``--model-config`` YAML, checked, or ``None``."""
    return load_model_config(path) if path is not None else None


def convert_main(argv: list[str] | None = None) -> int:
    """``itnet-convert-checkpoint`` / ``tools/convert_checkpoint.py``: exit 0 on success, 2 on bad input, 1 when the
    verification fails (the max abs diff printed)."""
    parser = argparse.ArgumentParser(prog="convert_checkpoint", description=_CONVERT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    library = commands.add_parser("library", help="DeepSpeed checkpoint → library format")
    library.add_argument("source", type=Path, help="tag folder, run checkpoints folder, or a library folder")
    library.add_argument("output", type=Path, help="the library folder to write (must not exist)")
    library.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="stored dtype")
    library.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="shard above this (e.g. 2GB)")
    library.add_argument("--task", choices=["pretraining", "backbone"], default=None,
                         help="backbone: write the ITNetModel alone (default: the whole pretraining model)")
    library.add_argument("--verify", action="store_true", help="check the outputs agree (max abs diff <= 1e-5)")
    library.add_argument("--tolerance", type=float, default=1e-5, help=argparse.SUPPRESS)
    library.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    library.add_argument("--model-config", type=Path, default=None,
                         help="the model config YAML, for a checkpoint that does not record one")
    verify = commands.add_parser("verify", help="verify a library folder against its source checkpoint")
    verify.add_argument("source", type=Path)
    verify.add_argument("library", type=Path)
    verify.add_argument("--tolerance", type=float, default=1e-5)
    verify.add_argument("--model-config", type=Path, default=None)
    universal = commands.add_parser("universal", help="ZeRO 1–3 checkpoint → DeepSpeed universal checkpoint")
    universal.add_argument("checkpoint", type=Path, help="a tag folder, e.g. runs/a/checkpoints/step000000200")
    universal.add_argument("output", type=Path, help="the checkpoint folder of the run that resumes it")
    args = parser.parse_args(argv)
    deepspeed_logs_to_stderr()
    try:
        if args.command == "universal":
            target = convert_to_universal(args.checkpoint, args.output)
            print(f"universal checkpoint: {target} (latest → {target.name})")
        elif args.command == "library":
            result = convert_to_library(args.source, args.output, dtype=args.dtype,
                                        max_shard_size=args.max_shard_size, task=args.task, verify=args.verify,
                                        tolerance=args.tolerance, overwrite=args.overwrite,
                                        model_config=_model_config_file(args.model_config))
            print(f"library folder: {result.output} ({result.tensors} tensors, {human_size(result.bytes, 'B')} "
                  f"{args.dtype}, {len(result.files)} files: {', '.join(result.files)})")
            if result.verification is not None:
                print(f"verified: {result.verification.summary()}")
            print(f"continue training: launch/pretrain.py --config ... init_from={result.output}")
        else:
            source = open_source(args.source, _model_config_file(args.model_config))
            print(f"verified: {verify_conversion(source, args.library, tolerance=args.tolerance).summary()}")
    except VerificationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
