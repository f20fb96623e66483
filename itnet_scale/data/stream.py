"""Streaming shard sets with webdataset: mixed streams, split by rank and worker, resumable exactly at any world size.

The stream produces *units*: ``unit_size`` consecutive sample *slots* of one stream. Positions are counted in
units and slots (never in valid samples), so every position is a closed-form function of (seed, unit):

- **Lanes.** Global unit ``U`` belongs to lane ``U % lanes`` as that lane's unit ``m = U // lanes``.
- **Mixture.** Inside a lane, which stream unit ``m`` comes from follows a deterministic weighted schedule:
  each period of ``mix_period`` units holds every stream's share of the weights (largest-remainder counts) in
  an order drawn from ``(seed, lane, period)``. How many units a lane took from a stream before ``m`` is closed
  form (:class:`MixtureSchedule`).
- **Shard visits.** A lane reads a stream as visits: visit ``t`` is shard ``rng(seed, lane, stream, t)`` (drawn
  with replacement: resampled shards) through webdataset's shuffle buffer seeded by the same tuple. A visit
  occupies exactly the shard's ``samples`` slots from ``index.json``; a bad sample still occupies its slot (it
  is skipped and counted), and so does a bad shard's: a shard that is missing, answers with an HTTP error, is
  cut off mid-transfer or whose size disagrees with the index is logged by name and its slots not read are
  counted as ``bad_shard`` (``strict: true`` refuses it instead, with an error naming it). Units are never
  refilled, so a unit may hold fewer than ``unit_size`` samples — that is what makes positions history-free.
- **Split.** Rank ``r`` of ``W`` takes units ``U ≡ r (mod W)``. A DataLoader item is a *group* of ``g``
  consecutive units of the rank (a micro-batch: one hand-off between processes per group, not per unit); worker
  ``i`` of ``n`` makes every ``n``-th group, so PyTorch's round-robin over workers returns them in global order.
  Every worker owns whole lanes: ``lanes`` must divide by ``W × n × g`` (``W`` alone for in-process loading).
- **Resume.** :meth:`StreamingDataset.set_position` (or ``start_unit``, or :meth:`~StreamingDataset.load_state_dict`)
  takes the number of units consumed *globally* (all ranks together) and re-derives every lane's and stream's
  position, skipping the consumed slots of the current visit before decoding: a run stopped at unit ``S`` and
  restarted — with the same or another world size — sees exactly the units it would have seen.

Shard sets are local folders or ``http(s)://`` URLs (:func:`~itnet_scale.data.shards.read_shard`); a ``pipe:``
path is refused unless the caller passes ``allow_pipe_urls`` (a command-line flag: a config must never run code).

Decoding is an explicit whitelist (UTF-8 text, ASCII class ids and decimal scores, PNG/JPEG — and WebP where PIL has
it — through PIL, ``.npy`` without pickle); any other member is dropped undecoded — the sample itself is kept.
Members the set's index declares (img2dataset's ``json``) are dropped quietly; others (``.pyd``, ``.pickle``,
``.pth`` …) are counted as ``ignored_member``. Skipped samples are counted per reason in their unit's ``skipped``
and logged (rate-limited) with their shard and key. :func:`collate_units` turns units into per-stream batches
(tensors and text lists).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image, features
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from itnet_scale.config import load_config
from itnet_scale.data.shards import KIND_MEMBERS, BadShardError, ShardFile, read_index, read_shard, shard_files

logger = logging.getLogger(__name__)


@dataclass
class StreamConfig:
    """One stream: a shard set (``path``: a folder or an ``http(s)://`` URL), its mixture ``weight`` and its limits
    (longer samples are skipped).

    ``kind`` is the set's kind as the config expects it (checked against ``index.json``); empty takes the index's.
    ``heldout``: a shard set of the same kind that pretraining never reads, for held-out evaluation (empty: none).
    """

    name: str = ""
    path: str = ""
    heldout: str = ""
    weight: float = 1.0
    kind: str = ""
    max_text_bytes: int = 65536
    max_points: int = 65536
    max_image_pixels: int = 4096 * 4096


@dataclass
class DataConfig:
    """The stream mixture (``configs/data/*.yaml``): seed, lanes, unit size, mixture period, shuffle buffer.

    ``data_root`` is only there to be interpolated into stream paths (``path: ${data_root}/text``). ``strict``:
    refuse a bad shard (missing, cut off, HTTP error, size not the index's) with an error naming it — local sets
    are checked before anything is read — instead of skipping its samples as ``bad_shard``.
    """

    data_root: str = "demo_data"
    seed: int = 0
    lanes: int = 16
    unit_size: int = 8
    mix_period: int = 100
    shuffle_buffer: int = 64
    strict: bool = False
    streams: list[StreamConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("lanes", "unit_size", "mix_period", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.streams:
            raise ValueError("streams: at least one stream is needed")
        self.streams = [StreamConfig(**s) if isinstance(s, dict) else s for s in self.streams]
        names = [s.name for s in self.streams]
        for i, stream in enumerate(self.streams):
            if not stream.name or stream.name in names[:i]:
                raise ValueError(f"streams[{i}].name must be non-empty and unique, got {stream.name!r}")
            if not stream.weight > 0:
                raise ValueError(f"streams[{i}] ({stream.name}).weight must be > 0, got {stream.weight}")
            if min(stream.max_text_bytes, stream.max_points, stream.max_image_pixels) < 1:
                raise ValueError(f"streams[{i}] ({stream.name}): limits must be >= 1")
            if stream.kind and stream.kind not in KIND_MEMBERS:
                raise ValueError(f"streams[{i}] ({stream.name}).kind must be one of {sorted(KIND_MEMBERS)} "
                                 f"(or empty), got {stream.kind!r}")
        if self.mix_period < len(self.streams):
            raise ValueError(f"mix_period={self.mix_period} must be >= the number of streams ({len(self.streams)})")

    def only(self, name: str) -> DataConfig:
        """The config of stream ``name`` alone (weight 1), with a seed of its own derived from ``seed`` and the
        stream's name, so that streams read on their own still draw independent shard visits and shuffles."""
        matches = [s for s in self.streams if s.name == name]
        if not matches:
            raise ValueError(f"no stream named {name!r}; streams: {[s.name for s in self.streams]}")
        seed = int(np.random.SeedSequence([self.seed, *name.encode()]).generate_state(1)[0] & 0x7FFFFFFF)
        return replace(self, seed=seed, mix_period=1, streams=[replace(matches[0], weight=1.0)])

    def fingerprint(self) -> str:
        """What positions depend on (not paths' locations): checked when a state is loaded."""
        shape = {k: v for k, v in asdict(self).items() if k not in ("streams", "data_root", "strict")}
        shape["streams"] = [(s.name, s.weight) for s in self.streams]
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def load_data_config(path: str | Path, overrides: Sequence[str] = ()) -> DataConfig:
    """Read a :class:`DataConfig` YAML with ``key=value`` overrides (e.g. ``data_root=/shards``)."""
    return load_config(DataConfig, path, overrides, what="data config")


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """``total`` split among ``weights`` in proportion, rounded by largest remainder (ties to the earlier one):
    integer counts ``[len(weights)]`` that sum to ``total``."""
    shares = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


class MixtureSchedule:
    """Which stream each unit of a lane comes from, and how many units of a stream came before (closed form)."""

    def __init__(self, weights: list[float], period: int, seed: int) -> None:
        counts = largest_remainder(weights, period)
        if (counts == 0).any():
            raise ValueError(f"mix_period={period} gives stream(s) {np.flatnonzero(counts == 0).tolist()} no unit; "
                             "raise mix_period or the weights")
        self.counts, self.period, self.seed = counts, period, seed
        self._base = np.repeat(np.arange(len(weights)), counts)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def order(self, lane: int, period: int) -> np.ndarray:
        """The streams of lane ``lane``'s period ``period``, ``[mix_period]`` (the last few are cached: a reader
        asks for the same period several times in a row)."""
        key = (lane, period)
        if key not in self._orders:
            if len(self._orders) >= 64:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = _rng(self.seed, lane, period).permutation(self._base)
        return self._orders[key]

    def stream_of(self, lane: int, m: int) -> int:
        if len(self.counts) == 1:
            return 0
        return int(self.order(lane, m // self.period)[m % self.period])

    def taken_before(self, lane: int, m: int, stream: int) -> int:
        """Units lane ``lane`` took from ``stream`` before its unit ``m``."""
        if len(self.counts) == 1:
            return m
        full, rest = divmod(m, self.period)
        return full * int(self.counts[stream]) + int((self.order(lane, full)[:rest] == stream).sum())


# The image decoders a sample may use (PIL's others stay off): PNG, JPEG and WebP where PIL was built with it.
IMAGE_FORMATS = ("PNG", "JPEG", *(("WEBP",) if features.check("webp") else ()))


def decode_sample(raw: dict[str, Any], kind: str, limits: StreamConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one raw webdataset sample of ``kind`` with the whitelist: ``(sample, None)`` or ``(None, reason)``.

    Text (``txt``, ``pair.txt``) → ``str``, ``cls`` → ``int``, ``score`` → finite ``float``, images →
    ``uint8 [C, H, W]`` and ``npy`` → ``float32 [P, 3]`` numpy arrays
    (numpy, not torch: a DataLoader worker sends a torch tensor through its own shared-memory segment, which costs
    more than the pixels of a small image; the collator makes the batch tensors).
    """
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    sample: dict[str, Any] = {"__key__": raw.get("__key__"), "__shard__": raw.get("__url__")}
    for group in KIND_MEMBERS[kind]:
        present = [ext for ext in group if ext in members]
        if not present:
            return None, "missing_key"
        ext, data = present[0], members[present[0]]
        if ext in ("txt", "pair.txt"):
            if len(data) > limits.max_text_bytes:
                return None, "too_long"
            try:
                sample[ext] = data.decode("utf-8")
            except UnicodeDecodeError:
                return None, "bad_text"
        elif ext == "cls":
            try:
                sample["cls"] = int(data.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return None, "bad_class"
        elif ext == "score":
            try:
                score = float(data.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return None, "bad_score"
            if not math.isfinite(score):
                return None, "bad_score"
            sample["score"] = score
        elif ext in ("png", "jpg", "webp"):
            if ext == "webp" and "WEBP" not in IMAGE_FORMATS:
                return None, "unsupported_image"
            try:
                with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:  # only these decoders
                    if image.width * image.height > limits.max_image_pixels:
                        return None, "too_long"
                    image.load()
                    array = np.array(image.convert("L" if image.mode in ("L", "1", "P") else "RGB"))
            except (OSError, ValueError, Image.DecompressionBombError):
                return None, "corrupt_image"
            sample["image"] = array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
        elif ext == "npy":
            try:
                points = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError):
                return None, "bad_points"
            if (not isinstance(points, np.ndarray) or points.dtype.kind not in "fiu" or points.ndim != 2
                    or points.shape[1] < 3 or not np.isfinite(points[:, :3]).all()):  # .npz, strings, complex
                return None, "bad_points"
            if points.shape[0] > limits.max_points:
                return None, "too_long"
            sample["points"] = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    known = {ext for group in KIND_MEMBERS[kind] for ext in group}
    sample["ignored_members"] = sorted(set(members) - known)
    return sample, None


class _LaneStream:
    """Slots of one (lane, stream) from slot ``start`` on: ``(sample, None)`` or ``(None, reason)`` per slot."""

    def __init__(self, dataset: StreamingDataset, lane: int, stream: int, start: int) -> None:
        self.dataset, self.lane, self.stream = dataset, lane, stream
        self.position = start
        self._slots = self._iterate(start)

    def _shard(self, visit: int) -> int:
        return int(_rng(self.dataset.config.seed, self.lane, self.stream, visit).integers(
            len(self.dataset.shards[self.stream])))

    def _iterate(self, start: int) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
        visit, offset = 0, start
        shards = self.dataset.shards[self.stream]
        while offset >= (size := shards[self._shard(visit)].samples):  # closed-form walk over visit sizes
            offset -= size
            visit += 1
        config, stream = self.dataset.config, self.dataset.config.streams[self.stream]
        kind = self.dataset.kinds[self.stream]
        while True:
            shard = shards[self._shard(visit)]
            failures: list[BadShardError] = []
            raw = read_shard(shard.location, expected_bytes=shard.bytes, allow_pipe_urls=self.dataset.allow_pipe_urls,
                             on_bad_shard=None if config.strict else failures.append)
            seed = int(_rng(config.seed, self.lane, self.stream, visit, 1).integers(2**62))
            shuffled = wds.filters.shuffle(config.shuffle_buffer, config.shuffle_buffer, seed=seed)(raw)
            produced = 0
            for produced, item in enumerate(shuffled, start=1):
                if produced > shard.samples:
                    break
                if produced <= offset:
                    continue  # consumed before a resume: skipped before decoding
                sample, reason = decode_sample(item, kind, stream)
                if reason is not None:
                    self.dataset.log_skip(shard.location, item.get("__key__"), reason)
                yield sample, reason
            if produced < shard.samples and not failures:
                failures.append(BadShardError(shard.location, f"holds {produced} samples but its index says "
                                                              f"{shard.samples}"))
                if config.strict:
                    raise failures[0]
            if failures:
                self.dataset.log_bad_shard(failures[0], shard.samples - min(produced, shard.samples))
            for _ in range(max(offset, min(produced, shard.samples)), shard.samples):
                yield None, "bad_shard"
            visit, offset = visit + 1, 0

    def take(self, count: int) -> list[tuple[dict[str, Any] | None, str | None]]:
        self.position += count
        return [next(self._slots) for _ in range(count)]


class StreamingDataset:
    """Units of the configured mixture for this rank (and DataLoader worker), from ``start_unit`` on.

    Read it through :func:`unit_loader` (a ``DataLoader`` whose items are groups of units) or :meth:`units`.
    Each unit is
    ``{"stream", "kind", "unit", "samples": [decoded samples], "skipped": {reason: count}}``.
    ``rank``/``world_size`` default to ``torch.distributed``'s. ``allow_pipe_urls``: let stream paths be ``pipe:``
    commands (a command-line flag's setting; never from a config).
    """

    def __init__(self, config: DataConfig, *, rank: int | None = None, world_size: int | None = None,
                 start_unit: int = 0, allow_pipe_urls: bool = False) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialized else 1)
        if config.lanes % self.world_size:
            raise ValueError(f"lanes={config.lanes} must be divisible by the world size {self.world_size}")
        self.config = config
        self.allow_pipe_urls = allow_pipe_urls
        self.start_unit = 0
        self.set_position(start_unit)
        self.skips_logged: Counter[str] = Counter()
        self.bad_shards_logged: Counter[str] = Counter()
        self.shards: list[list[ShardFile]] = []
        self.kinds: list[str] = []
        self.declared_members: list[set[str]] = []
        for i, stream in enumerate(config.streams):
            try:  # strict: a local set's shards are all checked here, before anything is read
                index = read_index(stream.path, check_shards=config.strict, allow_pipe_urls=allow_pipe_urls)
                files = shard_files(stream.path, index, allow_pipe_urls=allow_pipe_urls)
            except (OSError, ValueError) as error:
                raise ValueError(f"streams[{i}] ({stream.name}).path: {error}") from None
            if stream.kind and stream.kind != index["kind"]:
                raise ValueError(f"streams[{i}] ({stream.name}).kind is {stream.kind!r} but {stream.path} holds "
                                 f"a {index['kind']!r} shard set")
            self.kinds.append(index["kind"])
            self.declared_members.append(set(index.get("members", ())))
            self.shards.append([shard for shard in files if shard.samples > 0])
            if not self.shards[-1]:
                raise ValueError(f"streams[{i}] ({stream.name}).path: every shard of {stream.path} is empty")
        self.schedule = MixtureSchedule([s.weight for s in config.streams], config.mix_period, config.seed)

    def check_workers(self, workers: int, group: int = 1) -> None:
        """Every DataLoader worker of every rank must own whole lanes (so a lane's shard visits are read by one
        process, in order): ``lanes`` divisible by world size × workers × units per group."""
        if group < 1:
            raise ValueError(f"units_per_item must be >= 1, got {group}")
        if workers > 1 and self.config.lanes % (self.world_size * workers * group):
            raise ValueError(f"lanes={self.config.lanes} must be divisible by world size × workers × units_per_item "
                             f"= {self.world_size} × {workers} × {group}")

    def set_position(self, units_consumed: int) -> None:
        """Start (the next iteration) after ``units_consumed`` global units — the count over all ranks, e.g.
        ``optimizer steps × units per global step``, which is the same whatever the world size."""
        if isinstance(units_consumed, bool) or not isinstance(units_consumed, int) or units_consumed < 0:
            raise ValueError(f"units_consumed must be a non-negative int, got {units_consumed!r}")
        self.start_unit = units_consumed

    def log_skip(self, shard: str, key: str | None, reason: str) -> None:
        """Warn about a skipped sample: the first 10 of each reason, then every 1000th (a bad shard must not
        flood the log); every skip is counted in its unit's ``skipped`` either way."""
        self.skips_logged[reason] += 1
        count = self.skips_logged[reason]
        if count <= 10 or count % 1000 == 0:
            logger.warning("%s: sample %s skipped (%s; %d so far in this process)", shard, key, reason, count)

    def log_bad_shard(self, error: BadShardError, slots: int) -> None:
        """Warn about a bad shard, by name: on the first visit of this process, then every 100th (a bad shard
        is visited again and again; each visit counts its ``slots`` as ``bad_shard`` either way)."""
        self.bad_shards_logged[error.shard] += 1
        visits = self.bad_shards_logged[error.shard]
        if visits == 1 or visits % 100 == 0:
            logger.warning("bad shard skipped: %s; its %d unread sample slot(s) count as bad_shard (visit %d in this "
                           "process)", error, slots, visits)

    def units(self, workers: int = 1, worker: int = 0, group: int = 1) -> Iterator[dict[str, Any]]:
        """This rank's units from ``start_unit``: those of ``worker`` of ``workers``, which makes every
        ``workers``-th group of ``group`` consecutive units (see the module doc)."""
        W = self.world_size
        self.check_workers(workers, group)
        first = max(0, math.ceil((self.start_unit - self.rank) / W))  # the rank's k of its first unit
        readers: dict[tuple[int, int], _LaneStream] = {}
        for g in itertools.count(worker, workers):
            for k in range(first + g * group, first + (g + 1) * group):
                yield self._unit(self.rank + k * W, readers)

    def _unit(self, unit: int, readers: dict[tuple[int, int], _LaneStream]) -> dict[str, Any]:
        """Global unit ``unit``, read by its (lane, stream) reader (re-created when it is not at the position)."""
        config = self.config
        lane, m = unit % config.lanes, unit // config.lanes
        stream = self.schedule.stream_of(lane, m)
        start = self.schedule.taken_before(lane, m, stream) * config.unit_size
        reader = readers.get((lane, stream))
        if reader is None or reader.position != start:
            reader = readers[(lane, stream)] = _LaneStream(self, lane, stream, start)
        samples, skipped = [], Counter()
        declared = self.declared_members[stream]
        for sample, reason in reader.take(config.unit_size):
            if reason is None:
                samples.append(sample)
                unexpected = [member for member in sample["ignored_members"] if member not in declared]
                skipped.update({"ignored_member": len(unexpected)} if unexpected else {})
            else:
                skipped[reason] += 1
        return {"stream": config.streams[stream].name, "kind": self.kinds[stream], "unit": unit,
                "samples": samples, "skipped": dict(skipped)}

    def state_dict(self, units_consumed: int) -> dict[str, Any]:
        """What a checkpoint stores: the seed, global units consumed and the config fingerprint."""
        return {"seed": self.config.seed, "units_consumed": units_consumed, "fingerprint": self.config.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["units_consumed"]``; a state from another mixture is refused."""
        if state.get("fingerprint") != self.config.fingerprint() or state.get("seed") != self.config.seed:
            raise ValueError("data state was saved with another data config (seed, lanes, unit_size, mix_period, "
                             "shuffle_buffer or stream weights differ); positions would not match")
        self.set_position(int(state["units_consumed"]))


class UnitGroups(IterableDataset):
    """The items :func:`unit_loader` hands out: lists of ``group`` consecutive units of the rank, passed through
    ``transform`` (e.g. a collator that builds the micro-batch) in the process that read them."""

    def __init__(self, dataset: StreamingDataset, group: int = 1,
                 transform: Callable[[list[dict[str, Any]]], Any] | None = None) -> None:
        self.dataset, self.group, self.transform = dataset, group, transform

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        units = self.dataset.units(workers, worker, self.group)
        while True:
            items = [next(units) for _ in range(self.group)]
            yield items if self.transform is None else self.transform(items)


def _as_is(item: Any) -> Any:
    return item


def unit_loader(dataset: StreamingDataset, num_workers: int = 0, *, units_per_item: int = 1,
                transform: Callable[[list[dict[str, Any]]], Any] | None = None, **options: Any) -> DataLoader:
    """The DataLoader for ``dataset``: each item is a list of ``units_per_item`` consecutive units of the rank
    (or ``transform`` of that list, computed in the worker), in global order across workers.

    Items are handed over as produced (no default collation: a micro-batch's few large arrays cross between
    processes cheaply, a unit's many small ones would each cost a shared-memory segment). Grouping units per
    item matters: each hand-off has a fixed cost that, per unit of 8 samples, is a large share of decoding them.
    """
    dataset.check_workers(max(num_workers, 1), units_per_item)
    return DataLoader(UnitGroups(dataset, units_per_item, transform), batch_size=None, num_workers=num_workers,
                      collate_fn=_as_is, persistent_workers=False, **options)


def _stack(arrays: list[np.ndarray], stream: str, member: str) -> torch.Tensor:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"stream {stream!r}: cannot stack {member} of different shapes {shapes[:4]}; "
                         "resize them when writing the shards")
    return torch.from_numpy(np.stack(arrays))


def collate_units(units: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group units' samples per stream into batches: ``{stream: {"kind", "units", "keys", "skipped", members}}``.

    Members: ``image`` uint8 ``[B, C, H, W]`` (same size within a stream), ``points`` float32 ``[B, P, 3]`` (same
    ``P``), ``cls`` int64 ``[B]``, ``score`` float32 ``[B]``, ``txt`` and ``pair.txt`` lists of ``B`` strings
    (tokenizing is the trainer's). ``skipped`` sums the units' skip counts; a stream whose units hold no sample has
    only ``keys == []`` and no members. A stream whose samples mix ``cls`` and ``score`` labels is refused.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for unit in units:
        batch = grouped.setdefault(unit["stream"], {"kind": unit["kind"], "units": [], "keys": [],
                                                    "skipped": Counter(), "samples": []})
        batch["units"].append(unit["unit"])
        batch["skipped"].update(unit["skipped"])
        batch["samples"].extend(unit["samples"])
    for stream, batch in grouped.items():
        samples = batch.pop("samples")
        batch["keys"] = [s["__key__"] for s in samples]
        batch["skipped"] = dict(batch["skipped"])
        if not samples:
            continue
        for member in ("image", "points"):
            if member in samples[0]:
                batch[member] = _stack([s[member] for s in samples], stream, member)
        for member, dtype in (("cls", torch.long), ("score", torch.float32)):
            holding = sum(member in s for s in samples)
            if holding and holding != len(samples):
                raise ValueError(f"stream {stream!r}: {holding} of {len(samples)} samples hold a {member!r} label and "
                                 "the others another; a set's samples hold one kind of label")
            if holding:
                batch[member] = torch.tensor([s[member] for s in samples], dtype=dtype)
        for member in ("txt", "pair.txt"):
            if member in samples[0]:
                batch[member] = [s[member] for s in samples]
    return grouped
