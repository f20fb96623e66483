"""ITNet models: :class:`ITNetModel` (encoders + backbone) and the task models built on it.

A batch is a dict of tensors; its input keys decide the modality (``text``, ``image``, ``image_text``,
``image_pair_text``, ``points``; see :class:`~itnet_scale.nn.encoders.MultimodalEncoder`). The tokens of an
image + text or image pair + text batch run through the backbone as one sequence, positions in one shared space
(:mod:`itnet_scale.nn.encoders`); sentence pairs are one text with ``text_segment_ids``. Targets sit in the same
dict: ``mlm_labels``, ``labels``, ``answer_scores``.

Every task model holds the same ``itnet`` submodule (:class:`ITNetModel`), built from one :class:`ModelConfig`,
so the ``itnet.*`` weights of a pretrained model load into any task model. A model builds only the encoders of
``config.modalities`` (a pretraining model only the heads they serve); a pretrained folder with more encoders loads
into it, the unused ones skipped (:mod:`itnet_scale.checkpoint.library`). Pooling (classification, regression,
VQA, NLVR2, contrastive) is ``config.pooling`` over the real tokens (:meth:`ITNetModel.pool`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from itnet_scale.checkpoint.library import PretrainedMixin
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import register_task
from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.encoders import POS_DIM, EncodedTokens, MultimodalEncoder, batch_modality
from itnet_scale.nn.heads import (
    IGNORE,
    ClassificationHead,
    ContrastiveHead,
    MaskedPatchHead,
    MaskedPointHead,
    MLMHead,
    Pooling,
    RegressionHead,
    VQAHead,
)

#: ``gather(local [B, dim]) → (every rank's rows [W·B, dim], offset of this rank's rows)``: the contrastive loss's
#: pooled features, all-gathered (with gradient) across the data-parallel ranks.
Gather = Callable[[Tensor], tuple[Tensor, int]]


class ITNetOutput(NamedTuple):
    """The backbone's output: ``hidden`` ``[B, N, dim]`` for the tokens of ``inputs`` (their positions,
    padding mask, segments and point groups) of a batch of ``modality``. (A NamedTuple so that DeepSpeed ZeRO-3
    sees its tensors; see :class:`~itnet_scale.nn.encoders.EncodedTokens`.)"""

    hidden: Tensor
    inputs: EncodedTokens
    modality: str

    @property
    def pos(self) -> Tensor:
        """``[B, N, 3]`` token positions."""
        return self.inputs.pos

    @property
    def padding_mask(self) -> Tensor:
        """``[B, N]``, True = padding."""
        return self.inputs.padding_mask

    def part(self, segment: str) -> tuple[Tensor, Tensor]:
        """``(hidden [B, n, dim], padding_mask [B, n])`` of one segment (``text``, ``image``, ``image2``,
        ``points``)."""
        if segment not in self.inputs.segments:
            raise ValueError(f"this {self.modality} batch has no {segment!r} tokens; it has "
                             f"{list(self.inputs.segments)}")
        where = self.inputs.segments[segment]
        return self.hidden[:, where], self.padding_mask[:, where]


def require_modalities(config: ModelConfig, needed: tuple[str, ...], task: str) -> None:
    """``ValueError`` naming ``modalities`` unless ``config`` builds every encoder of ``needed``."""
    missing = [name for name in needed if name not in config.modalities]
    if missing:
        raise ValueError(f"task {task!r} needs the {' and '.join(needed)} encoders; modalities={config.modalities} "
                         f"lacks {missing}")


@register_task("backbone")
class ITNetModel(PretrainedMixin, nn.Module):
    """The modality encoders (``encoder``) and the shared backbone (``backbone``) of ``config``.

    ``forward(batch) → ITNetOutput``: the hidden states ``[B, N, dim]`` and the tokens' positions.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MultimodalEncoder(
            config.dim, vocab_size=config.vocab_size, pad_id=config.pad_id, image_channels=config.image_channels,
            patch_size=config.patch_size, image_stem=config.image_stem, point_tokens=config.point_tokens,
            point_group_size=config.point_group_size, point_hidden=config.point_hidden,
            point_position_scale=config.point_position_scale, text_segments=config.text_segments,
            modalities=config.modalities)
        self.backbone = ITNetBackbone(
            config.dim, config.depth, config.heads, pos_dim=POS_DIM, mlp_ratio=config.mlp_ratio,
            dropout=config.dropout, drop_path=config.drop_path, norm_eps=config.norm_eps,
            transforms=config.transforms())
        self.pooling = Pooling(config.dim, config.heads, config.pooling, config.norm_eps)

    def forward(self, batch: Mapping[str, Tensor]) -> ITNetOutput:
        inputs = self.encoder(batch)
        padding = inputs.padding_mask if bool(inputs.padding_mask.any()) else None  # none: skip the masking
        hidden = self.backbone(inputs.tokens, inputs.pos, padding)
        return ITNetOutput(hidden, inputs, batch_modality(batch))

    def pool(self, output: ITNetOutput, segment: str | None = None) -> Tensor:
        """``[B, dim]``: the real tokens of one segment of ``output`` (or all its tokens) pooled by
        ``config.pooling`` (:class:`~itnet_scale.nn.Pooling`)."""
        return self.pooling(*((output.hidden, output.padding_mask) if segment is None else output.part(segment)))


@register_task("pretraining")
class ITNetForPretraining(PretrainedMixin, nn.Module):
    """The backbone with the pretraining heads: ``mlm``, ``itc``, ``mpm`` (patches), ``mpp`` (points) — those its
    ``config.modalities`` serve (``mlm``: text; ``itc``: image and text; ``mpm``: image; ``mpp``: points); the
    others are ``None``.

    ``losses(batch)`` (also ``forward``) returns every objective the batch asks for, by name:

    - ``mlm``: with ``mlm_labels`` ``[B, L]`` (−100 where not masked; ``text_ids`` already masked, see
      :func:`~itnet_scale.nn.heads.mask_tokens`): text, or text conditioned on the image of an image–text batch;
    - ``mpm``: with ``image_mask`` ``[B, h·w]``: masked patch modeling on ``images``;
    - ``mpp``: with ``point_mask`` ``[B, tokens]``: masked point modeling;
    - ``itc``: on every image–text batch: the image alone and the (unmasked) text alone through the backbone,
      pooled, contrasted. The unmasked text is ``text_ids`` with ``mlm_labels`` put back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        text, image, points = (name in config.modalities for name in ("text", "image", "points"))
        tied = self.itnet.encoder.text.embedding if text and config.tie_mlm_decoder else None
        self.mlm = MLMHead(config.dim, config.vocab_size, tied, config.norm_eps) if text else None
        self.itc = ContrastiveHead(config.dim, config.contrastive_dim) if text and image else None
        self.mpm = MaskedPatchHead(config.dim, config.patch_size, config.image_channels) if image else None
        self.mpp = MaskedPointHead(config.dim, config.point_group_size) if points else None

    def forward(self, batch: Mapping[str, Tensor], gather: Gather | None = None, *,
                evaluate: bool = False) -> dict[str, Tensor]:
        """Training: :meth:`losses`. ``evaluate=True``: :meth:`evaluation_outputs` — as a forward of the whole
        model, which is what DeepSpeed ZeRO-3's hooks need to gather every parameter it reads."""
        return self.evaluation_outputs(batch) if evaluate else self.losses(batch, gather)

    def evaluation_outputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What held-out evaluation reads of a batch: every objective it asks for (``itc`` from the embeddings);
        the normalized ``image_embedding`` / ``text_embedding`` ``[B, contrastive_dim]`` of image–text pairs
        (retrieval), of images (zero-shot classification) and of text that asks for no objective (the zero-shot
        prompts); for image–text batches the pooled ``image_features`` / ``text_features`` ``[B, dim]`` (the
        contrastive head's calibration); for point clouds that ask for no objective, the pooled ``point_features``
        ``[B, dim]`` (so that every modality's plain input runs the backbone: the kernel atlas reads its layers), and
        so for images and text the pooled ``image_features`` / ``text_features`` where the model has no contrastive
        head (its ``modalities`` lack text or images)."""
        modality = batch_modality(batch)
        outputs: dict[str, Tensor] = {}
        if any(key in batch for key in ("mlm_labels", "image_mask", "point_mask")):
            outputs.update(self.losses(batch, contrastive=False))
        if modality == "image_text":
            image, text = self.contrastive_features(batch)
            outputs["image_features"], outputs["text_features"] = image, text
            outputs["image_embedding"], outputs["text_embedding"] = self.itc(image, text)
            outputs["itc"] = self.itc.loss(outputs["image_embedding"], outputs["text_embedding"])
        elif modality == "image":
            image = self.image_features(batch["images"])
            outputs.update({"image_embedding": self.itc.encode_image(image)} if self.itc is not None else
                           {"image_features": image})
        elif modality == "text" and "mlm_labels" not in batch:
            text = self.text_features(batch["text_ids"], batch.get("text_attention_mask"))
            outputs.update({"text_embedding": self.itc.encode_text(text)} if self.itc is not None else
                           {"text_features": text})
        elif modality == "points" and "point_mask" not in batch:
            outputs["point_features"] = self.itnet.pool(self.itnet(batch), "points")
        return outputs

    def image_features(self, images: Tensor) -> Tensor:
        """``images`` ``[B, C, H, W]`` alone through the backbone, pooled: ``[B, dim]``."""
        return self.itnet.pool(self.itnet({"images": images}), "image")

    def text_features(self, text_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``text_ids`` ``[B, L]`` alone through the backbone, pooled over the real tokens: ``[B, dim]``."""
        batch = {"text_ids": text_ids}
        if attention_mask is not None:
            batch["text_attention_mask"] = attention_mask
        return self.itnet.pool(self.itnet(batch), "text")

    def contrastive_features(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Pooled ``(image, text)`` features ``[B, dim]`` of an image–text batch, each modality through the
        backbone on its own (CLIP-style), the text unmasked (``mlm_labels`` put back)."""
        text_ids = batch["text_ids"]
        if "mlm_labels" in batch:
            text_ids = torch.where(batch["mlm_labels"] != IGNORE, batch["mlm_labels"], text_ids)
        return self.image_features(batch["images"]), self.text_features(text_ids, batch.get("text_attention_mask"))

    def contrastive_embeddings(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Normalized ``(image, text)`` embeddings ``[B, contrastive_dim]`` of an image–text batch (training:
        standardized with this batch's statistics; evaluation: the running ones)."""
        return self.itc(*self.contrastive_features(batch))

    def losses(self, batch: Mapping[str, Tensor], gather: Gather | None = None, *,
               contrastive: bool = True) -> dict[str, Tensor]:
        """The objectives of ``batch`` by name. ``gather`` (data parallelism) all-gathers the pooled contrastive
        features across ranks, so every rank standardizes with, and contrasts against, the global batch; without
        it, the local one. ``contrastive=False`` leaves ``itc`` out (evaluation computes it from the embeddings
        it keeps)."""
        modality = batch_modality(batch)
        wanted = [name for name, key in (("mlm", "mlm_labels"), ("mpm", "image_mask"), ("mpp", "point_mask"))
                  if key in batch]
        if not wanted and (modality != "image_text" or not contrastive):
            raise ValueError(f"this {modality} batch (keys {sorted(batch)}) asks for no pretraining objective: "
                             "give mlm_labels, image_mask or point_mask, or an image–text batch (contrastive)")
        losses: dict[str, Tensor] = {}
        if wanted:
            output = self.itnet(batch)
            if "mlm" in wanted:
                losses["mlm"] = MLMHead.loss(self.mlm(output.part("text")[0]), batch["mlm_labels"])
            if "mpm" in wanted:
                losses["mpm"] = self.mpm.loss(self.mpm(output.part("image")[0]), batch["images"], batch["image_mask"])
            if "mpp" in wanted:
                losses["mpp"] = self.mpp.loss(self.mpp(output.part("points")[0]), output.inputs.point_groups,
                                              batch["point_mask"])
        if modality == "image_text" and contrastive:
            image, text = self.contrastive_features(batch)
            rows, offset = image.shape[0], 0
            if gather is not None:  # every rank's pooled features: the statistics and candidates of the global batch
                (image, offset), (text, _) = gather(image), gather(text)
            losses["itc"] = self.itc.loss(*self.itc(image, text), offset, rows)
        return losses


@register_task("classification", label_argument="classes")
class ITNetForClassification(PretrainedMixin, nn.Module):
    """Pooled backbone → ``classes`` logits ``[B, classes]``: ImageNet (images), GLUE (text, sentence pairs with
    ``text_segment_ids``), ModelNet40 (points). Targets: ``labels`` ``[B]`` class indices. (One output, STS-B: the
    ``regression`` task.)"""

    def __init__(self, config: ModelConfig, classes: int) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        self.head = ClassificationHead(config.dim, classes, config.norm_eps)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.itnet.pool(self.itnet(batch)))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        return ClassificationHead.loss(self(batch), batch["labels"])


@register_task("regression")
class ITNetForRegression(PretrainedMixin, nn.Module):
    """Pooled backbone → one value per sample ``[B]`` (GLUE STS-B's similarity score), pooled as classification;
    mean squared error against ``labels`` ``[B]`` (floats)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        self.head = RegressionHead(config.dim, config.norm_eps)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.itnet.pool(self.itnet(batch)))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        return RegressionHead.loss(self(batch), batch["labels"])


@register_task("vqa", label_argument="answers")
class ITNetForVQA(PretrainedMixin, nn.Module):
    """Image + question → answer logits ``[B, answers]``; soft-score BCE against ``answer_scores`` ``[B, answers]``."""

    def __init__(self, config: ModelConfig, answers: int) -> None:
        super().__init__()
        require_modalities(config, ("image", "text"), "vqa")
        self.itnet = ITNetModel(config)
        self.head = VQAHead(config.dim, answers, config.norm_eps)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.itnet.pool(self.itnet(batch)))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        return VQAHead.loss(self(batch), batch["answer_scores"])


@register_task("nlvr2")
class ITNetForNLVR2(PretrainedMixin, nn.Module):
    """Image pair (``images``, ``images2``) + statement (``text_ids``) → 2 logits (false, true) ``[B, 2]``; targets
    ``labels`` ``[B]``. ``config.image_pair_form``:

    - ``single``: one sequence — image, image 2 (at its own positions), text — pooled → head;
    - ``paired``: (image, text) and (image 2, text) as two sequences of one backbone pass (batch ``2B``), each
      pooled; ``[pooled 1, pooled 2]`` ``[B, 2·dim]`` → head (ViLT's and BEiT-3's NLVR2 form).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        require_modalities(config, ("image", "text"), "nlvr2")
        self.paired = config.image_pair_form == "paired"
        self.itnet = ITNetModel(config)
        self.head = ClassificationHead(config.dim * (2 if self.paired else 1), 2, config.norm_eps)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        modality = batch_modality(batch)
        if modality != "image_pair_text":
            raise ValueError(f"NLVR2 takes image_pair_text batches (images, images2, text_ids), got {modality!r}")
        if not self.paired:
            return self.head(self.itnet.pool(self.itnet(batch)))
        text = {key: torch.cat([batch[key], batch[key]]) for key in ("text_ids", "text_attention_mask",
                                                                     "text_segment_ids") if key in batch}
        pooled = self.itnet.pool(self.itnet({"images": torch.cat([batch["images"], batch["images2"]]), **text}))
        first, second = pooled.chunk(2)
        return self.head(torch.cat([first, second], dim=-1))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        return ClassificationHead.loss(self(batch), batch["labels"])
