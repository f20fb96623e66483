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

plus ``labels`` ``[B]`` (int64 classes, float32 regression targets) where the split has them, and in training
``targets`` ``[B, C]``: the soft targets of label smoothing and, for images, mixup / cutmix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


class ExampleBatcher:
    """Examples → the model's batch dict (see the module doc). ``tokenizer``: for text tasks; ``classes``: the
    head's outputs (soft targets' width); ``regression``: float labels and no soft targets."""

    def __init__(self, benchmark: Benchmark, augment: AugmentSettings, *, seed: int, max_text_tokens: int,
                 tokenizer: Tokenizer | None, classes: int, regression: bool) -> None:
        if benchmark.modality in ("text", "text_pair") and tokenizer is None:
            raise ValueError(f"{benchmark.name} is a text task: it needs a tokenizer")
        self.modality, self.augment, self.seed = benchmark.modality, augment, seed
        self.max_text_tokens, self.tokenizer = max_text_tokens, tokenizer
        self.classes, self.regression = classes, regression

    def inputs(self, examples: Sequence[Example], indices: Sequence[int], epoch: int | None) -> dict[str, Tensor]:
        """The model inputs of ``examples`` (training views of ``epoch``, or evaluation views with None)."""
        if self.modality == "image":
            views = []
            for example, index in zip(examples, indices, strict=True):
                pixels = np.asarray(load_image(example.inputs["image"])).transpose(2, 0, 1)  # [3, H, W] uint8
                views.append(eval_image_transform(pixels, self.augment.image) if epoch is None else
                              train_image_transform(pixels, self.augment.image, self._rng(epoch, index)))
            return {"images": torch.stack(views)}
        if self.modality == "points":
            clouds = []
            for example, index in zip(examples, indices, strict=True):
                points = np.asarray(example.inputs["points"], dtype=np.float32)[:, :3]
                clouds.append(torch.from_numpy(points) if epoch is None else
                              augment_points(points, self.augment.points, self._rng(epoch, index)))
            return {"points": torch.stack(clouds)}
        texts = [example.inputs["text"] for example in examples]
        if self.modality == "text":
            ids, mask = self.tokenizer.batch_encode(texts, max_length=self.max_text_tokens, pad_to="longest")
            return {"text_ids": ids, "text_attention_mask": mask}
        pairs = self.tokenizer.batch_encode_pairs(texts, [example.inputs["text_pair"] for example in examples],
                                                  max_length=self.max_text_tokens, pad_to="longest")
        return {"text_ids": pairs.ids, "text_segment_ids": pairs.segment_ids,
                "text_attention_mask": pairs.attention_mask}

    def labels(self, examples: Sequence[Example]) -> Tensor:
        values = [example.label for example in examples]
        return torch.tensor(values, dtype=torch.float32 if self.regression else torch.long)

    def train_batch(self, examples: Sequence[Example], indices: Sequence[int], epoch: int,
                    mix_rng: np.random.Generator) -> dict[str, Tensor]:
        """A training micro-batch: augmented inputs, ``labels`` and (classification) soft ``targets``."""
        batch = self.inputs(examples, indices, epoch)
        labels = self.labels(examples)
        batch["labels"] = labels
        if not self.regression:
            mix = self.augment.mix
            if self.modality == "image" and mix.enabled:
                batch["images"], batch["targets"] = mix_batch(batch["images"], labels, self.classes, mix, mix_rng)
            else:
                batch["targets"] = smooth_labels(labels, self.classes, mix.label_smoothing)
        return batch

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])


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
        batch = self.batcher.train_batch([self.examples[i] for i in indices], indices, epoch, mix_rng)
        return {"batch": batch, "epoch": epoch}


def training_loader(dataset: TrainingBatches, start: int, num_workers: int) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches from number ``start`` on, built by ``num_workers`` processes (0: here)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, len(dataset)),
                                         num_workers=num_workers, persistent_workers=False)
    return iter(loader)


__all__ = ["EpochPlan", "ExampleBatcher", "TrainingBatches", "training_loader"]
