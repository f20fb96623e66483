"""Fine-tuning data: a benchmark split's examples as the model's batches, in an order a step number determines.

**Order.** Epoch ``e`` visits the training split in the permutation ``default_rng([seed, e])``; optimizer step
``s`` of the run is epoch ``s // steps_per_epoch``'s global batch ``s % steps_per_epoch`` (``steps_per_epoch =
N // global_batch``: the last partial batch of an epoch is dropped, as timm and HF do). Within a global batch,
micro-step ``m`` of data-parallel rank ``r`` takes the slice ``(m · ranks + r) · micro_batch``. Every sample's
augmentation draws from ``default_rng([seed, e, example index])`` and every micro-batch's mixing from
``default_rng([seed, micro-batch number, rank])``. So the number of micro-batches consumed is the whole state: a
run resumed from a checkpoint reads, augments and mixes exactly what the uninterrupted run would have, whatever the
number of loader processes.

**Batches** (:class:`ExampleBatcher`), by the benchmark's modality:

- ``image``: the file decoded by content into RGB (:func:`~itnet_scale.tasks.imagenet.load_image`), the training
  (random-resized crop, flip) or evaluation (resize, centre crop) view of :mod:`~itnet_scale.data.augment`
  → ``images`` ``[B, C, H, W]``;
- ``text``: ``[<cls>] ids [<sep>]`` → ``text_ids``, ``text_attention_mask`` ``[B, L]``;
- ``text_pair``: ``<cls> a <sep> b <sep>`` → also ``text_segment_ids`` (0, then 1 from after the first
  ``<sep>``; the model's segment embedding tells the sentences apart);
- ``points``: ``[P, 3]`` clouds, augmented in training → ``points`` ``[B, P, 3]``;
- ``image_text`` (VQA): the image as for ``image`` and the question as for ``text`` → ``images``, ``text_ids``,
  ``text_attention_mask``;
- ``image_pair_text`` (NLVR2): both images (each its own view, drawn one after the other from the example's
  generator) and the statement → ``images``, ``images2``, ``text_ids``, ``text_attention_mask``;

plus ``labels`` ``[B]`` (int64 classes, float32 regression targets) where the split has them, and in training
``targets`` ``[B, C]``: the soft targets of label smoothing and, for images, mixup / cutmix — or, for a benchmark
whose labels are soft scores already (VQA's ``(answer, score)`` pairs), those scores, neither smoothed nor mixed.
Mixing two images' pixels would pair an image with another's question or statement, so only ``image`` batches mix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itnet_scale.data.augment import (
    AugmentSettings,
    augment_points,
    eval_image_transform,
    mix_batch,
    smooth_labels,
    train_image_transform,
)
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.tasks import Benchmark, Example
from itnet_scale.tasks.imagenet import load_image
from itnet_scale.train.pretrain_data import MicroBatch

#: The modalities whose inputs hold text (tokenized by the batcher).
TEXT_MODALITIES = ("text", "text_pair", "image_text", "image_pair_text")
#: The shard-set kind holding each modality's labelled training examples (``tools/make_shards.py`` writes them).
SHARD_KIND_OF = {"image": "image", "text": "text_label", "text_pair": "text_pair", "points": "points"}


@dataclass(frozen=True)
class EpochPlan:
    """Where each optimizer step's examples come from (see the module doc): ``examples`` in the training split,
    ``micro_batch`` per rank per micro-step, ``accumulation`` micro-steps per optimizer step, ``ranks``
    data-parallel ranks."""

    examples: int
    micro_batch: int
    accumulation: int
    ranks: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.ranks

    @property
    def steps_per_epoch(self) -> int:
        return self.examples // self.global_batch

    def check(self, split: str) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"the {split} split has {self.examples} examples, fewer than one global batch "
                             f"({self.micro_batch} per rank × {self.accumulation} micro-steps × {self.ranks} ranks "
                             f"= {self.global_batch}); lower deepspeed.micro_batch_size")

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.examples)

    def micro_batch_indices(self, number: int, rank: int) -> tuple[int, list[int]]:
        """The epoch and the example indices of this rank's ``number``-th micro-batch (0-based, counted over the
        run)."""
        step, micro = divmod(number, self.accumulation)
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch + (micro * self.ranks + rank) * self.micro_batch
        return epoch, self.permutation(epoch)[start:start + self.micro_batch].tolist()


def image_pixels(image: Path | np.ndarray) -> np.ndarray:
    """An example's image as uint8 ``[C, H, W]``: a file decoded by content into RGB, or an array (a streamed
    sample's: C = 1 or 3) as it is."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image array must be uint8 [C, H, W] with C = 1 or 3, got {image.dtype} "
                             f"{list(image.shape)}")
        return image
    return np.asarray(load_image(image)).transpose(2, 0, 1)


class ExampleBatcher:
    """Examples → the model's batch dict (see the module doc). ``tokenizer``: for text tasks; ``classes``: the
    head's outputs (soft targets' width); ``regression``: float labels and no soft targets."""

    def __init__(self, benchmark: Benchmark, augment: AugmentSettings, *, seed: int, max_text_tokens: int,
                 tokenizer: Tokenizer | None, classes: int, regression: bool) -> None:
        if benchmark.modality in TEXT_MODALITIES and tokenizer is None:
            raise ValueError(f"{benchmark.name} reads text: it needs a tokenizer")
        self.modality, self.augment, self.seed = benchmark.modality, augment, seed
        self.soft_targets = benchmark.model_task == "vqa"
        self.max_text_tokens, self.tokenizer = max_text_tokens, tokenizer
        self.classes, self.regression = classes, regression

    def inputs(self, examples: Sequence[Example],
               rngs: Sequence[np.random.Generator] | None = None) -> dict[str, Tensor]:
        """The model inputs of ``examples``: training views drawn from each example's generator in ``rngs``, or
        evaluation views (None)."""
        if rngs is not None and len(rngs) != len(examples):
            raise ValueError(f"{len(rngs)} generators for {len(examples)} examples")
        draws = [None] * len(examples) if rngs is None else rngs
        if self.modality in ("image", "image_text"):
            batch = {"images": self._views([example.inputs["image"] for example in examples], draws)}
            return batch if self.modality == "image" else {**batch, **self._text(examples)}
        if self.modality == "image_pair_text":
            pairs = [example.inputs["images"] for example in examples]
            return {"images": self._views([pair[0] for pair in pairs], draws),
                    "images2": self._views([pair[1] for pair in pairs], draws), **self._text(examples)}
        if self.modality == "points":
            clouds = []
            for example, rng in zip(examples, draws, strict=True):
                points = np.asarray(example.inputs["points"], dtype=np.float32)[:, :3]
                clouds.append(torch.from_numpy(points) if rng is None else
                              augment_points(points, self.augment.points, rng))
            return {"points": torch.stack(clouds)}
        return self._text(examples)

    def _views(self, images: Sequence[Path | np.ndarray], rngs: Sequence[np.random.Generator | None]) -> Tensor:
        """``[B, C, size, size]``: each image's training view (drawn from its generator) or evaluation view."""
        views = []
        for image, rng in zip(images, rngs, strict=True):
            pixels = image_pixels(image)
            views.append(eval_image_transform(pixels, self.augment.image) if rng is None else
                         train_image_transform(pixels, self.augment.image, rng))
        return torch.stack(views)

    def _text(self, examples: Sequence[Example]) -> dict[str, Tensor]:
        """The text (``text_pair``: the sentence pair with its segment ids) as padded token ids."""
        texts = [example.inputs["text"] for example in examples]
        if self.modality != "text_pair":
            ids, mask = self.tokenizer.batch_encode(texts, max_length=self.max_text_tokens, pad_to="longest")
            return {"text_ids": ids, "text_attention_mask": mask}
        pairs = self.tokenizer.batch_encode_pairs(texts, [example.inputs["text_pair"] for example in examples],
                                                  max_length=self.max_text_tokens, pad_to="longest")
        return {"text_ids": pairs.ids, "text_segment_ids": pairs.segment_ids,
                "text_attention_mask": pairs.attention_mask}

    def labels(self, examples: Sequence[Example]) -> Tensor:
        """``[B]`` int64 classes or float32 values; soft-score labels give ``[B, classes]`` float32 scores."""
        values = [example.label for example in examples]
        if self.soft_targets:
            scores = torch.zeros(len(values), self.classes)
            for row, pairs in enumerate(values):
                for index, score in pairs:
                    scores[row, index] = score
            return scores
        return torch.tensor(values, dtype=torch.float32 if self.regression else torch.long)

    def train_batch(self, examples: Sequence[Example], rngs: Sequence[np.random.Generator],
                    mix_rng: np.random.Generator) -> dict[str, Tensor]:
        """A training micro-batch: inputs augmented from ``rngs`` (one generator per example), ``labels`` and
        (classification) soft ``targets``, mixed from ``mix_rng``."""
        batch = self.inputs(examples, rngs)
        labels = self.labels(examples)
        if self.soft_targets:
            batch["targets"] = labels
            return batch
        batch["labels"] = labels
        if not self.regression:
            mix = self.augment.mix
            if self.modality == "image" and mix.enabled:
                batch["images"], batch["targets"] = mix_batch(batch["images"], labels, self.classes, mix, mix_rng)
            else:
                batch["targets"] = smooth_labels(labels, self.classes, mix.label_smoothing)
        return batch

    def sample_rng(self, *position: int) -> np.random.Generator:
        """The augmentation generator of the example at ``position`` (epoch and index, or streamed unit and slot):
        ``default_rng([seed, *position])``."""
        return np.random.default_rng([self.seed, *position])


class TrainingBatches(torch.utils.data.Dataset):
    """This rank's training micro-batches by number (map-style, so ``DataLoader`` workers build them in parallel
    and the loader can start at any number)."""

    def __init__(self, examples: Sequence[Example], plan: EpochPlan, rank: int, batcher: ExampleBatcher,
                 total: int) -> None:
        self.examples, self.plan, self.rank, self.batcher, self.total = examples, plan, rank, batcher, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, number: int) -> dict[str, Any]:
        epoch, indices = self.plan.micro_batch_indices(number, self.rank)
        mix_rng = np.random.default_rng([self.plan.seed, number, self.rank])
        rngs = [self.batcher.sample_rng(epoch, i) for i in indices]
        batch = self.batcher.train_batch([self.examples[i] for i in indices], rngs, mix_rng)
        return {"batch": batch, "epoch": epoch}


class ShardBatchBuilder:
    """A streamed training set's units → this rank's :class:`~itnet_scale.train.pretrain_data.MicroBatch` (made in
    the DataLoader worker that read them). The ``k``-th valid sample of global unit ``u`` augments from
    ``sample_rng(u, k)`` and the micro-batch mixes from ``sample_rng(first unit)``: like the units, a function of
    the stream's position alone, so a resumed run builds the same batches.

    Samples are the shard kinds of :data:`SHARD_KIND_OF` (``tools/make_shards.py``); a label outside the head
    (``cls`` ≥ classes, or the other kind of label than the task's) is an error naming the shard and the key."""

    def __init__(self, batcher: ExampleBatcher, stream: str, kind: str) -> None:
        self.batcher, self.stream, self.kind = batcher, stream, kind

    def example(self, sample: dict[str, Any]) -> Example:
        where = f"{sample.get('__shard__')}: sample {sample.get('__key__')}"
        inputs: dict[str, Any] = {}
        for member, name in (("image", "image"), ("points", "points"), ("txt", "text"), ("pair.txt", "text_pair")):
            if member in sample:
                inputs[name] = sample[member]
        wanted, other = ("score", "cls") if self.batcher.regression else ("cls", "score")
        if wanted not in sample:
            raise ValueError(f"{where}: holds a {other!r} label; the task needs {wanted!r} labels "
                             f"({'regression' if self.batcher.regression else 'classification'})")
        label = sample[wanted]
        if not self.batcher.regression and not 0 <= label < self.batcher.classes:
            raise ValueError(f"{where}: class {label} is outside the task's {self.batcher.classes} classes")
        return Example(str(sample.get("__key__")), inputs, label)

    def __call__(self, units: list[dict[str, Any]]) -> MicroBatch:
        examples, rngs, skipped = [], [], Counter()
        for unit in units:
            skipped.update(unit["skipped"])
            for slot, sample in enumerate(unit["samples"]):
                examples.append(self.example(sample))
                rngs.append(self.batcher.sample_rng(unit["unit"], slot))
        ids = [unit["unit"] for unit in units]
        if not examples:
            return MicroBatch(self.stream, self.kind, None, 0, 0, dict(skipped), ids)
        batch = self.batcher.train_batch(examples, rngs, self.batcher.sample_rng(ids[0]))
        return MicroBatch(self.stream, self.kind, batch, len(examples), 0, dict(skipped), ids)


def training_loader(dataset: TrainingBatches, start: int, num_workers: int) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches from number ``start`` on, built by ``num_workers`` processes (0: here)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, len(dataset)),
                                         num_workers=num_workers, persistent_workers=False)
    return iter(loader)


__all__ = ["SHARD_KIND_OF", "TEXT_MODALITIES", "EpochPlan", "ExampleBatcher", "ShardBatchBuilder", "TrainingBatches",
           "image_pixels", "training_loader"]
