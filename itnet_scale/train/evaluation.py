"""Held-out evaluation of a pretraining model: per-objective loss, zero-shot classification, image–text retrieval.

Every stream whose data config names a ``heldout`` shard set is evaluated on it (:mod:`itnet_scale.data.heldout`:
in order, exactly once across the data-parallel ranks, every rank running the same forwards). Batches are built
as in training (:class:`~itnet_scale.train.pretrain_data.MicroBatchBuilder`: the same tokenization and masking,
masks seeded by the batch's number), so held-out losses compare with training losses.

Metrics (keys of :meth:`Evaluator.evaluate`):

- ``loss/<objective>``: the objective's mean over everything it is defined on — masked tokens (``mlm``), pairs
  (``itc``: InfoNCE among a batch's pairs), masked patches (``mpm``), masked point groups (``mpp``) — summed over
  every rank's batches and streams and divided by the global count, so it does not depend on the number of ranks;
- ``zero_shot/top1``: open_clip's zero-shot classification of ``eval.zero_shot.stream``'s held-out images: each
  class name in every template through the text tower, the normalized embeddings averaged per class and
  re-normalized; an image's prediction is the most similar class;
- ``retrieval/{image_to_text,text_to_image}_r{1,5}``: on the held-out image–text pairs (every image_text stream's,
  all ranks' gathered in order), the share of queries whose own pair is among the top 1 / 5 candidates;
- ``samples/<stream>``: the held-out samples evaluated; ``skipped/<stream>``: empty slots (bad samples).

Before the metrics, the contrastive head's standardization statistics
(:class:`~itnet_scale.nn.heads.BatchStandardize`) are recomputed with the current weights over the first
``eval.calibration_batches`` batches of each image–text stream's *training* set, read in order (PreciseBN, Wu &
Johnson 2021): the pooled features are dominated by a component every input shares, which drifts as the weights
move, and the running averages lag behind it by more than the features' spread across inputs. The statistics
stay in the model (checkpoints and exported models carry them); training reads only batch statistics, so they
change no training step.

The model runs in eval mode under ``torch.no_grad``; the process's random generators are saved before and
restored after, so a run that evaluates trains bit for bit as one that does not. The model is the plain module
(under DeepSpeed, ``engine.module``); every computation is a call of the whole model
(:meth:`~itnet_scale.models.itnet.ITNetForPretraining.evaluation_outputs` through ``forward``), because ZeRO-3
gathers the parameters a module reads from its children only within a forward of the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from itnet_scale.atlas import inspection_batch
from itnet_scale.data.heldout import HeldOutSet
from itnet_scale.data.stream import DataConfig
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.nn.heads import IGNORE
from itnet_scale.train.config import OBJECTIVES, EvalSettings
from itnet_scale.train.pretrain_data import MicroBatch, MicroBatchBuilder
from itnet_scale.train.rng import preserved_rng_state

#: The ``k`` of the retrieval recalls.
RETRIEVAL_KS = (1, 5)


def objective_counts(batch: Mapping[str, Tensor]) -> dict[str, float]:
    """How many items each objective of ``batch`` averages over: masked tokens, pairs, masked patches, masked
    point groups."""
    counts = {}
    if "mlm_labels" in batch:
        counts["mlm"] = float((batch["mlm_labels"] != IGNORE).sum())
    if "images" in batch and "text_ids" in batch:
        counts["itc"] = float(batch["images"].shape[0])
    if "image_mask" in batch:
        counts["mpm"] = float(batch["image_mask"].sum())
    if "point_mask" in batch:
        counts["mpp"] = float(batch["point_mask"].sum())
    return counts


def retrieval_recall(image: Tensor, text: Tensor, ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """Recall@k of matched pairs ``image[i] ↔ text[i]`` (normalized ``[N, e]``) in both directions: the share of
    queries whose own pair ranks among the ``k`` most similar candidates (ties count against the query)."""
    similarity = image @ text.T
    results = {}
    for name, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        own = scores.diagonal()[:, None]
        rank = (scores >= own).sum(1) - 1  # candidates at least as similar as the own pair, the own one excluded
        for k in ks:
            results[f"retrieval/{name}_r{k}"] = float((rank < k).double().mean())
    return results


def _float_inputs(batch: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


class Evaluator:
    """The held-out evaluation of ``data``'s streams with ``settings`` (see the module doc).

    ``builder(stream, kind, index)`` makes each stream's batch builder (the trainer's); ``prompt_tokens``: the
    zero-shot prompts' token limit (the captions'); ``rank`` / ``world_size`` / ``group``: the data-parallel ones
    (ranks that share a sequence evaluate the same batches); ``allow_pipe_urls``: the command line's flag.
    """

    def __init__(self, data: DataConfig, settings: EvalSettings, tokenizer: Tokenizer,
                 builder: Callable[[str, str, int], MicroBatchBuilder], *, prompt_tokens: int = 32, rank: int = 0,
                 world_size: int = 1, group: dist.ProcessGroup | None = None, allow_pipe_urls: bool = False) -> None:
        self.settings, self.tokenizer, self.prompt_tokens = settings, tokenizer, prompt_tokens
        self.rank, self.world_size, self.group = rank, world_size, group
        reading = {"strict": data.strict, "allow_pipe_urls": allow_pipe_urls}
        self.sets = {s.name: HeldOutSet(s, batch_size=settings.batch_size, max_batches=settings.max_batches, **reading)
                     for s in data.streams if s.heldout}
        self.calibration = {}
        if self.sets and settings.calibration_batches:
            self.calibration = {s.name: HeldOutSet(s, batch_size=settings.batch_size, training=True,
                                                   max_batches=settings.calibration_batches, **reading)
                                for s in data.streams if s.kind in ("", "image_text")}
            self.calibration = {name: held for name, held in self.calibration.items() if held.kind == "image_text"}
        self.builders: dict[str, MicroBatchBuilder] = {
            s.name: builder(s.name, held.kind, i) for i, s in enumerate(data.streams)
            if (held := self.sets.get(s.name) or self.calibration.get(s.name)) is not None}
        zero_shot = settings.zero_shot
        self.classes: list[str] = []
        if zero_shot.stream:
            held = self.sets[zero_shot.stream]
            if held.kind != "image":
                raise ValueError(f"eval.zero_shot.stream={zero_shot.stream!r} holds {held.kind!r} samples; "
                                 "zero-shot classification reads an image stream with class ids")
            self.classes = list(zero_shot.classes) or held.classes
            if not self.classes:
                raise ValueError(f"eval.zero_shot.classes is empty and the heldout index of stream "
                                 f"{zero_shot.stream!r} names no classes")
            if held.classes and len(held.classes) != len(self.classes):
                raise ValueError(f"eval.zero_shot.classes names {len(self.classes)} classes, the heldout index of "
                                 f"stream {zero_shot.stream!r} {len(held.classes)} ({held.classes})")

    def __bool__(self) -> bool:
        return bool(self.sets)

    def evaluate(self, model: ITNetForPretraining) -> dict[str, float]:
        """Every metric on the held-out sets; the same dict on every rank."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), preserved_rng_state():
                if self.calibration:
                    self._calibrate(model, next(model.parameters()).dtype)
                return self._evaluate(model)
        finally:
            model.train(was_training)

    def inspection_batches(self, samples: int, dtype: torch.dtype) -> dict[str, dict[str, Tensor]]:
        """Per held-out set, its first batch as plain model input (:func:`~itnet_scale.atlas.inspection_batch`:
        no masking) of at most ``samples`` rows — the same on every rank, for the kernel atlas. A set whose first
        batch holds no valid sample is left out."""
        batches = {}
        for name, held in self.sets.items():
            first = next(iter(held.rank_batches(0, 1)), None)
            part = None if first is None else self.builders[name]([first.unit])
            if part is not None and part.batch is not None:
                batches[name] = inspection_batch(_float_inputs(part.batch, dtype), samples)
        return batches

    def _evaluate(self, model: ITNetForPretraining) -> dict[str, float]:
        dtype = next(model.parameters()).dtype
        sums: Counter[str] = Counter()
        correct = total = 0.0
        class_embeddings = self._class_embeddings(model, dtype) if self.classes else None
        pairs: list[tuple[int, Tensor, Tensor]] = []  # (batch number, image, text) of this rank's pairs
        for name, held in self.sets.items():
            for part, padding in self._batches(held, dtype):
                batch, counted = part.batch, not padding and part.samples > 0
                outputs = model(batch, evaluate=True)
                if counted:
                    for objective, count in objective_counts(batch).items():
                        sums[f"loss/{objective}"] += float(outputs[objective]) * count
                        sums[f"count/{objective}"] += count
                    sums[f"samples/{name}"] += part.samples
                    if held.kind == "image_text":  # retrieval
                        pairs.append((part.units[0], outputs["image_embedding"].float(),
                                      outputs["text_embedding"].float()))
                    if name == self.settings.zero_shot.stream:
                        assert class_embeddings is not None and part.labels is not None
                        predicted = (outputs["image_embedding"].float() @ class_embeddings.T).argmax(1)
                        correct += float((predicted == part.labels).sum())
                        total += len(predicted)
                if not padding:
                    sums[f"skipped/{name}"] += sum(part.skipped.values())
        sums["zero_shot/correct"], sums["zero_shot/total"] = correct, total
        names = [*(f"{what}/{o}" for o in OBJECTIVES for what in ("loss", "count")), "zero_shot/correct",
                 "zero_shot/total", *(f"{what}/{n}" for n in self.sets for what in ("samples", "skipped"))]
        assert set(sums) <= set(names)  # the same values, in the same order, on every rank
        reduced = self._all_reduce(torch.tensor([sums[n] for n in names], dtype=torch.float64))
        totals = dict(zip(names, reduced.tolist()))
        metrics: dict[str, float] = {}
        for objective in OBJECTIVES:
            if totals.get(f"count/{objective}", 0) > 0:
                metrics[f"loss/{objective}"] = totals[f"loss/{objective}"] / totals[f"count/{objective}"]
        if self.classes and totals["zero_shot/total"] > 0:
            metrics["zero_shot/top1"] = totals["zero_shot/correct"] / totals["zero_shot/total"]
        gathered = self._gather_pairs(pairs)
        if gathered is not None:
            metrics.update(retrieval_recall(*gathered))
        for name in self.sets:
            metrics[f"samples/{name}"] = totals.get(f"samples/{name}", 0.0)
            metrics[f"skipped/{name}"] = totals.get(f"skipped/{name}", 0.0)
        return metrics

    def _batches(self, held: HeldOutSet, dtype: torch.dtype) -> Iterator[tuple[MicroBatch, bool]]:
        """This rank's batches of ``held`` as the model's inputs, and whether each is padding (computed, never
        counted). A batch whose every slot was bad is stood in for by the previous one with ``samples`` 0: its
        skipped samples count, its outputs do not."""
        last: MicroBatch | None = None
        for item in held.rank_batches(self.rank, self.world_size):
            part = self.builders[held.stream.name]([item.unit])
            if part.batch is None:  # every slot of the batch was bad: something must still run
                if last is None:
                    raise ValueError(f"stream {held.stream.name!r}: batch {item.index} of {held.path} holds no "
                                     f"valid sample (skipped: {part.skipped})")
                part = replace(last, samples=0, tokens=0, skipped=part.skipped, units=part.units)
            last = part
            assert part.batch is not None
            yield replace(part, batch=_float_inputs(part.batch, dtype)), item.padding

    def _calibrate(self, model: ITNetForPretraining, dtype: torch.dtype) -> None:
        """Recompute the contrastive head's standardization statistics over the calibration batches."""
        moments = []
        for held in self.calibration.values():
            for part, padding in self._batches(held, dtype):
                outputs = model(part.batch, evaluate=True)
                image, text = outputs["image_features"], outputs["text_features"]
                if not padding and part.samples:
                    features = torch.stack([image, text]).double()  # [2, B, dim]
                    moments.append(torch.stack([features.sum(1), features.square().sum(1),
                                                features.new_full(features.shape[::2], features.shape[1])]))
        dim = model.itc.image_proj.in_features
        total = torch.stack(moments).sum(0) if moments else torch.zeros(3, 2, dim, dtype=torch.float64)
        total = self._all_reduce(total)
        count = total[2, :, :1]
        if float(count.min()) < 2:
            raise ValueError(f"the contrastive calibration read {int(count.min())} image–text pair(s); it needs 2 "
                             "or more (eval.calibration_batches, or check the training shards)")
        mean = total[0] / count
        var = (total[1] - count * mean.square()) / (count - 1)  # unbiased, as BatchNorm's running variance
        model.itc.image_norm.set_statistics(mean[0].to(dtype), var[0].clamp_min(0).to(dtype))
        model.itc.text_norm.set_statistics(mean[1].to(dtype), var[1].clamp_min(0).to(dtype))

    def _class_embeddings(self, model: ITNetForPretraining, dtype: torch.dtype) -> Tensor:
        """``[classes, e]``: per class, the normalized mean of its prompts' normalized text embeddings."""
        templates = self.settings.zero_shot.templates
        prompts = [template.format(name) for name in self.classes for template in templates]
        ids, attention = self.tokenizer.batch_encode(prompts, self.prompt_tokens, pad_to="longest")
        embeddings = []
        for start in range(0, len(prompts), self.settings.batch_size):  # the same forwards on every rank
            rows = slice(start, start + self.settings.batch_size)
            prompts_batch = {"text_ids": ids[rows], "text_attention_mask": attention[rows]}
            embeddings.append(model(prompts_batch, evaluate=True)["text_embedding"].float())
        per_class = torch.cat(embeddings).reshape(len(self.classes), len(templates), -1).mean(1)
        return F.normalize(per_class, dim=-1)

    def _all_reduce(self, values: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(values, group=self.group)
        return values

    def _gather_pairs(self, pairs: list[tuple[int, Tensor, Tensor]]) -> tuple[Tensor, Tensor] | None:
        """Every rank's held-out pair embeddings, in batch order: ``(image [N, e], text [N, e])`` or None."""
        rows = [(k, torch.cat([image, text], dim=1)) for k, image, text in pairs]
        if self.world_size > 1:
            width = torch.tensor([rows[0][1].shape[1] if rows else 0], dtype=torch.long)
            dist.all_reduce(width, op=dist.ReduceOp.MAX, group=self.group)
            counts = torch.tensor([len(rows)], dtype=torch.long)
            dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=self.group)
            local = torch.zeros(int(counts), self.settings.batch_size, int(width) + 2, dtype=torch.float32)
            for i, (k, block) in enumerate(rows):  # columns: batch number, valid, embedding
                local[i, :, 0] = k
                local[i, : len(block), 1] = 1
                local[i, : len(block), 2:] = block
            everyone = [torch.zeros_like(local) for _ in range(self.world_size)]
            dist.all_gather(everyone, local, group=self.group)
            flat = torch.cat(everyone).reshape(-1, local.shape[-1])
            flat = flat[flat[:, 1] > 0]
            rows = [(int(k), flat[flat[:, 0] == k, 2:]) for k in sorted({int(k) for k in flat[:, 0].tolist()})]
        if not rows:
            return None
        joined = torch.cat([block for _, block in sorted(rows, key=lambda row: row[0])])
        half = joined.shape[1] // 2
        return joined[:, :half], joined[:, half:]


def format_metrics(step: int, metrics: Mapping[str, float]) -> str:
    """One progress line: ``eval step 200: loss/mlm=4.1 … zero_shot/top1=0.91 …`` (counts left out)."""
    shown = {k: v for k, v in metrics.items() if not k.startswith(("samples/", "skipped/"))}
    return f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in shown.items())


def metrics_table(evaluations: list[Mapping[str, float]]) -> str:
    """A Markdown table of evaluations (``{"step": …, <metric>: …}`` each), one column per evaluation."""
    names = [name for name in evaluations[-1] if name != "step"]
    lines = ["| metric | " + " | ".join(f"step {int(e['step'])}" for e in evaluations) + " |",
             "|---|" + "---:|" * len(evaluations)]
    for name in names:
        shown = [f"{e[name]:.0f}" if name.startswith(("samples/", "skipped/")) else f"{e[name]:.4f}"
                 if name in e else "" for e in evaluations]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)
