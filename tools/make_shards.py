"""Write webdataset shard sets (``{prefix}-%06d.tar`` + ``index.json``) from real data formats, or the demo data;
index existing webdataset tars in place; check a set (a folder or URL) by reading every shard.

Usage::

    python tools/make_shards.py text INPUT --output DIR [--max-count N] [--max-bytes B] [--prefix P]
    python tools/make_shards.py images ROOT --output DIR [...]          # ROOT/<class>/*.jpg|*.jpeg|*.png
    python tools/make_shards.py imagenet ROOT --output DIR [--split train|validation] [...]  # train/, val/ + CSV
    python tools/make_shards.py captions LIST.jsonl --output DIR [--image-root R] [...]
    python tools/make_shards.py points ROOT --output DIR [--num-points P] [--seed S] [...]  # .npy/.txt/.off
    python tools/make_shards.py glue GLUE_DIR --task qqp [--split train] --output DIR [...]  # a labelled GLUE split
    python tools/make_shards.py modelnet40 ROOT --output DIR [--split S ...] [--num-points P] [--seed S] [...]
    python tools/make_shards.py demo --output DIR [--seed S] [--num-points P] [--shard-samples N]
    python tools/make_shards.py index DIR --kind image_text [--overwrite]   # img2dataset / open_clip tars, in place
    python tools/make_shards.py check LOCATION [--allow_pipe_urls]          # a folder or http(s):// URL

A benchmark's labelled training split written this way (``imagenet``, ``glue``, ``modelnet40``) streams into
fine-tuning with ``train_shards.path=DIR`` (``launch/finetune.py``).

Each subcommand is one function registered with :func:`subcommand`; it receives the parsed arguments and
returns the summaries it prints (one line each: samples, shards, bytes, skipped inputs per reason).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from itnet_scale.data.demo import DEMO_SETS, DEMO_SHARD_SAMPLES, HELDOUT_SETS, build_demo_data
from itnet_scale.data.shards import (
    KIND_MEMBERS,
    BadShardError,
    ShardSetSummary,
    index_existing_shards,
    read_index,
    read_shard,
    shard_files,
    write_caption_shards,
    write_image_folder_shards,
    write_point_cloud_shards,
    write_text_shards,
)
from itnet_scale.tasks.glue import GLUE_TASKS, write_glue_shards
from itnet_scale.tasks.imagenet import write_imagenet_shards
from itnet_scale.tasks.modelnet40 import LAYOUTS, SAMPLINGS, SPLITS, ModelNet40Settings, write_modelnet40_shards

Run = Callable[[argparse.Namespace], list[ShardSetSummary]]
Argument = tuple[tuple[str, ...], dict[str, Any]]  # (flags, add_argument keywords)
#: name -> (help, extra arguments, takes INPUT, writes a set to --output, function)
SUBCOMMANDS: dict[str, tuple[str, list[Argument], bool, bool, Run]] = {}
NUM_POINTS = (("--num-points",), {"type": int, "default": 1024, "help": "points per cloud (default 1024)"})
SEED = (("--seed",), {"type": int, "default": 0, "help": "random seed (default 0)"})


def subcommand(name: str, help: str, *arguments: Argument, from_input: bool = True,
               writes: bool = True) -> Callable[[Run], Run]:
    """Register a function as subcommand ``name`` with its extra ``arguments``; ``from_input`` subcommands take
    ``INPUT``; ``writes`` subcommands take ``--output`` and ``--overwrite``, and with ``from_input`` the shard-writer
    options (``--max-count``, ``--max-bytes``, ``--prefix``)."""

    def register(function: Run) -> Run:
        SUBCOMMANDS[name] = (help, list(arguments), from_input, writes, function)
        return function

    return register


def writer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ShardSetWriter` options shared by every writer subcommand."""
    return {"prefix": args.prefix, "max_count": args.max_count, "max_bytes": args.max_bytes,
            "overwrite": args.overwrite}


@subcommand("text", "plain .txt files (a file or a folder), one sample per blank-line separated paragraph")
def text(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_text_shards(args.input, args.output, **writer_options(args))]


@subcommand("images", "an image folder ROOT/<class>/*.jpg|*.jpeg|*.png (class index = sorted folder order)")
def images(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_image_folder_shards(args.input, args.output, **writer_options(args))]


@subcommand("imagenet", "a labelled split of an ImageNet download: ROOT/train/<wnid>/*, ROOT/val/ with "
            "LOC_val_solution.csv or in class folders, or the Kaggle folder (see itnet_scale.tasks.imagenet); the "
            "wnids are the classes", (("--split",), {"choices": ["train", "validation"], "default": "train",
                                                    "help": "the split to write (default train)"}))
def imagenet(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_imagenet_shards(args.input, args.split, args.output, **writer_options(args))]


@subcommand("captions", 'a jsonl file of {"image": path, "caption": text} lines',
            (("--image-root",), {"type": Path, "default": None,
                                 "help": "folder relative image paths start from (default: the jsonl's folder)"}))
def captions(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_caption_shards(args.input, args.output, image_root=args.image_root, **writer_options(args))]


@subcommand("points", "point clouds ROOT/<class>/*.npy|*.txt|*.off (meshes are surface-sampled)", NUM_POINTS, SEED)
def points(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_point_cloud_shards(args.input, args.output, num_points=args.num_points, seed=args.seed,
                                     **writer_options(args))]


@subcommand("glue", "a labelled split of a GLUE task from the GLUE folder INPUT (download_glue_data.py's layout): "
            "text_label or text_pair samples (txt [+ pair.txt] + cls, or score for stsb)",
            (("--task",), {"required": True, "choices": [task for task in GLUE_TASKS if task != "ax"],
                           "help": "the GLUE task"}),
            (("--split",), {"default": "train", "help": "the split (default train; mnli: validation_matched, ...)"}))
def glue(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [write_glue_shards(args.task, args.input, args.split, args.output, **writer_options(args))]


@subcommand("modelnet40", "ModelNet40 from any of its archives (modelnet40_normal_resampled, "
            "modelnet40_ply_hdf5_2048, ModelNet40 meshes): each split as a points set in OUTPUT/<split>, normalized "
            "as the benchmark reads it, with the class names and shape ids in its index", NUM_POINTS,
            (("--seed",), {"type": int, "default": 0, "help": "the validation draw and mesh samples (default 0)"}),
            (("--split",), {"action": "append", "choices": SPLITS,
                            "help": "a split to write (repeat for several; default: all three)"}),
            (("--validation-fraction",), {"type": float, "default": 0.1,
                                          "help": "share of each class's training shapes held out (default 0.1)"}),
            (("--sampling",), {"choices": SAMPLINGS, "default": "first",
                               "help": "the first points of each cloud, or farthest-point sampling (default first)"}),
            (("--layout",), {"choices": ("auto", *LAYOUTS), "default": "auto",
                             "help": "which archive under ROOT (default: the only one there)"}))
def modelnet40(args: argparse.Namespace) -> list[ShardSetSummary]:
    settings = ModelNet40Settings(num_points=args.num_points, sampling=args.sampling, seed=args.seed,
                                  validation_fraction=args.validation_fraction, layout=args.layout)
    return [write_modelnet40_shards(args.input, split, args.output / split, settings, **writer_options(args))
            for split in (args.split or SPLITS)]


@subcommand("demo", "the embedded demo sets (text, image, image_text, points), their held-out sets and tokenizer",
            NUM_POINTS, SEED,
            (("--shard-samples",), {"type": int, "default": DEMO_SHARD_SAMPLES,
                                    "help": f"samples per shard (default {DEMO_SHARD_SAMPLES})"}),
            from_input=False)
def demo(args: argparse.Namespace) -> list[ShardSetSummary]:
    folders = build_demo_data(args.output, seed=args.seed, num_points=args.num_points,
                              shard_samples=args.shard_samples, overwrite=args.overwrite)
    print(f"tokenizer -> {folders['tokenizer']}")
    return [ShardSetSummary.read(folders[name]) for name in (*DEMO_SETS, *HELDOUT_SETS)]


@subcommand("index", "existing webdataset tars (img2dataset, open_clip: NNNNN.tar with jpg/webp, txt, json "
            "members) indexed in place: reads every INPUT/*.tar once and writes INPUT/index.json; the tars are not "
            "touched", (("--kind",), {"required": True, "choices": sorted(KIND_MEMBERS), "help": "the set's kind"}),
            (("--overwrite",), {"action": "store_true", "help": "replace an index.json already there"}),
            writes=False)
def index(args: argparse.Namespace) -> list[ShardSetSummary]:
    return [index_existing_shards(args.input, args.kind, overwrite=args.overwrite)]


@subcommand("check", "read every shard of a set (a folder or http(s):// URL) as a training run would; any "
            "missing, cut off or wrongly sized shard is named and the exit status is 2",
            (("location",), {"metavar": "LOCATION", "help": "the set's folder or URL"}),
            (("--allow_pipe_urls",), {"action": "store_true",
                                      "help": "allow a pipe:COMMAND location (runs a shell command; see README)"}),
            from_input=False, writes=False)
def check(args: argparse.Namespace) -> list[ShardSetSummary]:
    index = read_index(args.location, check_shards=False, allow_pipe_urls=args.allow_pipe_urls)
    bad: list[str] = []
    for shard in shard_files(args.location, index, allow_pipe_urls=args.allow_pipe_urls):
        samples = 0
        try:
            for _ in read_shard(shard.location, expected_bytes=shard.bytes, allow_pipe_urls=args.allow_pipe_urls):
                samples += 1
        except BadShardError as error:
            bad.append(str(error))
            continue
        if samples != shard.samples:
            bad.append(f"{shard.location}: holds {samples} samples but its index says {shard.samples}")
    if bad:
        raise ValueError(f"{len(bad)} of {len(index['shards'])} shards are bad:\n  " + "\n  ".join(bad))
    print(f"{args.location}: {index['kind']}, {index['samples']} samples in {len(index['shards'])} shards, "
          f"{index['bytes']} bytes: every shard reads as its index says")
    return []


def build_parser() -> argparse.ArgumentParser:
    """The parser: one sub-parser per registered subcommand, with the shared writer options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_text, arguments, from_input, writes, _) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if from_input:
            sub.add_argument("input", type=Path, metavar="INPUT")
        if writes:
            sub.add_argument("--output", type=Path, required=True, help="folder for the shards and index.json")
            sub.add_argument("--overwrite", action="store_true", help="replace a shard set already in --output")
        if from_input and writes:
            sub.add_argument("--max-count", type=int, default=None, help="samples per shard (default: no limit)")
            sub.add_argument("--max-bytes", type=int, default=500_000_000,
                             help="payload bytes after which a new shard starts (default 500000000)")
            sub.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the subcommand, print one summary line per set; bad input exits with status 2 and the error."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summaries = SUBCOMMANDS[args.command][4](args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    for summary in summaries:
        print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
