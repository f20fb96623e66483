"""The fine-tuning data's order (every example once per epoch, ranks disjoint, a function of the micro-batch
number alone), its batches per modality, and the training split streamed from shards."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from itnet_scale.data.augment import AugmentSettings, ImageAugmentSettings, MixSettings
from itnet_scale.data.stream import DataConfig, StreamConfig, StreamingDataset, unit_loader
from itnet_scale.tasks import Example, get_benchmark
from itnet_scale.tasks.imagenet import write_imagenet_layout, write_imagenet_shards
from itnet_scale.train.finetune_data import EpochPlan, ExampleBatcher, ShardBatchBuilder, TrainingBatches


@pytest.mark.parametrize(("examples", "micro", "accumulation", "ranks"), [(37, 3, 2, 2), (10, 5, 1, 1), (64, 4, 1, 3)])
def test_each_epoch_visits_distinct_examples_split_over_ranks_and_micro_steps(examples, micro, accumulation, ranks):
    plan = EpochPlan(examples, micro, accumulation, ranks, seed=3)
    per_step = accumulation * ranks
    for epoch in range(2):
        seen = []
        for step in range(plan.steps_per_epoch):
            for m in range(accumulation):
                number = (epoch * plan.steps_per_epoch + step) * accumulation + m
                for rank in range(ranks):
                    got_epoch, indices = plan.micro_batch_indices(number, rank)
                    assert got_epoch == epoch and len(indices) == micro
                    seen += indices
        assert len(seen) == len(set(seen)) == plan.steps_per_epoch * micro * per_step  # the remainder is dropped
    assert plan.permutation(0).tolist() != plan.permutation(1).tolist()  # reshuffled each epoch
    again = EpochPlan(examples, micro, accumulation, ranks, seed=3)
    assert plan.micro_batch_indices(5, 0) == again.micro_batch_indices(5, 0)


def test_a_split_smaller_than_a_global_batch_is_refused_naming_the_sizes():
    with pytest.raises(ValueError, match=r"train split has 7 examples.*4 per rank × 1 micro-steps × 2 ranks = 8"):
        EpochPlan(7, 4, 1, 2, seed=0).check("train")


def test_image_batches_are_seeded_augmented_views_with_soft_targets(tmp_path: Path):
    rng = np.random.default_rng(0)
    wnids = ["n01440764", "n01443537"]
    train = [(rng.integers(0, 255, (20, 24), dtype=np.uint8), c) for c in (0, 1, 0, 1)]
    root = write_imagenet_layout(tmp_path / "in", train, train[:2], wnids, ["tench", "goldfish"])
    benchmark = get_benchmark("imagenet").for_root(root)
    split = benchmark.read(root, "train")
    augment = AugmentSettings(image=ImageAugmentSettings(size=16, channels=3),
                              mix=MixSettings(mixup_alpha=0.8, label_smoothing=0.1))
    batcher = ExampleBatcher(benchmark, augment, seed=0, max_text_tokens=16, tokenizer=None, classes=2,
                             regression=False)
    plan = EpochPlan(len(split.examples), 2, 1, 1, seed=0)
    batches = TrainingBatches(split.examples, plan, 0, batcher, total=4)
    first, again = batches[1]["batch"], batches[1]["batch"]
    assert first["images"].shape == (2, 3, 16, 16) and first["targets"].shape == (2, 2)
    torch.testing.assert_close(first["images"], again["images"])  # a function of the micro-batch number
    torch.testing.assert_close(first["targets"].sum(-1), torch.ones(2))
    assert not torch.equal(batches[0]["batch"]["images"], first["images"])
    evaluation = batcher.inputs(split.examples[:2])
    torch.testing.assert_close(evaluation["images"], batcher.inputs(split.examples[:2])["images"])


def test_points_and_regression_labels():
    benchmark = get_benchmark("stsb")
    cloud = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    points = get_benchmark("modelnet40")
    batcher = ExampleBatcher(points, AugmentSettings(), seed=1, max_text_tokens=8, tokenizer=None, classes=40,
                             regression=False)
    batch = batcher.train_batch([Example("a_0001", {"points": cloud}, 3)] * 2,
                                [batcher.sample_rng(0, i) for i in (0, 1)], np.random.default_rng(0))
    assert batch["points"].shape == (2, 40, 3) and batch["labels"].tolist() == [3, 3]
    assert not torch.equal(batch["points"][0], batch["points"][1])  # each example its own augmentation
    with pytest.raises(ValueError, match="stsb reads text: it needs a tokenizer"):
        ExampleBatcher(benchmark, AugmentSettings(), seed=0, max_text_tokens=8, tokenizer=None, classes=1,
                       regression=True)


def _imagenet_with_mixed_images(root: Path) -> Path:
    """Train images of different sizes and modes (RGB, grayscale), as the real set has."""
    rng = np.random.default_rng(1)
    shapes = [(20, 24, 3), (31, 17), (16, 16, 3), (25, 40), (18, 22, 3), (40, 30, 3)]
    train = [(rng.integers(0, 255, shape, dtype=np.uint8), i % 2) for i, shape in enumerate(shapes)]
    return write_imagenet_layout(root, train, train[:2], ["n01440764", "n01443537"], ["tench", "goldfish"])


def _streamed(shards: Path, batcher: ExampleBatcher, start: int, count: int, kind: str) -> list:
    data = DataConfig(seed=5, lanes=2, unit_size=2, shuffle_buffer=4,
                      streams=[StreamConfig(name="train_shards", path=str(shards), kind=kind)])
    dataset = StreamingDataset(data, rank=0, world_size=1, start_unit=start)
    loader = unit_loader(dataset, 0, units_per_item=2, transform=ShardBatchBuilder(batcher, "train_shards", kind))
    return list(itertools.islice(loader, count))


def test_streamed_shards_of_mixed_image_sizes_make_seeded_augmented_batches_resumable_at_any_unit(tmp_path: Path):
    root = _imagenet_with_mixed_images(tmp_path / "in")
    shards = write_imagenet_shards(root, "train", tmp_path / "shards", max_count=2).directory
    benchmark = get_benchmark("imagenet").for_root(root)
    augment = AugmentSettings(image=ImageAugmentSettings(size=16, channels=3),
                              mix=MixSettings(cutmix_alpha=1.0, label_smoothing=0.1))
    batcher = ExampleBatcher(benchmark, augment, seed=0, max_text_tokens=16, tokenizer=None, classes=2,
                             regression=False)
    parts = _streamed(shards, batcher, 0, 3, "image")
    for part in parts:  # 2 units of 2 samples per micro-batch, each image cropped to the training view
        assert part.samples == 4 and part.batch["images"].shape == (4, 3, 16, 16)
        assert part.batch["targets"].shape == (4, 2) and set(part.batch["labels"].tolist()) <= {0, 1}
        torch.testing.assert_close(part.batch["targets"].sum(-1), torch.ones(4))
    assert [part.units for part in parts] == [[0, 1], [2, 3], [4, 5]]
    later = _streamed(shards, batcher, 2, 2, "image")  # started at unit 2: the same batches as the run's 2nd, 3rd
    for part, again in zip(parts[1:], later, strict=True):
        assert part.units == again.units
        torch.testing.assert_close(part.batch["images"], again.batch["images"], rtol=0, atol=0)
        torch.testing.assert_close(part.batch["targets"], again.batch["targets"], rtol=0, atol=0)
    assert not torch.equal(parts[0].batch["images"], parts[1].batch["images"])


def test_streamed_labels_must_fit_the_task(tmp_path: Path):
    root = _imagenet_with_mixed_images(tmp_path / "in")
    shards = write_imagenet_shards(root, "train", tmp_path / "shards").directory
    benchmark = get_benchmark("imagenet").for_root(root)
    one_class = ExampleBatcher(benchmark, AugmentSettings(image=ImageAugmentSettings(size=16)), seed=0,
                               max_text_tokens=16, tokenizer=None, classes=1, regression=False)
    with pytest.raises(ValueError, match=r"shard-000000.tar: sample \d+: class 1 is outside the task's 1 classes"):
        _streamed(shards, one_class, 0, 3, "image")
    regression = ExampleBatcher(benchmark, AugmentSettings(image=ImageAugmentSettings(size=16)), seed=0,
                                max_text_tokens=16, tokenizer=None, classes=1, regression=True)
    with pytest.raises(ValueError, match=r"holds a 'cls' label; the task needs 'score' labels \(regression\)"):
        _streamed(shards, regression, 0, 1, "image")
