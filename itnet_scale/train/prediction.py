"""A fine-tuned model folder on its own: ``FineTunedModel.from_pretrained(RUN/best).predict(raw inputs)``.

The fine-tuning recipe saves its best model as a library-format folder whose config records, in its ``source``,
the benchmark, its label names, the primary metric and its value, the text truncation and the evaluation view of
images, and which carries the tokenizer (``tokenizer/``) of a text task. That is everything needed to go from raw
inputs to the benchmark's labels, with no other file::

    model = FineTunedModel.from_pretrained("runs/finetune/sst2/best")
    model.predict(["a gripping, beautifully shot film", "tedious"])       # ['1', '0']
    model.predict([("A man plays a guitar.", "A person makes music.")])   # a pair task: (text, text_pair)

Raw inputs by modality: ``image`` — a file path (decoded by content, any of the formats the benchmark reads);
``text`` — a string; ``text_pair`` — a (text, text pair) tuple; ``points`` — an ``[P, 3]`` array;
``image_text`` (VQA) — an (image path, question) tuple, predicted as the answer string; ``image_pair_text``
(NLVR2) — a ((left image, right image), statement) tuple, predicted as ``True`` or ``False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from itnet_scale.checkpoint.library import from_pretrained, read_library_config
from itnet_scale.data.augment import AugmentSettings, ImageAugmentSettings
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.registry import TASKS
from itnet_scale.tasks import Benchmark, Example, get_benchmark
from itnet_scale.train.finetune_data import TEXT_MODALITIES, ExampleBatcher

#: The fields of the library config's ``source`` that make a folder a fine-tuned model.
REQUIRED = ("benchmark", "label_names", "max_text_tokens", "image")


class FineTunedModel:
    """A fine-tuned task model with what turns raw inputs into its benchmark's labels (see the module doc)."""

    def __init__(self, model: nn.Module, benchmark: Benchmark, batcher: ExampleBatcher,
                 label_names: Sequence[str], source: dict[str, Any]) -> None:
        self.model, self.benchmark, self.batcher = model.eval(), benchmark, batcher
        self.label_names, self.source = list(label_names), source

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FineTunedModel:
        """Load the fine-tuned model folder ``folder`` (``RUN/best`` of a fine-tuning run)."""
        folder = Path(folder)
        config = read_library_config(folder)
        source = dict(config.source)
        missing = [key for key in REQUIRED if key not in source]
        if missing:
            raise ValueError(f"{folder} is not a fine-tuned model folder: its config's source lacks {missing} "
                             "(launch/finetune.py writes them into RUN/best)")
        benchmark = get_benchmark(source["benchmark"])
        tokenizer = None
        if benchmark.modality in TEXT_MODALITIES:
            if not (folder / "tokenizer").is_dir():
                raise FileNotFoundError(f"{folder / 'tokenizer'}: a text model's folder carries its tokenizer")
            tokenizer = Tokenizer.from_dir(folder / "tokenizer")
        model = from_pretrained(TASKS[config.task].model_class, folder)
        augment = AugmentSettings(image=ImageAugmentSettings(**dict(source["image"])))
        labels = list(source["label_names"])
        batcher = ExampleBatcher(benchmark, augment, seed=0, max_text_tokens=int(source["max_text_tokens"]),
                                 tokenizer=tokenizer, classes=max(len(labels), 1), regression=not labels)
        return cls(model, benchmark, batcher, labels, source)

    def _example(self, index: int, raw: Any) -> Example:
        modality = self.benchmark.modality
        if modality == "text_pair":
            if not (isinstance(raw, tuple | list) and len(raw) == 2):
                raise ValueError(f"input {index}: a {self.benchmark.name} model takes (text, text_pair) pairs, got "
                                 f"{type(raw).__name__}")
            return Example(str(index), {"text": str(raw[0]), "text_pair": str(raw[1])})
        if modality == "text":
            if not isinstance(raw, str):
                raise ValueError(f"input {index}: a {self.benchmark.name} model takes strings, got "
                                 f"{type(raw).__name__}")
            return Example(str(index), {"text": raw})
        if modality == "image":
            return Example(str(index), {"image": Path(raw)})
        if modality in ("image_text", "image_pair_text"):
            if not (isinstance(raw, tuple | list) and len(raw) == 2 and isinstance(raw[1], str)):
                what = "(image, question)" if modality == "image_text" else "((left image, right image), statement)"
                raise ValueError(f"input {index}: a {self.benchmark.name} model takes {what} pairs, got {raw!r:.80}")
            if modality == "image_text":
                return Example(str(index), {"image": Path(raw[0]), "text": raw[1]})
            left, right = raw[0]
            return Example(str(index), {"images": (Path(left), Path(right)), "text": raw[1]})
        points = np.asarray(raw, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"input {index}: a point cloud must be [P, 3], got shape {points.shape}")
        return Example(str(index), {"points": points})

    @torch.no_grad()
    def scores(self, inputs: Sequence[Any]) -> np.ndarray:
        """The model's outputs: class scores ``[N, C]`` (logits) or values ``[N]``."""
        examples = [self._example(i, raw) for i, raw in enumerate(inputs)]
        batch = self.batcher.inputs(examples)
        dtype = next(self.model.parameters()).dtype
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        return self.model(batch).float().numpy()

    def predict(self, inputs: Sequence[Any]) -> list[str] | list[float]:
        """Each input's label name (classification) or value (regression)."""
        scores = self.scores(inputs)
        if not self.label_names:
            return [float(v) for v in scores.reshape(-1)]
        return [self.label_names[i] for i in scores.argmax(-1)]


__all__ = ["FineTunedModel"]
