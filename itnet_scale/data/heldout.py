"""Held-out shard sets, read for evaluation: in order, exactly once, split across ranks by whole batches.

A stream's held-out set (``heldout`` in the data config) is read in its index order — shard by shard, samples in
tar order; no shuffling, no resampling. Its sample *slots* are cut into global batches of ``batch_size`` slots
(batch ``k`` holds slots ``[k·b, (k+1)·b)``, the last one may be shorter) and ``max_batches`` keeps the first
ones. Batch ``k`` belongs to data-parallel rank ``k % W``.

Every rank runs the same number of forwards, ``ceil(batches / W)`` (under ZeRO-3 every rank must run the same
modules): a rank with fewer batches repeats one of its own — or, when it has none, batch 0 — as a *padding*
batch, which is computed and never counted. So each slot is evaluated exactly once, and a batch's contents —
hence every metric — do not depend on the number of ranks.

A bad sample leaves its slot empty and is counted per reason, as in training
(:func:`~itnet_scale.data.stream.decode_sample`); so does each sample of a bad shard — missing, cut off, of
another size than its index says — unless the data config is ``strict``, which refuses it
(:func:`~itnet_scale.data.shards.read_shard`). Sets may be local or ``http(s)://`` URLs, as in training.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from itnet_scale.data.shards import BadShardError, read_index, read_shard, shard_files
from itnet_scale.data.stream import StreamConfig, decode_sample

logger = logging.getLogger(__name__)


@dataclass
class HeldOutBatch:
    """One evaluation batch of a rank: ``index`` (global batch number), its samples as one unit in the format
    :func:`~itnet_scale.data.stream.collate_units` takes, and ``padding`` (True: computed, never counted)."""

    index: int
    unit: dict[str, Any]
    padding: bool = False


class HeldOutSet:
    """The held-out set of ``stream`` (its ``heldout`` path), cut into global batches of ``batch_size`` slots.

    ``max_batches`` (0 = all) keeps the first batches: the subset evaluated is the same whatever the number of
    ranks. ``training=True`` reads the stream's training set (``path``) the same way instead — in order, from its
    first sample, independently of the training position — for statistics that need training data
    (the contrastive head's calibration, :mod:`itnet_scale.train.evaluation`). ``strict`` and
    ``allow_pipe_urls``: as the data config's and the command line's (see :mod:`itnet_scale.data.stream`).
    """

    def __init__(self, stream: StreamConfig, *, batch_size: int, max_batches: int = 0, training: bool = False,
                 strict: bool = False, allow_pipe_urls: bool = False) -> None:
        what, path = ("path", stream.path) if training else ("heldout", stream.heldout)
        if not path:
            raise ValueError(f"stream {stream.name!r} names no {what} shard set")
        if batch_size < 1 or max_batches < 0:
            raise ValueError(f"batch_size must be >= 1 and max_batches >= 0, got {batch_size}, {max_batches}")
        try:
            index = read_index(path, check_shards=strict, allow_pipe_urls=allow_pipe_urls)
            self.shards = shard_files(path, index, allow_pipe_urls=allow_pipe_urls)
        except (OSError, ValueError) as error:
            raise ValueError(f"stream {stream.name!r}: {what}: {error}") from None
        if stream.kind and index["kind"] != stream.kind:
            raise ValueError(f"stream {stream.name!r}: {what} {path} holds a {index['kind']!r} shard set, the "
                             f"stream is {stream.kind!r}")
        self.stream, self.path, self.kind, self.batch_size = stream, path, index["kind"], batch_size
        self.strict, self.allow_pipe_urls = strict, allow_pipe_urls
        self.classes: list[str] = [str(name) for name in index.get("classes") or []]  # the index's class names
        slots = sum(shard.samples for shard in self.shards)
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
                sample, reason = (None, "bad_shard") if raw is None else decode_sample(raw, self.kind, self.stream)
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
        slot is not opened (its slots come as None, unused); a bad shard leaves its unread slots None."""
        b, end = self.batch_size, min(self.slots, (max(wanted) + 1) * self.batch_size)
        slot = 0
        for shard in self.shards:
            if slot >= end:
                return
            first, last = slot // b, (slot + shard.samples - 1) // b
            opened = any(first <= k <= last for k in wanted)
            failures: list[BadShardError] = []
            raws: Iterator[dict[str, Any]] = iter(())
            if opened:
                raws = read_shard(shard.location, expected_bytes=shard.bytes, allow_pipe_urls=self.allow_pipe_urls,
                                  on_bad_shard=None if self.strict else failures.append)
            produced = 0
            for raw in raws:
                if produced == shard.samples or slot >= end:
                    break
                yield slot, raw
                produced, slot = produced + 1, slot + 1
            if failures or (opened and produced < shard.samples and slot < end):
                problem = failures[0] if failures else BadShardError(
                    shard.location, f"holds {produced} samples, its index says {shard.samples}")
                if self.strict:
                    raise problem
                logger.warning("bad shard skipped: %s; its %d unread slot(s) count as bad_shard", problem,
                               shard.samples - produced)
            for _ in range(shard.samples - produced):
                if slot >= end:
                    return
                yield slot, None
                slot += 1
