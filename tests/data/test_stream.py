"""The streaming dataset: deterministic mixture, rank/worker split, exact resume across world sizes, bad input."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itnet_scale.config import merge_config
from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.shards import ShardSetWriter, npy_bytes
from itnet_scale.data.stream import (
    DataConfig,
    MixtureSchedule,
    StreamConfig,
    StreamingDataset,
    load_data_config,
    unit_loader,
)
from itnet_scale.data.tokenizer import TokenizerConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sets(root: Path, shard_samples: int = 7) -> dict[str, Path]:
    """Three small shard sets in the real format: text (40), image_text (30), points (20), several shards each."""
    sets = {"text": root / "text", "image_text": root / "image_text", "points": root / "points"}
    rng = np.random.default_rng(0)
    with ShardSetWriter(sets["text"], "text", max_count=shard_samples, max_bytes=None) as writer:
        for i in range(40):
            writer.write({"txt": f"document {i}: " + "words " * int(rng.integers(1, 20))})
    with ShardSetWriter(sets["image_text"], "image_text", max_count=shard_samples, max_bytes=None) as writer:
        for i in range(30):
            writer.write({"png": png(i), "txt": f"a square of gray level {i}"})
    with ShardSetWriter(sets["points"], "points", max_count=shard_samples, max_bytes=None) as writer:
        for i in range(20):
            writer.write({"npy": npy_bytes(rng.normal(size=(16, 3)).astype(np.float32)), "cls": str(i % 3)})
    return sets


def config_for(sets: dict[str, Path], **changes) -> DataConfig:
    streams = [StreamConfig(name="text", path=str(sets["text"]), weight=2.0),
               StreamConfig(name="image_text", path=str(sets["image_text"]), weight=1.0),
               StreamConfig(name="points", path=str(sets["points"]), weight=1.0)]
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


@pytest.mark.slow
def test_dataloader_workers_deliver_global_order(sets):
    dataset = StreamingDataset(config_for(sets), rank=1, world_size=2)
    loader = unit_loader(dataset, num_workers=2)
    units = keys(islice(iter(loader), 10))
    whole = first(StreamingDataset(config_for(sets)), 20)
    assert units == [u for u in whole if u[0] % 2 == 1]


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


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_index(directory: Path, kind: str, keys_: list[str], shards: list[tuple[str, int]]) -> None:
    import json

    entries = [{"name": n, "samples": s, "bytes": (directory / n).stat().st_size} for n, s in shards]
    (directory / "index.json").write_text(json.dumps({
        "format": "itnet-shards/1", "kind": kind, "keys": keys_, "shards": entries,
        "samples": sum(s for _, s in shards), "bytes": sum(e["bytes"] for e in entries)}))


def test_bad_input_is_skipped_counted_and_never_unpickled(tmp_path, caplog):
    marker = tmp_path / "EXECUTED"
    good = [member for i in range(4) for member in ((f"{i:03d}.png", png(i)), (f"{i:03d}.txt", b"caption"))]
    bad = [("004.png", os.urandom(64)), ("004.txt", b"corrupt image"),        # corrupt image
           ("005.txt", b"no image at all"),                                    # missing key
           ("006.png", png(6)), ("006.txt", b"x" * 500),                       # over-long caption
           ("007.png", png(7)), ("007.txt", b"with payloads"),
           ("007.pyd", pickle.dumps(Payload(str(marker)))), ("007.pickle", pickle.dumps(Payload(str(marker))))]
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(tar_of(good + bad))
    whole = tar_of([member for i in range(6) for member in ((f"1{i:02d}.png", png(i)), (f"1{i:02d}.txt", b"fine"))])
    (folder / "shard-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # truncated mid-member
    write_index(folder, "image_text", ["png", "txt"], [("shard-000000.tar", 8), ("shard-000001.tar", 6)])
    config = DataConfig(seed=0, lanes=1, unit_size=14, mix_period=1, shuffle_buffer=1,
                        streams=[StreamConfig(name="pairs", path=str(folder), max_text_bytes=100)])
    dataset = StreamingDataset(config)
    totals: dict[str, int] = {}
    delivered = 0
    for unit in islice(dataset.units(), 6):  # several visits of both shards
        delivered += len(unit["samples"])
        for reason, count in unit["skipped"].items():
            totals[reason] = totals.get(reason, 0) + count
        for sample in unit["samples"]:
            assert sample["image"].dtype == np.uint8 and isinstance(sample["txt"], str)
    assert not marker.exists()
    visits_0 = totals["corrupt_image"]
    assert visits_0 >= 1 and totals["missing_key"] == visits_0 and totals["too_long"] == visits_0
    assert totals["ignored_member"] == 2 * visits_0  # .pyd and .pickle dropped undecoded
    assert totals["truncated_shard"] > 0
    logged = [r.getMessage() for r in caplog.records if r.name == "itnet_scale.data.stream"]
    assert any("skipped {" in m and "corrupt_image" in m for m in logged)  # each skip is logged…
    assert any("shard-000001.tar: ended after 5 of its 6 samples" in m for m in logged)  # …and the short tar
    assert delivered + sum(v for k, v in totals.items() if k != "ignored_member") == 6 * 14


def test_config_errors_are_named(sets, tmp_path):
    with pytest.raises(ValueError, match=r"streams\[1\] \(image_text\)\.weight must be > 0"):
        DataConfig(streams=[StreamConfig(name="a", path="x"), StreamConfig(name="image_text", path="y", weight=0)])
    with pytest.raises(ValueError, match=r"streams\[1\]\.name must be non-empty and unique"):
        DataConfig(streams=[StreamConfig(name="a", path="x"), StreamConfig(name="a", path="y")])
    with pytest.raises(ValueError, match=r"lanes=4 must be divisible by the world size 3"):
        StreamingDataset(config_for(sets), rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"world size × workers = 2 × 4"):
        next(StreamingDataset(config_for(sets), rank=0, world_size=2).units(4, 0))
    missing = config_for(sets)
    missing.streams[2].path = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"streams\[2\] \(points\)\.path: .*nowhere"):
        StreamingDataset(missing)
    with pytest.raises(ValueError, match=r"bad data config key 'wieght': Key 'wieght' not in 'StreamConfig'"):
        merge_config(DataConfig, [{"streams": [{"name": "a", "path": "x", "wieght": 2}]}], what="data config")
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
    # weights 4:3:2:1, exact over each lane's periods (2 lanes × 10 periods of 10 units)
    assert counts == {"text": 80, "image_text": 60, "image": 40, "points": 20}
    by_kind = {u["kind"]: u["samples"][0] for u in units}
    assert by_kind["image"]["image"].shape == (1, 32, 32) and 0 <= by_kind["image"]["cls"] <= 9
    assert by_kind["points"]["points"].shape == (256, 3) and by_kind["points"]["points"].dtype == np.float32
    assert "digit" in by_kind["image_text"]["txt"] or "number" in by_kind["image_text"]["txt"]
    assert all(not u["skipped"] for u in units)
