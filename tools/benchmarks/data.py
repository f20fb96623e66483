"""``tools/bench.py data``: throughput of the streaming loader against a bare decode loop, and against the model.

- **ceiling**: one process iterates the same tar members with webdataset's ``tarfile_samples`` and decodes them
  (PIL → tensor, caption UTF-8) in a bare loop — no mixture, shuffle, positions or DataLoader;
- **loader**: :class:`~itnet_scale.data.stream.StreamingDataset` through its ``unit_loader`` (a DataLoader) with 0, 1
  and 2 workers, reading as many samples in items of ``--units-per-item`` units (a micro-batch per hand-off, as
  the trainer reads them);
- **consumer**: the tiny model's pretraining step (forward + backward of MLM + image–text contrastive on the same
  image–text samples, captions tokenized) in samples/s — what the loader must outpace; or the rate given with
  ``--consumer-samples-per-s`` (e.g. measured by the training benchmark), which is then not re-measured.

Every loader measurement sits between two ceiling measurements and is compared with their mean (the machine is
shared and drifts over seconds). The ceiling is a single process; ratios of loaders with workers to it are printed
as they are, and the notes say how many CPU cores the workers had (``k`` workers can only beat the ceiling by up
to ``min(k, cores)``).

The shards are the demo's image–text set (built in a temporary folder) unless ``--shards`` names one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.shards import read_index, shard_paths
from itnet_scale.data.stream import DataConfig, StreamConfig, StreamingDataset, decode_sample, unit_loader
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models import create_model
from itnet_scale.nn.heads import mask_tokens

from . import BenchmarkSuite, SuiteReport, SuiteUsageError, Table, TargetVerdict


def _median_rate(count: int, run, repeats: int) -> float:
    """Median of ``count / seconds`` over ``repeats`` runs of ``run()``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


class DataSuite(BenchmarkSuite):
    name = "data"
    description = "streaming loader vs a bare decode loop over the same tar members, and vs the tiny model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shards", type=Path, default=None, help="an image_text shard set (default: demo)")
        parser.add_argument("--tokenizer", type=Path, default=None,
                            help="tokenizer folder for the consumer (default: a 'tokenizer' folder next to --shards)")
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--passes", type=int, default=4,
                            help="samples read per measurement, in passes over the set (amortizes worker start-up)")
        parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
        parser.add_argument("--units-per-item", type=int, default=4,
                            help="units (of 8 samples) per DataLoader item: one micro-batch per hand-off")
        parser.add_argument("--consumer-batch", type=int, default=32, help="samples per model step")
        parser.add_argument("--no-consumer", action="store_true", help="skip measuring the model's consumption")
        parser.add_argument("--consumer-samples-per-s", type=float, default=None, metavar="X",
                            help="the model's consumption rate (samples/s) to compare against, instead of measuring "
                                 "the tiny model")
        parser.add_argument("--quick", action="store_true", help="1 repeat, 1 pass, one 16-sample consumer step")

    def run(self, args: argparse.Namespace) -> SuiteReport:
        if args.consumer_samples_per_s is not None and not args.consumer_samples_per_s > 0:
            raise SuiteUsageError(f"--consumer-samples-per-s must be > 0, got {args.consumer_samples_per_s}")
        with tempfile.TemporaryDirectory() as scratch:
            shards = args.shards
            tokenizer_dir = args.tokenizer
            if tokenizer_dir is None and shards is not None and (Path(shards).parent / "tokenizer").is_dir():
                tokenizer_dir = Path(shards).parent / "tokenizer"
            if shards is None:
                folders = build_demo_data(Path(scratch) / "demo")
                shards, tokenizer_dir = folders["image_text"], folders["tokenizer"]
            return self._measure(Path(shards), tokenizer_dir, args)

    def _measure(self, shards: Path, tokenizer_dir: Path | None, args: argparse.Namespace) -> SuiteReport:
        index = read_index(shards)
        if index["kind"] != "image_text":
            raise ValueError(f"{shards}: the data benchmark reads an image_text shard set, got {index['kind']!r}")
        total, megabytes = index["samples"], index["bytes"] / 1e6
        repeats = 1 if args.quick else args.repeats
        worker_counts = args.workers
        limits = StreamConfig(name="image_text", path=str(shards))

        passes = 1 if args.quick else args.passes

        def bare_loop() -> None:
            urls = iter([{"url": str(p)} for p in shard_paths(shards)] * passes)
            for raw in wds.tariterators.tarfile_samples(urls):
                sample, _ = decode_sample(raw, "image_text", limits)
                assert sample is not None

        group = args.units_per_item
        if group < 1:
            raise SuiteUsageError(f"--units-per-item must be >= 1, got {group}")
        config = DataConfig(lanes=max([*worker_counts, 1]) * group, unit_size=8, mix_period=1, shuffle_buffer=64,
                            streams=[limits])
        items = -(-passes * total // (config.unit_size * group))

        def reader(workers: int):
            def read() -> None:
                loader = unit_loader(StreamingDataset(config, rank=0, world_size=1), workers, units_per_item=group)
                for _ in islice(iter(loader), items):
                    pass
            return read

        # Side by side: ceiling, loader, ceiling, loader, …, ceiling; each loader's ratio is against the mean of the
        # two ceilings around it, so drifts of this shared machine cancel.
        ceilings: list[float] = []
        rates: dict[int, list[float]] = {w: [] for w in worker_counts}
        ratio_runs: dict[int, list[float]] = {w: [] for w in worker_counts}
        for _ in range(repeats):
            before = _median_rate(total * passes, bare_loop, 1)
            ceilings.append(before)
            for workers in worker_counts:
                rate = _median_rate(items * group * config.unit_size, reader(workers), 1)
                after = _median_rate(total * passes, bare_loop, 1)
                ceilings.append(after)
                rates[workers].append(rate)
                ratio_runs[workers].append(rate / ((before + after) / 2))
                before = after
        ceiling = statistics.median(ceilings)
        ratios = {w: statistics.median(ratio_runs[w]) for w in worker_counts}
        table = Table(f"data: {shards.name} ({total} image–text samples, {megabytes:.1f} MB of shards), "
                      f"{passes} pass(es) per measurement, {group} units of {config.unit_size} samples per "
                      f"loader item, medians of {repeats} side-by-side repeats",
                      ["reader", "samples/s", "MB/s", "vs ceiling"],
                      right_aligned={"samples/s", "MB/s", "vs ceiling"})
        table.add_row(["ceiling: bare decode loop (1 process)", f"{ceiling:.0f}", f"{ceiling / total * megabytes:.1f}",
                       "1.00×"])
        figures: dict[str, Any] = {"ceiling_samples_per_s": ceiling, "loader": {}, "loader_vs_ceiling": ratios}
        for workers in worker_counts:
            rate = statistics.median(rates[workers])
            figures["loader"][workers] = rate
            table.add_row([f"StreamingDataset, {workers} worker(s)", f"{rate:.0f}",
                           f"{rate / total * megabytes:.1f}", f"{ratios[workers]:.2f}×"])
        with_workers = {w: r for w, r in ratios.items() if w > 0} or ratios
        each = ", ".join(f"{w} worker(s) {r:.2f}×" for w, r in with_workers.items())
        targets = [TargetVerdict("loader ≥ 80% of the ceiling", "every worker count / single-process bare loop",
                                 "met" if min(with_workers.values()) >= 0.8 else "not met", each)]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        figures["cpu_cores"] = cores
        notes = [f"ceiling = one process decoding in a bare loop; every 'vs ceiling' ratio, with workers too, is "
                 f"against the mean of the ceilings measured just before and after that loader ({cores} CPU core(s) "
                 f"here: k workers can reach at most min(k, {cores})× the ceiling)"]
        consumer, consumer_row = None, ""
        if args.consumer_samples_per_s is not None:
            consumer, consumer_row = args.consumer_samples_per_s, "consumer: given (--consumer-samples-per-s)"
        elif not args.no_consumer and tokenizer_dir is not None:
            batch = min(args.consumer_batch, 16) if args.quick else args.consumer_batch
            consumer = self._consumer_rate(shards, tokenizer_dir, batch, 1 if args.quick else 5)
            consumer_row = f"consumer: tiny model pretraining step (batch {batch})"
        if consumer is not None:
            best_rate = max(figures["loader"].values())
            figures["consumer_samples_per_s"] = consumer
            table.add_row([consumer_row, f"{consumer:.1f}", "", ""])
            targets.append(TargetVerdict("loader ≥ 10× the model's consumption", "best loader / consumer",
                                         "met" if best_rate >= 10 * consumer else "not met",
                                         f"{best_rate / consumer:.1f}× ({best_rate:.0f} vs {consumer:.1f} samples/s)"))
        else:
            notes.append("consumer not measured (--no-consumer)" if args.no_consumer else
                         "consumer not measured (give --consumer-samples-per-s or --tokenizer, or run without "
                         "--shards)")
        return SuiteReport([table], targets, notes, figures)

    @staticmethod
    def _consumer_rate(shards: Path, tokenizer_dir: Path, batch: int, steps: int) -> float:
        """Samples/s of the tiny model's MLM + contrastive forward and backward on real image–text samples."""
        tokenizer = Tokenizer.from_dir(tokenizer_dir)
        model = create_model("tiny", vocab_size=tokenizer.vocab_size)
        config = DataConfig(lanes=1, unit_size=batch, mix_period=1, streams=[StreamConfig(name="it", path=str(shards))])
        samples = next(StreamingDataset(config).units())["samples"]
        images = torch.from_numpy(np.stack([s["image"] for s in samples])).float() / 255.0
        ids, attention = tokenizer.batch_encode([s["txt"] for s in samples], max_length=32, pad_to="longest")
        inputs, labels = mask_tokens(ids, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                                     special_ids=list(tokenizer.special_ids.values()))
        step_batch = {"images": images, "text_ids": inputs, "text_attention_mask": attention, "mlm_labels": labels}

        def step() -> None:
            model.zero_grad()
            sum(model.losses(step_batch).values()).backward()

        step()  # warm-up
        return _median_rate(len(samples), step, steps)
