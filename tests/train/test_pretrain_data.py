"""Pretraining data: the micro-batch is split among the streams by weight; each stream's batches are masked
deterministically by the data; positions advance in closed form and resume at another world size exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itnet_scale.data.stream import DataConfig, StreamConfig, load_data_config
from itnet_scale.models.registry import load_model_config
from itnet_scale.nn.heads import IGNORE
from itnet_scale.train.config import ObjectiveSettings
from itnet_scale.train.pretrain_data import MicroBatch, MicroBatchBuilder, PretrainStreams, random_subset_mask
from tests.data.test_stream import write_set
from tests.pretrain_fixtures import REPO, small_demo_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_demo_data(tmp_path_factory.mktemp("demo"))


def demo_config(data: Path, **changes) -> DataConfig:
    overrides = [f"data_root={data}", "unit_size=4", *(f"{k}={v}" for k, v in changes.items())]
    return load_data_config(REPO / "configs" / "data" / "demo.yaml", overrides)


def streams_for(data: DataConfig, tokenizer: Path, micro_units: int = 6, rank: int = 0, size: int = 1,
                objectives: ObjectiveSettings | None = None) -> PretrainStreams:
    model = load_model_config("tiny", vocab_size=400)

    def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
        return MicroBatchBuilder(stream, kind, index, str(tokenizer), objectives or ObjectiveSettings(), model,
                                 data.seed)

    return PretrainStreams(data, micro_units, builder, data_parallel_rank=rank, data_parallel_size=size)


def test_the_micro_batch_is_split_by_weight(data):
    streams = streams_for(demo_config(data), data / "tokenizer", micro_units=6)
    assert streams.units_per_step == {"text": 1, "image_text": 3, "image": 1, "points": 1}  # 2:5:2:1 of 6
    assert streams.objectives == ["itc", "mlm", "mpm", "mpp"]
    with pytest.raises(ValueError, match=r"a micro-batch of 3 unit\(s\) gives stream\(s\) \['points'\] none"):
        streams_for(demo_config(data), data / "tokenizer", micro_units=3)


def test_each_kind_becomes_the_batch_of_its_objectives(data):
    streams = streams_for(demo_config(data), data / "tokenizer")
    parts, waited = streams.next()
    assert waited >= 0 and [p.stream for p, _ in parts] == ["text", "image_text", "image", "points"]
    by_stream = {p.stream: p for p, weight in parts if weight == 1.0}
    text = by_stream["text"].batch
    assert set(text) == {"text_ids", "text_attention_mask", "mlm_labels"} and by_stream["text"].samples == 4
    picked = text["mlm_labels"] != IGNORE
    assert picked.any() and not (picked & ~text["text_attention_mask"]).any()  # only real tokens are masked
    assert by_stream["text"].tokens == int(text["text_attention_mask"].sum())
    pairs = by_stream["image_text"].batch
    assert pairs["images"].shape == (12, 1, 32, 32) and pairs["images"].dtype == torch.float32
    assert float(pairs["images"].min()) >= 0.0 and float(pairs["images"].max()) <= 1.0 and "mlm_labels" in pairs
    image = by_stream["image"].batch
    assert image["image_mask"].shape == (4, 64) and image["image_mask"].sum(1).tolist() == [26] * 4  # 0.4 × 64
    points = by_stream["points"].batch
    assert points["points"].shape == (4, 256, 3) and points["point_mask"].shape == (4, 32)
    assert points["point_mask"].sum(1).tolist() == [13] * 4  # round(0.4 × 32)


def test_masks_depend_on_the_data_only(data):
    """The same units give the same masks, whatever else happened in the process; the next units other masks."""
    first = streams_for(demo_config(data), data / "tokenizer").next()[0]
    torch.manual_seed(123)
    again = streams_for(demo_config(data), data / "tokenizer").next()[0]
    for (a, _), (b, _) in zip(first, again):
        assert a.units == b.units and all(torch.equal(a.batch[k], b.batch[k]) for k in a.batch)
    generator = torch.Generator().manual_seed(0)
    assert not torch.equal(random_subset_mask(3, 50, 0.5, generator), random_subset_mask(3, 50, 0.5, generator))


def test_ranks_read_disjoint_units_and_resume_at_another_world_size(data):
    """2 data-parallel ranks read every stream's global units [2·G·s, 2·G·(s+1)) at step s between them; the
    position saved after 3 steps, loaded by 1 rank, continues at the next global unit of every stream."""
    config = demo_config(data)
    ranks = [streams_for(config, data / "tokenizer", rank=r, size=2) for r in (0, 1)]
    for step in range(3):
        parts = [rank.next()[0] for rank in ranks]
        for index, name in enumerate(["text", "image_text", "image", "points"]):
            units = sorted(u for rank_parts in parts for u in rank_parts[index][0].units)
            G = ranks[0].units_per_step[name]
            assert units == list(range(2 * G * step, 2 * G * (step + 1))), (name, step, units)
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    assert {name: s["units"] for name, s in state.items()} == {"text": 6, "image_text": 18, "image": 6, "points": 6}
    assert state["image_text"]["samples"] == 18 * 4
    single = streams_for(config, data / "tokenizer", rank=0, size=1)
    single.load_state_dict(state)
    parts, _ = single.next()
    assert parts[1][0].units == [18, 19, 20] and parts[2][0].units == [6]
    other = streams_for(demo_config(data, seed=5), data / "tokenizer")
    with pytest.raises(ValueError, match=r"data state was saved with another data config"):
        other.load_state_dict(state)


def test_a_stream_without_valid_samples_is_stood_in_for(tmp_path, data):
    """A unit whose samples are all bad (not UTF-8) is replaced by the stream's last good batch at weight 0; when
    the very first units hold none, by a batch read ahead; when the next 64 micro-steps hold none either, the error
    names the stream."""
    good = [{"__key__": f"g{i}", "txt": b"plain words here"} for i in range(4)]
    bad = [{"__key__": f"b{i}", "txt": b"\xff\xfe not utf-8"} for i in range(4)]

    def first_two_steps(name: str, samples: list[dict]) -> tuple[tuple[MicroBatch, float], tuple[MicroBatch, float]]:
        """The text stream's part of the first two micro-steps over ``samples`` in order (one unit each)."""
        texts = write_set(tmp_path / name, "text", samples, shard_samples=8)
        config = DataConfig(lanes=1, unit_size=4, mix_period=1, shuffle_buffer=1,
                            streams=[StreamConfig(name="text", path=str(texts))])
        streams = streams_for(config, data / "tokenizer", micro_units=1)
        return streams.next()[0][0], streams.next()[0][0]

    first, second = first_two_steps("text", good + bad)
    assert first[1] == 1.0 and first[0].samples == 4
    assert second[1] == 0.0 and second[0].samples == 0 and second[0].skipped == {"bad_text": 4}
    assert second[0].batch is first[0].batch
    # the very first units all bad (e.g. in a bad shard): a batch read ahead stands in, the position does not move
    first, second = first_two_steps("mixed", bad + good)
    assert first[1] == 0.0 and first[0].units == [0] and first[0].skipped == {"bad_text": 4}
    assert second[1] == 1.0 and second[0].units == [1] and second[0].samples == 4
    assert torch.equal(first[0].batch["text_ids"], second[0].batch["text_ids"])  # unit 1 stood in for unit 0
    bad_first = write_set(tmp_path / "bad", "text", bad, shard_samples=4)
    config = DataConfig(lanes=1, unit_size=4, mix_period=1, streams=[StreamConfig(name="t", path=str(bad_first))])
    with pytest.raises(ValueError, match=r"stream 't': the first units read \(\[0\]\) hold no valid sample"):
        streams_for(config, data / "tokenizer", micro_units=1).next()
