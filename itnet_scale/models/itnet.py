"""ITNet models: :class:`ITNetModel` (encoders + backbone) and the task models built on it.

A batch is a dict; which keys it holds decides the modality (DESIGN §2):

=============  =================================================================================
``text``       ``text_ids`` ``[B, L]`` (+ ``text_attention_mask``, True = real token)
``image``      ``images`` ``[B, C, H, W]`` (+ ``image_mask`` ``[B, h·w]`` for masked patch modeling)
``image_text`` both of the above
``image_pair`` ``images`` and ``images2`` (+ text: NLVR2)
``points``     ``points`` ``[B, P, 3]`` (+ ``points_padding`` ``[B, P]``, ``point_mask`` ``[B, groups]``)
=============  =================================================================================

Tokens of all present modalities are concatenated — images, second image, text, points — each with its
modality-type embedding, and run through one backbone; positions share one space (:mod:`itnet_scale.nn.encoders`).
All task models hold the same ``itnet`` submodule, so a pretrained state dict's ``itnet.*`` loads into any.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from itnet_scale.models.config import ModelConfig
from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.encoders import POS_DIM, ImageEncoder, PointEncoder, TextEncoder
from itnet_scale.nn.heads import (
    ClassificationHead,
    ContrastiveHead,
    MaskedPatchHead,
    MaskedPointHead,
    MLMHead,
    VQAHead,
    masked_mean,
)

#: Modality-type ids (rows of ``ITNetModel.modality``), in concatenation order.
MODALITIES = ("image", "image2", "text", "points")


@dataclass
class Encoded:
    """The backbone's output: ``hidden`` ``[B, N, dim]``, ``pos`` ``[B, N, 3]``, ``padding`` ``[B, N]``,
    ``segments`` (modality → slice of N) and, for point clouds, the groups' local coordinates."""

    hidden: Tensor
    pos: Tensor
    padding: Tensor
    segments: dict[str, slice] = field(default_factory=dict)
    point_groups: Tensor | None = None

    def part(self, modality: str) -> tuple[Tensor, Tensor]:
        """``(hidden, padding)`` of one modality's tokens."""
        where = self.segments[modality]
        return self.hidden[:, where], self.padding[:, where]

    def pooled(self, modality: str | None = None) -> Tensor:
        """Mean of the real tokens (of one modality, or all) → ``[B, dim]``."""
        if modality is None:
            return masked_mean(self.hidden, self.padding)
        return masked_mean(*self.part(modality))


class ITNetModel(nn.Module):
    """Encoders for text, images and point clouds, modality-type embeddings and the shared backbone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.vocab_size, config.dim, config.pad_id)
        self.image = ImageEncoder(config.image_channels, config.dim, config.patch_size)
        self.points = PointEncoder(config.dim, config.point_groups, config.point_group_size)
        self.modality = nn.Embedding(len(MODALITIES), config.dim)
        layers = [config.layer_settings(i) for i in range(config.depth)]
        self.backbone = ITNetBackbone(config.dim, config.heads, layers, pos_dim=POS_DIM, mlp_ratio=config.mlp_ratio,
                                      dropout=config.dropout, norm_eps=config.norm_eps)

    def forward(self, batch: dict[str, Tensor]) -> Encoded:
        parts: list[tuple[str, Tensor, Tensor, Tensor]] = []
        groups = None
        if "images" in batch:
            parts.append(("image", *self.image(batch["images"], batch.get("image_mask"), plane=0)))
        if "images2" in batch:
            parts.append(("image2", *self.image(batch["images2"], batch.get("image2_mask"), plane=1)))
        if "text_ids" in batch:
            parts.append(("text", *self.text(batch["text_ids"], batch.get("text_attention_mask"))))
        if "points" in batch:
            tokens, pos, padding, groups = self.points(batch["points"], batch.get("points_padding"),
                                                       batch.get("point_mask"))
            parts.append(("points", tokens, pos, padding))
        if not parts:
            raise ValueError("batch has no model input: expected some of images, images2, text_ids, points; "
                             f"got keys {sorted(batch)}")
        segments, start = {}, 0
        for name, tokens, _, _ in parts:
            segments[name] = slice(start, start + tokens.shape[1])
            start += tokens.shape[1]
        tokens = torch.cat([t + self.modality.weight[MODALITIES.index(name)] for name, t, _, _ in parts], dim=1)
        pos = torch.cat([p for _, _, p, _ in parts], dim=1)
        padding = torch.cat([m for _, _, _, m in parts], dim=1)
        hidden = self.backbone(tokens, pos, padding if bool(padding.any()) else None)
        return Encoded(hidden, pos, padding, segments, groups)


class ITNetForPretraining(nn.Module):
    """The backbone with the pretraining heads; :meth:`losses` computes the objectives a batch supports.

    - ``mlm``: text with masked ids (``text_ids`` already masked, ``mlm_labels`` −100 where not masked);
      on image–text batches this is image-conditioned MLM;
    - ``itc``: image–text contrastive on ``images`` + unmasked ``text_ids`` (``itc_text_ids`` when MLM runs
      on the same batch);
    - ``mpm``: masked patch modeling (``image_mask``); ``mpp``: masked point modeling (``point_mask``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        self.mlm = MLMHead(config.dim, config.vocab_size, self.itnet.text.embedding, config.norm_eps)
        self.itc = ContrastiveHead(config.dim, config.contrastive_dim)
        self.patch = MaskedPatchHead(config.dim, config.patch_size, config.image_channels)
        self.point = MaskedPointHead(config.dim, config.point_group_size)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every objective ``batch`` supports, by name."""
        losses: dict[str, Tensor] = {}
        masked = {k: v for k, v in batch.items() if k not in ("itc_text_ids",)}
        encoded = self.itnet(masked)
        if "mlm_labels" in batch:
            hidden, _ = encoded.part("text")
            losses["mlm"] = MLMHead.loss(self.mlm(hidden), batch["mlm_labels"])
        if "image_mask" in batch:
            hidden, _ = encoded.part("image")
            losses["mpm"] = self.patch.loss(self.patch(hidden), batch["images"], batch["image_mask"])
        if "point_mask" in batch:
            hidden, _ = encoded.part("points")
            losses["mpp"] = self.point.loss(self.point(hidden), encoded.point_groups, batch["point_mask"])
        if "images" in batch and ("text_ids" in batch or "itc_text_ids" in batch):
            image = self.itnet({"images": batch["images"]}).pooled("image")
            text_only = {"text_ids": batch.get("itc_text_ids", batch.get("text_ids"))}
            if "text_attention_mask" in batch:
                text_only["text_attention_mask"] = batch["text_attention_mask"]
            text = self.itnet(text_only)
            losses["itc"] = self.itc.loss(*self.itc(image, text.pooled("text")))
        return losses


class ITNetForClassification(nn.Module):
    """Pooled backbone → ``classes`` logits (ImageNet images, GLUE text/pairs, ModelNet40 points; 1 = regression)."""

    def __init__(self, config: ModelConfig, classes: int) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        self.head = ClassificationHead(config.dim, classes, config.norm_eps)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.itnet(batch).pooled())

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return ClassificationHead.loss(self(batch), batch["labels"])


class ITNetForVQA(nn.Module):
    """Image + question → answer logits ``[B, answers]``, soft-score BCE against ``answer_scores``."""

    def __init__(self, config: ModelConfig, answers: int) -> None:
        super().__init__()
        self.itnet = ITNetModel(config)
        self.head = VQAHead(config.dim, answers, config.norm_eps)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.itnet(batch).pooled())

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return VQAHead.loss(self(batch), batch["answer_scores"])


class ITNetForNLVR2(ITNetForClassification):
    """Image pair (``images``, ``images2``) + statement → true/false (2 logits)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, classes=2)
