"""The pretraining data: every micro-step, each rank reads a fixed number of units from every stream.

Why not one mixed stream (:class:`~itnet_scale.data.stream.StreamingDataset` over all streams): its units come from
the streams in a per-lane random order, so ranks would hold different modalities in the same step. Under ZeRO-3
(parameters are all-gathered by the modules that run) and with the contrastive all-gather, every rank must run the
same modules in the same order, on batches of the same kind. So the trainer splits the micro-batch among the
streams once, by their weights (largest remainder), and each rank reads ``units_per_step[s]`` units of stream ``s``
every micro-step: every step trains every objective, on every rank.

Each stream is its own :class:`StreamingDataset` (``DataConfig.only(name)``: its own seed), read by data-parallel
rank and world size (ranks that share a sequence under sequence parallelism read the same units). Each micro-step
advances stream ``s`` by ``data-parallel ranks × units_per_step[s]`` global units; :meth:`PretrainStreams.state_dict`
records how far every stream got, so a resumed run — with the same or another number of ranks — continues exactly
there.

:class:`MicroBatchBuilder` turns a stream's units into the model's batch (tokenized, masked) inside the DataLoader
worker that read them. Masks are drawn from a generator seeded by the data (seed, stream, first unit), not from
the process's random state, so a batch is masked identically however the run was split or resumed.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from itnet_scale.data.stream import DataConfig, StreamingDataset, collate_units, largest_remainder, unit_loader
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.config import ModelConfig
from itnet_scale.nn.heads import mask_tokens
from itnet_scale.train.config import OBJECTIVES_OF_KIND, ObjectiveSettings

logger = logging.getLogger(__name__)

#: How many micro-steps a stream reads ahead for a stand-in when the run's first units hold no valid sample.
LOOK_AHEAD = 64


class StartupError(ValueError):
    """A problem found before training starts that every rank raises alike (the ranks agreed on it), so the launcher
    can report it once, from rank 0, and every rank can stop together."""


def agree_on_startup_error(error: str | None) -> None:
    """Every rank passes its own set-up problem (``None`` if none); if any rank has one, every rank raises
    :class:`StartupError` with the first (by rank) — so no rank goes on to wait for the others in a collective.
    Without a process group, a problem is raised as it is."""
    if dist.is_available() and dist.is_initialized():
        errors: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if failed:
            rank, message = failed[0]
            raise StartupError(message if rank == 0 else f"(rank {rank}) {message}")
    elif error is not None:
        raise StartupError(error)


def random_subset_mask(rows: int, size: int, ratio: float, generator: torch.Generator) -> Tensor:
    """``[rows, size]`` bool: in every row, ``round(ratio · size)`` (at least 1) positions drawn uniformly are
    True."""
    count = min(size, max(1, round(ratio * size)))
    order = torch.rand(rows, size, generator=generator).argsort(dim=1)
    return order < count


@dataclass
class MicroBatch:
    """One stream's part of a micro-step on this rank: ``batch`` is the model's input dict (``None`` when every
    sample of the units was skipped), ``samples`` the valid samples, ``tokens`` the input tokens, ``skipped`` the
    skipped samples per reason, ``units`` the global unit indices read; ``labels`` ``[samples]``: the samples'
    class ids when the shard set has them (``cls``; held-out evaluation's zero-shot classification reads them)."""

    stream: str
    kind: str
    batch: dict[str, Tensor] | None
    samples: int
    tokens: int
    skipped: dict[str, int]
    units: list[int]
    labels: Tensor | None = None


class MicroBatchBuilder:
    """Units of one stream → :class:`MicroBatch` for its objectives (:data:`OBJECTIVES_OF_KIND`).

    - ``text`` → MLM: ``text_ids`` (masked), ``text_attention_mask``, ``mlm_labels``;
    - ``image_text`` → contrastive + image-conditioned MLM: ``images`` (float in [0, 1]) and the masked caption;
    - ``image`` → masked patch modeling: ``images``, ``image_mask`` ``[B, patches]``;
    - ``points`` → masked point modeling: ``points`` ``[B, P, 3]``, ``point_mask`` ``[B, point tokens]``.

    Runs inside DataLoader workers; the tokenizer is loaded on first use in the process that uses it.
    """

    def __init__(self, stream: str, kind: str, stream_index: int, tokenizer_dir: str, objectives: ObjectiveSettings,
                 model: ModelConfig, seed: int) -> None:
        if kind not in OBJECTIVES_OF_KIND:
            raise ValueError(f"stream {stream!r}: no pretraining objective reads {kind!r} shards; kinds with "
                             f"objectives: {sorted(OBJECTIVES_OF_KIND)}")
        self.stream, self.kind, self.stream_index = stream, kind, stream_index
        self.tokenizer_dir, self.objectives, self.model, self.seed = tokenizer_dir, objectives, model, seed
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_dir(self.tokenizer_dir)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker loads its own tokenizer
        return {**self.__dict__, "_tokenizer": None}

    def _generator(self, first_unit: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, self.stream_index, first_unit]).generate_state(2, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed) & (2**63 - 1))

    def _masked_text(self, texts: list[str], max_tokens: int, generator: torch.Generator) -> dict[str, Tensor]:
        tokenizer = self.tokenizer
        ids, attention = tokenizer.batch_encode(texts, max_length=max_tokens, pad_to="longest")
        inputs, labels = mask_tokens(ids, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                                     special_ids=list(tokenizer.special_ids.values()),
                                     prob=self.objectives.mlm_probability, generator=generator)
        return {"text_ids": inputs, "text_attention_mask": attention, "mlm_labels": labels}

    def __call__(self, units: list[dict[str, Any]]) -> MicroBatch:
        grouped = collate_units(units).get(self.stream, {"keys": [], "skipped": {}})
        samples = len(grouped["keys"])
        ids = [unit["unit"] for unit in units]
        if samples == 0:
            return MicroBatch(self.stream, self.kind, None, 0, 0, grouped["skipped"], ids)
        generator = self._generator(ids[0])
        batch: dict[str, Tensor] = {}
        tokens = 0
        if self.kind in ("image", "image_text"):
            batch["images"] = grouped["image"].float() / 255.0
            rows, cols = (side // self.model.patch_size for side in batch["images"].shape[-2:])
            tokens += samples * rows * cols
            if self.kind == "image":
                batch["image_mask"] = random_subset_mask(samples, rows * cols, self.objectives.image_mask_ratio,
                                                         generator)
        if self.kind in ("text", "image_text"):
            limit = self.objectives.max_text_tokens if self.kind == "text" else self.objectives.max_caption_tokens
            batch.update(self._masked_text(grouped["txt"], limit, generator))
            tokens += int(batch["text_attention_mask"].sum())
        if self.kind == "points":
            batch["points"] = grouped["points"]
            groups = self.model.point_tokens or batch["points"].shape[1]
            batch["point_mask"] = random_subset_mask(samples, groups, self.objectives.point_mask_ratio, generator)
            tokens += samples * groups
        return MicroBatch(self.stream, self.kind, batch, samples, tokens, grouped["skipped"], ids, grouped.get("cls"))


class PretrainStreams:
    """Every stream of ``data``, read ``units_per_step[s]`` units per micro-step by this data-parallel rank;
    ``builder(stream, kind, index)`` makes the :class:`MicroBatchBuilder` of each.

    ``units_per_step`` splits ``micro_units`` (the micro-batch in units) among the streams by weight; a stream
    whose share rounds to 0 is an error naming it. :meth:`next` returns one :class:`MicroBatch` per stream, in the
    config's order. A stream whose units this step hold no valid sample is stood in for by its last good batch
    with ``stand_in`` weight 0 (every rank must still run every objective; see the module doc) — at the very first
    step, by the first valid batch of the next :data:`LOOK_AHEAD` micro-steps, read ahead without moving the
    stream's position.

    A stream that cannot be opened (no index, a refused location, a bad shard under ``strict``, a kind outside
    ``kinds``, which ``reader`` names in the error) raises :class:`StartupError` on every rank (see
    :func:`agree_on_startup_error`). ``allow_pipe_urls``: the command-line flag's consent to ``pipe:`` stream
    paths. Fine-tuning streams its training shard set through this class too, with a builder of its own.
    """

    def __init__(self, data: DataConfig, micro_units: int,
                 builder: Callable[[str, str, int], Callable[[list[dict[str, Any]]], MicroBatch]], *,
                 data_parallel_rank: int, data_parallel_size: int, num_workers: int = 0,
                 allow_pipe_urls: bool = False, kinds: Collection[str] = tuple(OBJECTIVES_OF_KIND),
                 reader: str = "no pretraining objective") -> None:
        counts = largest_remainder([s.weight for s in data.streams], micro_units)
        starved = [s.name for s, c in zip(data.streams, counts) if c == 0]
        if starved:
            raise ValueError(f"a micro-batch of {micro_units} unit(s) gives stream(s) {starved} none: raise "
                             f"deepspeed.micro_batch_size (in samples: units × unit_size={data.unit_size}) or their "
                             "weights")
        self.data, self.num_workers = data, num_workers
        self.units_per_step = {s.name: int(c) for s, c in zip(data.streams, counts)}
        self.data_parallel_size = data_parallel_size
        problem = None
        try:
            self.datasets = {s.name: StreamingDataset(data.only(s.name), rank=data_parallel_rank,
                                                      world_size=data_parallel_size, allow_pipe_urls=allow_pipe_urls)
                             for s in data.streams}
            for name, dataset in self.datasets.items():
                dataset.check_workers(max(num_workers, 1), self.units_per_step[name])
                if dataset.kinds[0] not in kinds:
                    raise ValueError(f"stream {name!r}: {reader} reads {dataset.kinds[0]!r} shards (it reads "
                                     f"{sorted(kinds)})")
        except (OSError, ValueError) as error:
            problem = str(error)
        agree_on_startup_error(problem)
        self.builders = {s.name: builder(s.name, self.kind(s.name), i) for i, s in enumerate(data.streams)}
        self.consumed = {name: 0 for name in self.datasets}  # global units read, per stream
        self._iterators: dict[str, Iterator[MicroBatch]] = {}
        self._last_good: dict[str, MicroBatch] = {}

    def kind(self, stream: str) -> str:
        return self.datasets[stream].kinds[0]

    @property
    def objectives(self) -> list[str]:
        """The objectives the streams train."""
        return sorted({o for name in self.datasets for o in OBJECTIVES_OF_KIND[self.kind(name)]})

    def start(self) -> None:
        """(Re)open every stream's loader at its current position (``consumed``)."""
        self._iterators = {}
        for name, dataset in self.datasets.items():
            dataset.set_position(self.consumed[name])
            loader = unit_loader(dataset, self.num_workers, units_per_item=self.units_per_step[name],
                                 transform=self.builders[name])
            self._iterators[name] = iter(loader)

    def next(self) -> tuple[list[tuple[MicroBatch, float]], float]:
        """The next micro-step: ``[(micro-batch, weight)]`` per stream (weight 0 for a stand-in) and the seconds
        spent waiting for it."""
        if not self._iterators:
            self.start()
        began = time.perf_counter()
        parts = []
        for name, iterator in self._iterators.items():
            part = next(iterator)
            if part.batch is not None:
                self._last_good[name] = part
                parts.append((part, 1.0))
            elif name in self._last_good:
                logger.warning("stream %s: units %s held no valid sample (%s); its last batch stands in with "
                               "weight 0", name, part.units, part.skipped)
                stand_in = self._last_good[name]
                parts.append((MicroBatch(name, part.kind, stand_in.batch, 0, 0, part.skipped, part.units), 0.0))
            else:
                stand_in = self._valid_batch_ahead(name)
                if stand_in is None:
                    raise ValueError(f"stream {name!r}: the first units read ({part.units}) hold no valid sample "
                                     f"(skipped: {part.skipped}), nor do the next {LOOK_AHEAD} micro-steps' units; "
                                     "check the shards")
                logger.warning("stream %s: the first units read (%s) held no valid sample (%s); a batch read ahead "
                               "(units %s) stands in with weight 0", name, part.units, part.skipped, stand_in.units)
                self._last_good[name] = stand_in
                parts.append((MicroBatch(name, part.kind, stand_in.batch, 0, 0, part.skipped, part.units), 0.0))
        for name in self.consumed:
            self.consumed[name] += self.data_parallel_size * self.units_per_step[name]
        return parts, time.perf_counter() - began

    def _valid_batch_ahead(self, name: str) -> MicroBatch | None:
        """The first of stream ``name``'s next :data:`LOOK_AHEAD` micro-steps (this rank's units) that holds a valid
        sample — a stand-in when the run's very first units hold none (e.g. all in one bad shard). Read by a reader
        of its own, so the stream's position does not move."""
        ahead = copy.copy(self.datasets[name])
        ahead.set_position(self.consumed[name] + self.data_parallel_size * self.units_per_step[name])
        loader = unit_loader(ahead, 0, units_per_item=self.units_per_step[name], transform=self.builders[name])
        return next((part for part in itertools.islice(loader, LOOK_AHEAD) if part.batch is not None), None)

    def state_dict(self) -> dict[str, Any]:
        """The position per stream: global units and sample slots consumed, with each dataset's own state."""
        return {name: {"units": units, "samples": units * self.data.unit_size,
                       "dataset": self.datasets[name].state_dict(units)} for name, units in self.consumed.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the same streams and mixture (seed, unit size, …); the number of ranks and
        the micro-batch may differ — every stream goes on from the global unit it had reached."""
        if sorted(state) != sorted(self.datasets):
            raise ValueError(f"data state has streams {sorted(state)}, the config {sorted(self.datasets)}")
        for name, dataset in self.datasets.items():
            dataset.load_state_dict(state[name]["dataset"])  # refuses another seed or mixture
            self.consumed[name] = int(state[name]["units"])
        self._iterators = {}
