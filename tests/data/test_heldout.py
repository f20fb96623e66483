"""Held-out sets: read in order, cut into global batches, each evaluated exactly once by one rank; every rank runs
the same number of forwards; bad samples leave their slot empty and are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from itnet_scale.data.heldout import HeldOutSet
from itnet_scale.data.shards import ShardSetWriter
from itnet_scale.data.stream import StreamConfig


def text_set(directory: Path, texts: list[bytes], shard_samples: int) -> Path:
    with ShardSetWriter(directory, "text", max_count=shard_samples, max_bytes=None) as writer:
        for text in texts:
            writer.write({"txt": text})
    return directory


@pytest.fixture
def stream(tmp_path: Path) -> StreamConfig:
    texts = [f"paragraph {i}".encode() for i in range(23)]
    texts[9] = b"\xff not utf-8"  # a bad sample: its slot stays empty
    text_set(tmp_path / "heldout", texts, shard_samples=5)
    text_set(tmp_path / "train", [f"training {i}".encode() for i in range(7)], shard_samples=4)
    return StreamConfig(name="text", path=str(tmp_path / "train"), heldout=str(tmp_path / "heldout"), kind="text")


def texts_of(batch) -> list[str]:
    return [sample["txt"] for sample in batch.unit["samples"]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_every_slot_once_the_same_forwards_on_every_rank(stream: StreamConfig, world_size: int) -> None:
    held = HeldOutSet(stream, batch_size=4)
    assert (held.batches, held.slots) == (6, 23)  # 23 slots: 5 batches of 4 and one of 3
    seen: dict[int, list[str]] = {}
    skipped = 0
    for rank in range(world_size):
        batches = list(held.rank_batches(rank, world_size))
        assert len(batches) == held.forwards(world_size) == -(-6 // world_size)
        for batch in batches:
            assert batch.unit["stream"] == "text" and batch.unit["unit"] == batch.index
            if batch.padding:
                assert batch.index in held.owned(rank, world_size) or (not held.owned(rank, world_size)
                                                                       and batch.index == 0)
                continue
            assert batch.index % world_size == rank and batch.index not in seen
            seen[batch.index] = texts_of(batch)
            skipped += sum(batch.unit["skipped"].values())
    assert sorted(seen) == list(range(6))
    flat = [text for index in sorted(seen) for text in seen[index]]
    assert flat == [f"paragraph {i}" for i in range(23) if i != 9] and skipped == 1
    assert seen[2] == ["paragraph 8", "paragraph 10", "paragraph 11"]  # slot 9 empty, counted as bad_text
    assert held.owned(0, world_size)[0] == 0


def test_max_batches_keeps_the_first_batches_whatever_the_ranks(stream: StreamConfig) -> None:
    held = HeldOutSet(stream, batch_size=4, max_batches=2)
    assert (held.batches, held.slots) == (2, 8)
    by_rank = [[texts_of(b) for b in held.rank_batches(rank, 3) if not b.padding] for rank in range(3)]
    assert by_rank == [[[f"paragraph {i}" for i in range(4)]], [[f"paragraph {i}" for i in range(4, 8)]], []]
    padding = list(held.rank_batches(2, 3))
    assert len(padding) == 1 and padding[0].padding and texts_of(padding[0]) == texts_of(
        next(held.rank_batches(0, 3)))


def test_training_set_is_read_in_order_from_its_start(stream: StreamConfig) -> None:
    held = HeldOutSet(stream, batch_size=3, training=True)
    assert [texts_of(b) for b in held.rank_batches(0, 1)] == [
        ["training 0", "training 1", "training 2"], ["training 3", "training 4", "training 5"], ["training 6"]]


def test_bad_configs_name_the_stream(stream: StreamConfig, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stream 'text' names no heldout shard set"):
        HeldOutSet(StreamConfig(name="text", path=stream.path), batch_size=4)
    with pytest.raises(ValueError, match=r"stream 'text': heldout: .*index\.json"):
        HeldOutSet(StreamConfig(name="text", path=stream.path, heldout=str(tmp_path / "missing")), batch_size=4)
    with pytest.raises(ValueError, match=r"holds a 'text' shard set, the stream is 'image'"):
        HeldOutSet(StreamConfig(name="text", path=stream.path, heldout=stream.heldout, kind="image"), batch_size=4)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1"):
        HeldOutSet(stream, batch_size=0)
