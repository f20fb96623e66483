"""The streaming dataset: deterministic mixture, rank/worker split, exact resume across world sizes, bad input."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import logging
import os
import pickle
import re
import threading
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from itnet_scale.config import merge_config
from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.shards import BadShardError, index_existing_shards
from itnet_scale.data.stream import (
    DataConfig,
    MixtureSchedule,
    StreamConfig,
    StreamingDataset,
    collate_units,
    load_data_config,
    unit_loader,
)
from itnet_scale.data.tokenizer import TokenizerConfig
from tests.corpus_fixtures import write_img2dataset_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def png(value: int, size: int = 8, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((size, size) if mode == "L" else (size, size, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_index(directory: Path, kind: str, keys_: list[str], shards: list[tuple[str, int]]) -> None:
    """``index.json`` in the shard-set format, with each shard's size as it is on disk."""
    entries = [{"name": n, "samples": s, "bytes": (directory / n).stat().st_size} for n, s in shards]
    (directory / "index.json").write_text(json.dumps({
        "format": "itnet-shards/1", "kind": kind, "keys": keys_, "shards": entries,
        "samples": sum(s for _, s in shards), "bytes": sum(e["bytes"] for e in entries)}))


def write_set(directory: Path, kind: str, samples: list[dict[str, bytes]], shard_samples: int,
              cut_last_shard_at: int | None = None) -> Path:
    """A shard set of ``samples`` (``{"__key__": str, ext: bytes}``) with webdataset's TarWriter, ``shard_samples``
    per shard; ``cut_last_shard_at`` truncates the last tar to that many bytes (its index keeps the full count)."""
    directory.mkdir(parents=True)
    shards = []
    for start in range(0, len(samples), shard_samples):
        name = f"shard-{len(shards):06d}.tar"
        with wds.TarWriter(str(directory / name), encoder=False) as sink:
            for sample in samples[start: start + shard_samples]:
                sink.write(sample)
        shards.append((name, len(samples[start: start + shard_samples])))
    if cut_last_shard_at is not None:
        last = directory / shards[-1][0]
        last.write_bytes(last.read_bytes()[:cut_last_shard_at])
    keys_ = sorted({ext for sample in samples for ext in sample if not ext.startswith("__")} & {
        "txt", "png", "jpg", "cls", "npy", "pair.txt", "score"})
    write_index(directory, kind, keys_, shards)
    return directory


def write_sets(root: Path, shard_samples: int = 7) -> dict[str, Path]:
    """Three small shard sets in the real format: text (40), image_text (30), points (20), several shards each."""
    rng = np.random.default_rng(0)
    texts = [{"__key__": f"t{i:04d}", "txt": f"document {i}: ".encode() + b"words " * int(rng.integers(1, 20))}
             for i in range(40)]
    pairs = [{"__key__": f"p{i:04d}", "png": png(i), "txt": f"a square of gray level {i}".encode()} for i in range(30)]
    clouds = [{"__key__": f"c{i:04d}", "npy": npy(rng.normal(size=(16, 3)).astype(np.float32)),
               "cls": str(i % 3).encode()} for i in range(20)]
    return {"text": write_set(root / "text", "text", texts, shard_samples),
            "image_text": write_set(root / "image_text", "image_text", pairs, shard_samples),
            "points": write_set(root / "points", "points", clouds, shard_samples)}


def config_for(sets: dict[str, Path], **changes) -> DataConfig:
    streams = [StreamConfig(name="text", path=str(sets["text"]), weight=2.0),
               StreamConfig(name="image_text", path=str(sets["image_text"]), weight=1.0),
               StreamConfig(name="points", path=str(sets["points"]), weight=1.0, kind="points")]
    return DataConfig(**{"seed": 3, "lanes": 4, "unit_size": 4, "mix_period": 8, "shuffle_buffer": 4,
                         "streams": streams, **changes})


def keys(units) -> list[tuple[int, str, tuple]]:
    return [(u["unit"], u["stream"], tuple(s["__key__"] for s in u["samples"])) for u in units]


def first(dataset: StreamingDataset, count: int, workers: int = 1, worker: int = 0) -> list:
    return keys(islice(dataset.units(workers, worker), count))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("sets"))


def test_same_seed_same_units_other_seed_other_units(sets):
    a = first(StreamingDataset(config_for(sets)), 30)
    assert a == first(StreamingDataset(config_for(sets)), 30)
    assert a != first(StreamingDataset(config_for(sets, seed=4)), 30)
    assert [u for u, _, _ in a] == list(range(30))
    assert all(len(k) == 4 for _, _, k in a)  # clean data: every unit full


def test_mixture_is_exact_per_period():
    schedule = MixtureSchedule([2.0, 1.0, 1.0], period=8, seed=0)
    assert schedule.counts.tolist() == [4, 2, 2]
    for lane in range(3):
        streams = [schedule.stream_of(lane, m) for m in range(80)]
        for period in range(10):
            assert np.bincount(streams[8 * period: 8 * period + 8], minlength=3).tolist() == [4, 2, 2]
        for m in (0, 5, 13, 79):
            assert schedule.taken_before(lane, m, 1) == streams[:m].count(1)
    assert MixtureSchedule([1.0, 1.0, 1.0], period=10, seed=0).counts.tolist() == [4, 3, 3]


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [1, 2])
def test_ranks_and_workers_partition_the_global_sequence(sets, world, workers):
    whole = first(StreamingDataset(config_for(sets)), 24)
    got = []
    for rank in range(world):
        dataset = StreamingDataset(config_for(sets), rank=rank, world_size=world)
        streams = [dataset.units(workers, w) for w in range(workers)]
        for step in range(24 // world):  # DataLoader's round-robin over workers
            got.extend(keys([next(streams[step % workers])]))
    assert sorted(got) == whole


@pytest.mark.parametrize(("workers", "group"), [(0, 1), (2, 1), (0, 3), (2, 2)])
def test_dataloader_workers_deliver_global_order(sets, workers, group):
    """Real DataLoader workers (round-robin fetching) give rank 1 of 2 the global units 1, 3, 5, … in order, in
    items of ``group`` consecutive units, each passed through the transform in the process that read it."""
    dataset = StreamingDataset(config_for(sets, lanes=8), rank=1, world_size=2)
    items = list(islice(iter(unit_loader(dataset, num_workers=workers, units_per_item=group,
                                         transform=tag_with_worker)), 12 // group))
    assert all(len(units) == group for units, _ in items)
    assert {worker for _, worker in items} == ({None} if workers == 0 else set(range(workers)))
    whole = first(StreamingDataset(config_for(sets, lanes=8)), 24)
    assert keys([u for units, _ in items for u in units]) == [u for u in whole if u[0] % 2 == 1]


def tag_with_worker(units: list[dict]) -> tuple[list[dict], int | None]:
    info = torch.utils.data.get_worker_info()
    return units, None if info is None else info.id


def test_set_position_resumes_mid_visit(sets):
    """Unit 13 starts lane 1's stream part-way into a shard visit (slot offset > 0): set_position gives the
    uninterrupted run's units, and the state dict carries the same position."""
    whole = first(StreamingDataset(config_for(sets)), 30)
    dataset = StreamingDataset(config_for(sets))
    lane, m = 13 % 4, 13 // 4
    stream = dataset.schedule.stream_of(lane, m)
    slot = dataset.schedule.taken_before(lane, m, stream) * 4
    assert slot % 7 != 0  # 7 samples per shard: not at a visit's start
    dataset.set_position(13)
    assert first(dataset, 17) == whole[13:]
    assert dataset.state_dict(13)["units_consumed"] == 13
    with pytest.raises(ValueError, match=r"units_consumed must be a non-negative int, got -1"):
        dataset.set_position(-1)


def test_collate_units_batches_each_stream(sets):
    units = list(islice(StreamingDataset(config_for(sets)).units(), 16))
    batches = collate_units(units)
    assert set(batches) == {"text", "image_text", "points"}
    for name, batch in batches.items():
        mine = [u for u in units if u["stream"] == name]
        assert batch["units"] == [u["unit"] for u in mine]
        assert batch["keys"] == [s["__key__"] for u in mine for s in u["samples"]]
    size = len(batches["image_text"]["keys"])
    assert batches["image_text"]["image"].shape == (size, 1, 8, 8)
    assert batches["image_text"]["image"].dtype == torch.uint8
    assert batches["image_text"]["txt"][0].startswith("a square of gray level")
    points = batches["points"]
    assert points["points"].shape == (len(points["keys"]), 16, 3) and points["points"].dtype == torch.float32
    assert points["cls"].dtype == torch.long and set(points["cls"].tolist()) <= {0, 1, 2}
    assert all(isinstance(t, str) for t in batches["text"]["txt"]) and "image" not in batches["text"]


def test_collate_units_refuses_mixed_image_sizes(tmp_path):
    samples = [{"__key__": "000", "png": png(1, size=8), "cls": b"0"}, {"__key__": "001", "png": png(2, size=9),
                                                                        "cls": b"1"}]
    unit = next(single_shard_dataset(tmp_path, "image", samples).units())
    with pytest.raises(ValueError, match=r"stream 'image': cannot stack image of different shapes"):
        collate_units([unit])


def test_text_pairs_with_scores_or_classes_decode_and_collate(tmp_path):
    """``text_pair`` samples: both texts as strings, ``score`` as float32 (a bad one is skipped as ``bad_score``),
    ``cls`` as int64; ``text_label`` likewise without the second text."""
    pairs = [{"__key__": f"{i:03d}", "txt": f"premise {i}".encode(), "pair.txt": f"hypothesis {i}".encode(),
              "score": str(i * 1.25).encode()} for i in range(4)]
    pairs += [{"__key__": "004", "txt": b"a", "pair.txt": b"b", "score": b"high"},
              {"__key__": "005", "txt": b"a", "pair.txt": b"b", "score": b"nan"},
              {"__key__": "006", "txt": b"a", "score": b"1.0"},                        # no second text
              {"__key__": "007", "txt": b"a", "pair.txt": b"\xff\xfe", "score": b"1.0"}]
    unit = next(single_shard_dataset(tmp_path, "text_pair", pairs).units())
    assert unit["skipped"] == {"bad_score": 2, "missing_key": 1, "bad_text": 1}
    batch = collate_units([unit])["text_pair"]
    order = [int(key) for key in batch["keys"]]
    assert batch["txt"] == [f"premise {i}" for i in order] and batch["pair.txt"] == [f"hypothesis {i}" for i in order]
    assert batch["score"].dtype == torch.float32 and batch["score"].tolist() == [i * 1.25 for i in order]
    assert "cls" not in batch

    labelled = [{"__key__": f"{i:03d}", "txt": f"sentence {i}".encode(), "cls": str(i % 2).encode()} for i in range(3)]
    batch = collate_units([next(single_shard_dataset(tmp_path / "l", "text_label", labelled).units())])["text_label"]
    order = [int(key) for key in batch["keys"]]
    assert batch["cls"].tolist() == [i % 2 for i in order] and batch["txt"] == [f"sentence {i}" for i in order]
    assert "pair.txt" not in batch and "score" not in batch


def test_collate_units_refuses_a_set_mixing_class_and_score_labels(tmp_path):
    samples = [{"__key__": "000", "txt": b"a", "cls": b"1"}, {"__key__": "001", "txt": b"b", "score": b"2.5"}]
    unit = next(single_shard_dataset(tmp_path, "text_label", samples).units())
    with pytest.raises(ValueError, match=r"stream 'text_label': 1 of 2 samples hold a 'cls' label and the others "
                                         r"another"):
        collate_units([unit])


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
@pytest.mark.parametrize("stop", [10, 13])
def test_exact_resume_at_another_world_size(sets, before, after, stop):
    """Stop after ``stop`` global units at ``before`` ranks, resume at ``after`` ranks: the next units, merged in
    global order, are those of an uninterrupted run (13 stops mid-visit, with shard offsets > 0)."""
    whole = first(StreamingDataset(config_for(sets)), 40)
    consumed = []
    for rank in range(before):
        consumed += first(StreamingDataset(config_for(sets), rank=rank, world_size=before), 40)
    assert sorted(u for u in consumed if u[0] < stop) == whole[:stop]
    state = StreamingDataset(config_for(sets)).state_dict(stop)
    resumed = []
    for rank in range(after):
        dataset = StreamingDataset(config_for(sets), rank=rank, world_size=after)
        dataset.load_state_dict(state)
        resumed += first(dataset, (40 - stop) // after)
    assert sorted(resumed) == whole[stop: stop + len(resumed)]
    assert len(resumed) >= 26


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: it must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def single_shard_dataset(tmp_path: Path, kind: str, samples: list[dict[str, bytes]], *, cut_at: int | None = None,
                         **limits) -> StreamingDataset:
    """One stream of one shard, one visit per unit (``unit_size`` = the shard's samples): per-unit counts are exact."""
    folder = write_set(tmp_path / kind, kind, samples, len(samples), cut_last_shard_at=cut_at)
    config = DataConfig(seed=0, lanes=1, unit_size=len(samples), mix_period=1, shuffle_buffer=3,
                        streams=[StreamConfig(name=kind, path=str(folder), **limits)])
    return StreamingDataset(config)


def test_bad_image_text_is_skipped_counted_logged_and_never_unpickled(tmp_path, caplog):
    marker = tmp_path / "EXECUTED"
    payload = pickle.dumps(Payload(str(marker)))
    samples = [{"__key__": f"{i:03d}", "png": png(i, mode="RGB"), "txt": b"caption"} for i in range(4)]
    samples += [{"__key__": "004", "png": os.urandom(64), "txt": b"corrupt image"},
                {"__key__": "005", "txt": b"no image at all"},
                {"__key__": "006", "png": png(6, mode="RGB"), "txt": b"x" * 500},
                {"__key__": "007", "png": png(7, mode="RGB"), "txt": b"with payloads", "pyd": payload,
                 "pickle": payload},
                {"__key__": "008", "png": png(8, mode="RGB"), "txt": b"\xff\xfe not utf-8"}]
    dataset = single_shard_dataset(tmp_path, "image_text", samples, max_text_bytes=100)
    with caplog.at_level(logging.WARNING, logger="itnet_scale.data.stream"):
        units = list(islice(dataset.units(), 3))
    assert not marker.exists()
    for unit in units:
        assert unit["skipped"] == {"corrupt_image": 1, "missing_key": 1, "too_long": 1, "bad_text": 1,
                                   "ignored_member": 2}
        assert sorted(s["__key__"] for s in unit["samples"]) == ["000", "001", "002", "003", "007"]
        assert all(s["image"].shape == (3, 8, 8) and s["image"].dtype == np.uint8 for s in unit["samples"])
    payload_sample = next(s for s in units[0]["samples"] if s["__key__"] == "007")
    assert payload_sample["ignored_members"] == ["pickle", "pyd"] and "pyd" not in payload_sample
    logged = [r.getMessage() for r in caplog.records]
    assert any("shard-000000.tar: sample 004 skipped (corrupt_image" in m for m in logged)
    assert any("sample 005 skipped (missing_key" in m for m in logged)


def test_a_broken_tar_counts_its_unread_slots_as_bad_shard(tmp_path, caplog):
    """A tar cut inside a member's header (its index agrees with its size: the tar itself is broken): the samples
    before the break are read, the shard is logged by name, and its unread slots count as ``bad_shard``."""
    samples = [{"__key__": f"{i:03d}", "png": png(i), "txt": b"fine"} for i in range(6)]
    whole = tmp_path / "whole"
    write_set(whole, "image_text", samples, 6)
    cut = (whole / "shard-000000.tar").read_bytes().index(b"003.txt") + 100  # inside 003.txt's tar header
    dataset = single_shard_dataset(tmp_path, "image_text", samples, cut_at=cut)
    with caplog.at_level(logging.WARNING, logger="itnet_scale.data.stream"):
        units = list(islice(dataset.units(), 2))
    for unit in units:  # 003 never completes; 004 and 005 never arrive
        assert unit["skipped"] == {"bad_shard": 3}
        assert sorted(s["__key__"] for s in unit["samples"]) == ["000", "001", "002"]
    assert any("bad shard skipped: " in r.getMessage() and "shard-000000.tar: cannot be read after" in r.getMessage()
               for r in caplog.records)


def test_bad_points_and_classes_are_skipped_by_reason(tmp_path):
    rng = np.random.default_rng(1)

    def cloud(count: int) -> bytes:
        return npy(rng.normal(size=(count, 3)).astype(np.float32))

    samples = [{"__key__": f"{i:03d}", "npy": cloud(16), "cls": b"1"} for i in range(3)]
    samples += [{"__key__": "003", "npy": cloud(100), "cls": b"2"},                    # over max_points
                {"__key__": "004", "npy": os.urandom(40), "cls": b"0"},                 # not an .npy
                {"__key__": "005", "npy": npy(np.zeros((4, 2), np.float32)), "cls": b"0"},  # wrong shape
                {"__key__": "006", "npy": cloud(16)},                                   # no class
                {"__key__": "007", "npy": cloud(16), "cls": b"three"}]                  # not an integer
    archive = io.BytesIO()
    np.savez(archive, points=rng.normal(size=(16, 3)))
    samples += [{"__key__": "008", "npy": archive.getvalue(), "cls": b"0"},            # an .npz under .npy
                {"__key__": "009", "npy": npy(np.array([["a", "b", "c"]])), "cls": b"0"},  # strings
                {"__key__": "010", "npy": npy(np.ones((4, 3), np.complex64)), "cls": b"0"}]  # complex
    dataset = single_shard_dataset(tmp_path, "points", samples, max_points=64)
    for unit in islice(dataset.units(), 2):
        assert unit["skipped"] == {"too_long": 1, "bad_points": 5, "missing_key": 1, "bad_class": 1}
        assert sorted(s["__key__"] for s in unit["samples"]) == ["000", "001", "002"]
        assert all(s["points"].shape == (16, 3) and s["cls"] == 1 for s in unit["samples"])


def test_image_without_class_or_of_another_format_is_skipped(tmp_path):
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, format="GIF")
    samples = [{"__key__": "000", "png": png(1), "cls": b"4"}, {"__key__": "001", "png": png(2)},
               {"__key__": "002", "jpg": png(3), "cls": b"5"},  # PNG bytes named .jpg: PIL reads the content
               {"__key__": "003", "png": gif.getvalue(), "cls": b"6"}]  # only PNG/JPEG decoders are allowed
    unit = next(single_shard_dataset(tmp_path, "image", samples).units())
    assert unit["skipped"] == {"missing_key": 1, "corrupt_image": 1}
    assert sorted((s["__key__"], s["cls"]) for s in unit["samples"]) == [("000", 4), ("002", 5)]


def test_config_errors_are_named(sets, tmp_path):
    with pytest.raises(ValueError, match=r"streams\[1\] \(image_text\)\.weight must be > 0"):
        DataConfig(streams=[StreamConfig(name="a", path="x"), StreamConfig(name="image_text", path="y", weight=0)])
    with pytest.raises(ValueError, match=r"streams\[1\]\.name must be non-empty and unique"):
        DataConfig(streams=[StreamConfig(name="a", path="x"), StreamConfig(name="a", path="y")])
    with pytest.raises(ValueError, match=r"lanes=4 must be divisible by the world size 3"):
        StreamingDataset(config_for(sets), rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"world size × workers × units_per_item = 2 × 4 × 1"):
        next(StreamingDataset(config_for(sets), rank=0, world_size=2).units(4, 0))
    missing = config_for(sets)
    missing.streams[2].path = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"streams\[2\] \(points\)\.path: .*nowhere"):
        StreamingDataset(missing)
    with pytest.raises(ValueError, match=r"bad data config key 'wieght': Key 'wieght' not in 'StreamConfig'"):
        merge_config(DataConfig, [{"streams": [{"name": "a", "path": "x", "wieght": 2}]}], what="data config")
    wrong_kind = config_for(sets)
    wrong_kind.streams[0].kind = "image"
    with pytest.raises(ValueError, match=r"streams\[0\] \(text\)\.kind is 'image' but .* holds a 'text' shard set"):
        StreamingDataset(wrong_kind)
    with pytest.raises(ValueError, match=r"streams\[0\] \(a\)\.kind must be one of"):
        DataConfig(streams=[StreamConfig(name="a", path="x", kind="video")])
    with pytest.raises(ValueError, match=r"bad data config key 'weight': Value 'heavy' of type 'str'"):
        merge_config(DataConfig, [{"streams": [{"name": "a", "path": "x", "weight": "heavy"}]}], what="data config")
    empty = tmp_path / "empty"
    empty.mkdir()
    with wds.TarWriter(str(empty / "shard-000000.tar"), encoder=False):
        pass
    write_index(empty, "text", ["txt"], [("shard-000000.tar", 0)])
    with pytest.raises(ValueError, match=r"streams\[0\] \(e\)\.path: every shard of .*empty is empty"):
        StreamingDataset(DataConfig(streams=[StreamConfig(name="e", path=str(empty))]))
    with pytest.raises(ValueError, match=r"lanes=4 must be divisible by .* = 1 × 3 × 1"):
        unit_loader(StreamingDataset(config_for(sets)), num_workers=3)
    with pytest.raises(ValueError, match=r"lanes=4 must be divisible by .* = 1 × 2 × 4"):
        unit_loader(StreamingDataset(config_for(sets)), num_workers=2, units_per_item=4)
    with pytest.raises(ValueError, match=r"units_per_item must be >= 1, got 0"):
        unit_loader(StreamingDataset(config_for(sets)), units_per_item=0)
    other = StreamingDataset(config_for(sets, unit_size=5))
    with pytest.raises(ValueError, match=r"data state was saved with another data config"):
        other.load_state_dict(StreamingDataset(config_for(sets)).state_dict(10))


def test_demo_config_streams_the_demo_data(tmp_path):
    build_demo_data(tmp_path, samples_per_kind=96, point_clouds_per_class=16, num_points=256, shard_samples=32,
                    tokenizer=TokenizerConfig(vocab_size=300))
    config = load_data_config(CONFIGS / "demo.yaml", [f"data_root={tmp_path}", "lanes=2", "mix_period=10"])
    assert [s.path for s in config.streams] == [str(tmp_path / n) for n in ("text", "image_text", "image", "points")]
    units = list(islice(StreamingDataset(config).units(), 200))
    counts = {name: sum(u["stream"] == name for u in units) for name in ("text", "image_text", "image", "points")}
    # weights 2:5:2:1, exact over each lane's periods (2 lanes × 10 periods of 10 units)
    assert counts == {"text": 40, "image_text": 100, "image": 40, "points": 20}
    by_kind = {u["kind"]: u["samples"][0] for u in units}
    assert by_kind["image"]["image"].shape == (1, 32, 32) and 0 <= by_kind["image"]["cls"] <= 9
    assert by_kind["points"]["points"].shape == (256, 3) and by_kind["points"]["points"].dtype == np.float32
    assert "digit" in by_kind["image_text"]["txt"] or "number" in by_kind["image_text"]["txt"]
    assert all(not u["skipped"] for u in units)


# --- Shard sets by URL, bad shards -----------------------------------------------------------------------------


class ShardServer(http.server.SimpleHTTPRequestHandler):
    """Serves a folder as a static web server does; files named in the server's ``cut_files`` announce their full
    size but stop after half of it (a transfer cut off mid-way)."""

    def copyfile(self, source, outputfile) -> None:
        if Path(self.path).name in self.server.cut_files:
            data = source.read()
            outputfile.write(data[: len(data) // 2])
        else:
            super().copyfile(source, outputfile)

    def log_message(self, *args) -> None:  # quiet: the requests are the test's own
        pass


@contextlib.contextmanager
def serve(root: Path, cut_files: tuple[str, ...] = ()):
    """``root`` served over HTTP on a free local port, in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ShardServer, directory=str(root)))
    server.cut_files = set(cut_files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def at(sets: dict[str, Path], base: str) -> dict[str, str]:
    """The sets' locations under ``base`` (a URL or a pipe: template) instead of their folders."""
    return {name: f"{base}/{path.name}" for name, path in sets.items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_set_by_url_reads_as_from_disk_and_resumes(sets, workers):
    """The same sets served over HTTP: the same units as from disk — through DataLoader workers too — and after a
    resume mid-visit (set_position, state_dict) the same units as the uninterrupted run."""
    whole = first(StreamingDataset(config_for(sets)), 30)
    with serve(sets["text"].parent) as url:
        remote = at(sets, url)
        read = islice(iter(unit_loader(StreamingDataset(config_for(remote)), num_workers=workers)), 30)
        assert keys(units for item in read for units in [item[0]]) == whole
        resumed = StreamingDataset(config_for(remote))
        resumed.load_state_dict(StreamingDataset(config_for(sets)).state_dict(13))
        assert first(resumed, 17) == whole[13:]


def numbered_text_set(directory: Path, shards: int = 3, per_shard: int = 4) -> Path:
    """A text set whose keys name their shard (``s1-002``)."""
    samples = [{"__key__": f"s{i // per_shard}-{i % per_shard:03d}", "txt": f"text {i} ".encode() * 20}
               for i in range(shards * per_shard)]
    return write_set(directory, "text", samples, per_shard)


def one_stream(path: str, **changes) -> DataConfig:
    """One stream, one lane, one shard visit per unit (unit_size = samples per shard)."""
    return DataConfig(**{"seed": 5, "lanes": 1, "unit_size": 4, "mix_period": 1, "shuffle_buffer": 4,
                         "streams": [StreamConfig(name="text", path=path)], **changes})


def half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["halved", "missing", "http_404", "cut_mid_transfer"])
def test_a_bad_shard_is_skipped_counted_logged_and_positions_hold(tmp_path, caplog, damage):
    """Shard 1 of 3 is halved on disk (its index keeps the full size), deleted, 404s, or its transfer stops half-way:
    each visit to it logs it by name and counts its unread slots as ``bad_shard``; every other unit is what it is
    on the clean set, and a resume gives the uninterrupted run's units."""
    clean = numbered_text_set(tmp_path / "clean")
    bad = numbered_text_set(tmp_path / "bad")
    shard = bad / "shard-000001.tar"
    if damage == "halved":
        half(shard)
    elif damage in ("missing", "http_404"):
        shard.unlink()
    with contextlib.ExitStack() as stack:
        location = str(bad)
        if damage in ("http_404", "cut_mid_transfer"):
            cut = ("shard-000001.tar",) if damage == "cut_mid_transfer" else ()
            location = f"{stack.enter_context(serve(tmp_path, cut))}/bad"
        expected = list(islice(StreamingDataset(one_stream(str(clean))).units(), 12))
        with caplog.at_level(logging.WARNING, logger="itnet_scale.data.stream"):
            got = list(islice(StreamingDataset(one_stream(location)).units(), 12))
        logged = [r.getMessage() for r in caplog.records if "bad shard skipped" in r.getMessage()]
        resumed = StreamingDataset(one_stream(location))
        resumed.set_position(5)
        assert keys(islice(resumed.units(), 7)) == keys(got[5:])
    visits_to_bad = 0
    for want, unit in zip(expected, got, strict=True):
        if want["samples"][0]["__key__"].startswith("s1-"):
            visits_to_bad += 1
            read = len(unit["samples"])
            assert unit["skipped"] == {"bad_shard": 4 - read}
            assert read == 0 or damage == "cut_mid_transfer"  # a cut transfer delivers what came before the cut
        else:
            assert keys([unit]) == keys([want]) and unit["skipped"] == {}
    assert visits_to_bad >= 2
    problem = {"halved": r"has \d+ bytes but its index says \d+", "missing": "does not exist",
               "http_404": r"HTTP 404 \(File not found\)", "cut_mid_transfer": r"cannot be read after \d+ bytes"}
    assert len(logged) == 1 and re.search(r"shard-000001\.tar: " + problem[damage], logged[0]), logged


@pytest.mark.parametrize("remote", [False, True])
def test_strict_refuses_a_bad_shard_naming_it(tmp_path, remote):
    """``strict: true``: a halved local shard is refused before anything is read; a remote one when its visit
    comes (its size is only known then). Either error names the shard and the problem."""
    bad = numbered_text_set(tmp_path / "bad")
    half(bad / "shard-000001.tar")
    if not remote:
        with pytest.raises(ValueError, match=r"streams\[0\] \(text\)\.path: .*bad/shard-000001\.tar: has \d+ bytes "
                                             r"but its index says \d+"):
            StreamingDataset(one_stream(str(bad), strict=True))
        return
    with serve(tmp_path) as url:
        dataset = StreamingDataset(one_stream(f"{url}/bad", strict=True))
        with pytest.raises(BadShardError, match=rf"{url}/bad/shard-000001\.tar: has \d+ bytes but its index says"):
            list(islice(dataset.units(), 12))


def test_pipe_locations_need_the_caller_to_allow_them(sets, tmp_path):
    """A ``pipe:`` stream path is refused — without running it — unless the caller passes ``allow_pipe_urls`` (a
    command-line flag); allowed, it reads the same units as the folders. Other schemes are refused by name."""
    marker = tmp_path / "RAN"
    command = f"pipe:touch {marker}; cat {sets['text'].parent}/{{name}}"
    piped = {name: command.replace("{name}", f"{path.name}/{{name}}") for name, path in sets.items()}
    with pytest.raises(ValueError, match=r"streams\[0\] \(text\)\.path: .*a pipe: location runs a shell command, "
                                         r"and nothing in a config may run code; pass --allow_pipe_urls"):
        StreamingDataset(config_for(piped))
    assert not marker.exists()
    whole = first(StreamingDataset(config_for(sets)), 12)
    assert first(StreamingDataset(config_for(piped), allow_pipe_urls=True), 12) == whole
    assert marker.exists()
    with pytest.raises(ValueError, match=r"with \{name\} where the file name goes"):
        StreamingDataset(config_for(at(sets, "pipe:cat")), allow_pipe_urls=True)
    with pytest.raises(ValueError, match=r"'s3://bucket/text': unsupported scheme 's3'"):
        StreamingDataset(config_for(at(sets, "s3://bucket")))


def test_an_indexed_img2dataset_folder_streams_as_it_is(tmp_path):
    """img2dataset's tars, indexed in place, stream without being rewritten: JPEG and WebP images decode (WebP through
    PIL, lossless here: the exact pixels), captions are the ``txt``, the ``json`` member is dropped undecoded and,
    as the index declares it, not counted as an ignored member."""
    folder = tmp_path / "laion"
    pixels = write_img2dataset_folder(folder, webp_keys=("000010003",))
    index_existing_shards(folder, "image_text")
    config = DataConfig(seed=0, lanes=1, unit_size=5, mix_period=1, shuffle_buffer=1,
                        streams=[StreamConfig(name="laion", path=str(folder), kind="image_text")])
    units = list(islice(StreamingDataset(config).units(), 6))
    samples = {s["__key__"]: s for unit in units for s in unit["samples"]}
    assert sorted(samples) == sorted(pixels) and all(unit["skipped"] == {} for unit in units)
    webp = samples["000010003"]
    assert webp["image"].shape == (3, 16, 16) and np.array_equal(webp["image"], pixels["000010003"].transpose(2, 0, 1))
    jpeg = samples["000000001"]
    assert np.abs(jpeg["image"].astype(int) - pixels["000000001"].transpose(2, 0, 1)).mean() < 4  # lossy
    assert jpeg["txt"] == "a photo of thing number 1" and jpeg["ignored_members"] == ["json"] and "json" not in jpeg
    batch = collate_units(units[:2])["laion"]
    assert batch["image"].shape == (10, 3, 16, 16) and len(batch["txt"]) == 10
