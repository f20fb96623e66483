#!/usr/bin/env python
"""The kernel atlas of a pretrained model: which heads became convolutions, attentions, recurrences.

Usage::

    python tools/kernel_atlas.py CHECKPOINT [--config configs/pretrain/NAME.yaml] [key=value ...] [--out DIR]
        [--queries 10,20] [--samples 8] [--streams text,image] [--radius 1.5]

``CHECKPOINT``: a DeepSpeed checkpoint (a tag folder, or a run's checkpoint folder whose ``latest`` is followed;
read weights-only) or a library-format folder of a pretraining model. The batch is the first held-out batch of each
stream of the pretraining config (default: the run's own ``config.yaml`` beside its ``checkpoints`` folder), its
first ``--samples`` samples, unmasked. For each stream it writes ``OUT/<stream>/atlas.json`` (every head's scores
and nearest special case), ``summary.png`` (layers × heads) and ``kernels_<k>.png`` (``K(i,·)`` of the queries, per
layer), and prints the table. Bad input exits with status 2 and one ``error: …`` line. The atlas is
:mod:`itnet_scale.atlas`; from Python, ``itnet_scale.atlas.atlas(model, batch)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from itnet_scale.atlas import Atlas, AtlasSettings, atlas, require_matplotlib
from itnet_scale.checkpoint.sources import load_source_model, open_source
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.train.command_line import add_config_arguments, report_startup_error
from itnet_scale.train.config import load_pretrain_config
from itnet_scale.train.evaluation import Evaluator
from itnet_scale.train.pretrain_data import MicroBatchBuilder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("checkpoint", type=Path, help="a DeepSpeed checkpoint or a library-format folder")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("atlas"), help="output folder (default: ./atlas)")
    parser.add_argument("--queries", default=None,
                        help="comma-separated query token indices for the heatmaps (default: three spread ones)")
    parser.add_argument("--samples", type=int, default=8, help="samples of each batch (default 8; at least 2)")
    parser.add_argument("--streams", default=None, help="comma-separated streams (default: every held-out one)")
    parser.add_argument("--radius", type=float, default=AtlasSettings.radius,
                        help=f"the locality radius in position units (default {AtlasSettings.radius})")
    args = parser.parse_intermixed_args(argv)
    try:
        queries = _queries(args.queries)
        atlases = kernel_atlases(args.checkpoint, args.config, args.overrides, samples=args.samples,
                                 streams=_names(args.streams), settings=AtlasSettings(radius=args.radius),
                                 allow_pipe_urls=args.allow_pipe_urls)
        for stream, result in atlases.items():
            result.write(args.out / stream, queries=queries, title=f"{args.checkpoint} — {stream}")
            print(f"kernel atlas of {args.checkpoint} on held-out {stream} → {args.out / stream}:\n{result.table()}\n",
                  flush=True)
    except (ValueError, FileNotFoundError, ImportError) as error:
        return report_startup_error(error)
    return 0


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _queries(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(q) for q in text.split(",")]
    except ValueError:
        raise ValueError(f"--queries must be comma-separated token indices, got {text!r}") from None


def run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the run a DeepSpeed checkpoint belongs to (``RUN/checkpoints[/TAG]``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file():
            return folder.parent / "config.yaml"
    if checkpoint.name == "checkpoints" and (checkpoint.parent / "config.yaml").is_file():
        return checkpoint.parent / "config.yaml"
    raise ValueError(f"{checkpoint} is not inside a run folder with a config.yaml; pass --config PRETRAIN_YAML")


def kernel_atlases(checkpoint: Path, config_path: Path | None, overrides: list[str], *, samples: int = 8,
                   streams: list[str] | None = None, settings: AtlasSettings | None = None,
                   allow_pipe_urls: bool = False) -> dict[str, Atlas]:
    """Per held-out stream of the pretraining config, the :class:`~itnet_scale.atlas.Atlas` of ``checkpoint``'s
    model on the first ``samples`` samples of its first held-out batch."""
    if samples < 2:
        raise ValueError(f"--samples must be >= 2 (content dependence compares samples), got {samples}")
    require_matplotlib()  # before any work: the figures are what this command is for
    source = open_source(checkpoint)
    config = load_pretrain_config(config_path or run_config(checkpoint), overrides)
    if source.task != "pretraining":
        raise ValueError(f"{checkpoint} holds a {source.task!r} model; this command reads a pretraining model with "
                         "its pretraining config's held-out data (from Python: itnet_scale.atlas.atlas(model, batch))")
    data, tokenizer = config.data_config(), Tokenizer.from_dir(config.tokenizer)
    model = load_source_model(source)
    model_config = model.itnet.config

    def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
        return MicroBatchBuilder(stream, kind, index, config.tokenizer, config.objectives, model_config, data.seed)

    evaluator = Evaluator(data, config.eval, tokenizer, builder, prompt_tokens=config.objectives.max_caption_tokens,
                          allow_pipe_urls=allow_pipe_urls)
    batches = evaluator.inspection_batches(samples, next(model.parameters()).dtype)
    if streams is not None:
        unknown = sorted(set(streams) - set(batches))
        if unknown:
            raise ValueError(f"--streams names {unknown}, which have no held-out batch; those with one: "
                             f"{sorted(batches)}")
        batches = {name: batches[name] for name in streams}
    if not batches:
        raise ValueError(f"no stream of {config.data} has a held-out batch: nothing to inspect")
    return {name: atlas(model, batch, settings=settings) for name, batch in batches.items()}


if __name__ == "__main__":
    raise SystemExit(main())
