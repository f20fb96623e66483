"""Held-out shard sets, read for evaluation: in order, exactly once, split across ranks by whole batches.

A stream's held-out set (``heldout`` in the data config) is read in its index order — shard by shard, samples in
tar order; no shuffling, no resampling. Its sample *slots* are cut into global batches of ``batch_size`` slots
(batch ``k`` holds slots ``[k·b, (k+1)·b)``, the last one may be shorter) and ``max_batches`` keeps the first
ones. Batch ``k`` belongs to data-parallel rank ``k % W``.

Every rank runs the same number of forwards, ``ceil(batches / W)`` (under ZeRO-3 every rank must run the same
modules): a rank with fewer batches repeats one of its own — or, when it has none, batch 0 — as a *padding*
batch, which is computed and never counted. So each slot is evaluated exactly once, and a batch's contents —
hence every metric — do not depend on the number of ranks.

A bad sample (and each sample a truncated or unreadable shard is missing) leaves its slot empty and is counted
per reason, as in training (:func:`~itnet_scale.data.stream.decode_sample`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from itnet_scale.data.shards import read_index
from itnet_scale.data.stream import StreamConfig, decode_sample

logger = logging.getLogger(__name__)


@dataclass
class HeldOutBatch:
    """One evaluation batch of a rank: ``index`` (global batch number), its samples as one unit in the format
    :func:`~itnet_scale.data.stream.collate_units` takes, and ``padding`` (True: computed, never counted)."""

    index: int
    unit: dict[str, Any]
    padding: bool = False
    skipped: dict[str, int] = field(default_factory=dict)


class HeldOutSet:
    """The held-out set of ``stream`` (its ``heldout`` path), cut into global batches of ``batch_size`` slots.

    ``max_batches`` (0 = all) keeps the first batches: the subset evaluated is the same whatever the number of
    ranks. ``training=True`` reads the stream's training set (``path``) the same way instead — in order, from its
    first sample, independently of the training position — for statistics that need training data
    (the contrastive head's calibration, :mod:`itnet_scale.train.evaluation`).
    """

    def __init__(self, stream: StreamConfig, *, batch_size: int, max_batches: int = 0, training: bool = False) -> None:
        what, path = ("path", stream.path) if training else ("heldout", stream.heldout)
        if not path:
            raise ValueError(f"stream {stream.name!r} names no {what} shard set")
        if batch_size < 1 or max_batches < 0:
            raise ValueError(f"batch_size must be >= 1 and max_batches >= 0, got {batch_size}, {max_batches}")
        try:
            index = read_index(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"stream {stream.name!r}: {what}: {error}") from None
        if stream.kind and index["kind"] != stream.kind:
            raise ValueError(f"stream {stream.name!r}: {what} {path} holds a {index['kind']!r} shard set, the "
                             f"stream is {stream.kind!r}")
        self.stream, self.path, self.kind, self.batch_size = stream, path, index["kind"], batch_size
        self.info: dict[str, Any] = index.get("info") or {}
        self.shards = [(str(Path(path) / s["name"]), int(s["samples"])) for s in index["shards"]]
        slots = sum(samples for _, samples in self.shards)
        if slots == 0:
            raise ValueError(f"stream {stream.name!r}: {what} {path} holds no sample")
        self.batches = math.ceil(slots / batch_size)
        if max_batches:
            self.batches = min(self.batches, max_batches)
        self.slots = min(slots, self.batches * batch_size)

    def forwards(self, world_size: int) -> int:
        """Forwards every rank runs: the most batches any rank owns."""
        return math.ceil(self.batches / world_size)

    def owned(self, rank: int, world_size: int) -> list[int]:
        """The global batches rank ``rank`` of ``world_size`` evaluates."""
        return list(range(rank, self.batches, world_size))

    def rank_batches(self, rank: int, world_size: int) -> Iterator[HeldOutBatch]:
        """This rank's :meth:`forwards` batches: its own, then padding batches."""
        own = self.owned(rank, world_size)
        read = own or [0]
        last: HeldOutBatch | None = None
        for batch in self._read(set(read)):
            last = batch
            if own:
                yield batch
        assert last is not None
        for _ in range(self.forwards(world_size) - len(own)):
            yield HeldOutBatch(last.index, last.unit, padding=True)

    def _read(self, wanted: set[int]) -> Iterator[HeldOutBatch]:
        """Batches ``wanted`` (global numbers), in order, from one pass over the shards."""
        samples: list[dict[str, Any]] = []
        skipped: Counter[str] = Counter()
        for slot, raw in self._slots(wanted):
            k = slot // self.batch_size
            if k in wanted:
                sample, reason = (None, "truncated_shard") if raw is None else decode_sample(raw, self.kind,
                                                                                             self.stream)
                if reason is None:
                    samples.append(sample)
                else:
                    skipped[reason] += 1
                if (slot + 1) % self.batch_size == 0 or slot + 1 == self.slots:
                    unit = {"stream": self.stream.name, "kind": self.kind, "unit": k, "samples": samples,
                            "skipped": dict(skipped)}
                    yield HeldOutBatch(k, unit)
                    samples, skipped = [], Counter()

    def _slots(self, wanted: set[int]) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """``(slot, raw sample or None)`` for the slots up to the last wanted batch's: a shard without a wanted
        slot is not opened (its slots come as None, unused); a shard that ends early (truncated, unreadable)
        leaves its remaining slots None."""
        b, end = self.batch_size, min(self.slots, (max(wanted) + 1) * self.batch_size)
        slot = 0
        for path, size in self.shards:
            if slot >= end:
                return
            first, last = slot // b, (slot + size - 1) // b
            raws: Iterator[dict[str, Any]] = iter(())
            if any(first <= k <= last for k in wanted):
                raws = wds.tariterators.tarfile_samples(iter([{"url": path}]), handler=_stop_reading(path))
            produced = 0
            for raw in raws:
                if produced == size or slot >= end:
                    break
                yield slot, raw
                produced, slot = produced + 1, slot + 1
            if produced < size and slot < end and any(first <= k <= last for k in wanted):
                logger.warning("%s: ended after %d of its %d samples; the rest count as truncated_shard", path,
                               produced, size)
            for _ in range(size - produced):
                if slot >= end:
                    return
                yield slot, None
                slot += 1


def _stop_reading(path: str):
    def handler(error: Exception) -> bool:
        logger.warning("%s: stopped reading (%s: %s)", path, type(error).__name__, error)
        return False

    return handler
