"""Heads and the losses they train with: MLM, image–text contrastive, masked patch and point modeling,
classification, VQA (soft-score multi-label) and NLVR2 (pair → binary)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def masked_mean(hidden: Tensor, padding: Tensor | None) -> Tensor:
    """Mean over the real tokens: ``[B, N, dim]``, padding ``[B, N]`` (True = ignore) → ``[B, dim]``."""
    if padding is None:
        return hidden.mean(1)
    keep = (~padding)[..., None].to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def mask_tokens(ids: Tensor, *, mask_id: int, vocab_size: int, special_ids: Sequence[int], prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking: pick ``prob`` of the ordinary tokens; of those 80% become ``mask_id``, 10% a random
    ordinary token, 10% stay. Specials (padding included) are never picked. Returns ``(inputs, labels)``,
    labels ``IGNORE`` (−100) where nothing was picked."""
    special = torch.zeros_like(ids, dtype=torch.bool)
    for token in special_ids:
        special |= ids == token
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    picked = (draw < prob) & ~special
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    ordinary = [t for t in range(vocab_size) if t not in set(special_ids)]
    choices = torch.tensor(ordinary, device=ids.device)
    random_tokens = choices[torch.randint(len(ordinary), ids.shape, generator=generator, device=ids.device)]
    inputs = torch.where(picked & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(picked & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return inputs, labels


class MLMHead(nn.Module):
    """Hidden states ``[B, N, dim]`` → vocabulary logits; the decoder is tied to ``embedding`` when given."""

    def __init__(self, dim: int, vocab_size: int, embedding: nn.Embedding | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.decoder = nn.Linear(dim, vocab_size)
        if embedding is not None:
            self.decoder.weight = embedding.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden))

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy over the picked positions only (labels ``IGNORE`` elsewhere)."""
        return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE)


class ContrastiveHead(nn.Module):
    """Image–text contrastive (CLIP-style InfoNCE): pooled embeddings → normalized projections, a learnable
    temperature (``logit_scale`` starts at ``log(1/0.07)``, its exponential clamped at 100)."""

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return F.normalize(self.image_proj(image), dim=-1), F.normalize(self.text_proj(text), dim=-1)

    def loss(self, image: Tensor, text: Tensor, all_image: Tensor | None = None,
             all_text: Tensor | None = None, offset: int = 0) -> Tensor:
        """Symmetric cross-entropy of this rank's ``[B, e]`` embeddings against the candidates: the local batch,
        or the features gathered from every rank (``all_image``/``all_text``, where this rank's rows start at
        ``offset``) — the hook the distributed trainer uses."""
        all_image = image if all_image is None else all_image
        all_text = text if all_text is None else all_text
        scale = self.logit_scale.exp().clamp(max=100.0)
        targets = torch.arange(image.shape[0], device=image.device) + offset
        return 0.5 * (F.cross_entropy(scale * image @ all_text.T, targets)
                      + F.cross_entropy(scale * text @ all_image.T, targets))


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` → ``[B, h·w, patch·patch·C]`` (row-major patches, channels last)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


class MaskedPatchHead(nn.Module):
    """Masked patch modeling (MAE-style): predict each masked patch's pixels, normalized per patch."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.patch = patch
        self.decoder = nn.Linear(dim, patch * patch * channels)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(hidden)

    def loss(self, prediction: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        """MSE on the masked patches (``mask`` ``[B, h·w]``) against per-patch normalized pixels."""
        target = patchify(images, self.patch)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (prediction - target).square().mean(-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance between point sets ``[..., n, 3]`` and ``[..., m, 3]`` (squared L2, mean of
    both directions), ``[...]``."""
    d = torch.cdist(a, b).square()
    return d.amin(-1).mean(-1) + d.amin(-2).mean(-1)


class MaskedPointHead(nn.Module):
    """Masked point modeling (Point-MAE-style): from a masked group's hidden state, predict its ``group_size``
    points relative to the group center; trained with the Chamfer distance (order-free)."""

    def __init__(self, dim: int, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.decoder = nn.Linear(dim, group_size * 3)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(hidden).unflatten(-1, (self.group_size, 3))

    def loss(self, prediction: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
        """Mean Chamfer distance over the masked groups (``mask`` ``[B, G]``)."""
        return chamfer_distance(prediction[mask], groups[mask]).mean()


class ClassificationHead(nn.Module):
    """Pooled ``[B, dim]`` → ``[B, classes]`` logits (ImageNet, GLUE, ModelNet40; NLVR2 with 2 classes);
    cross-entropy, or MSE for a single regression output (GLUE STS-B)."""

    def __init__(self, dim: int, classes: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.norm(pooled))

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)


class VQAHead(nn.Module):
    """Pooled ``[B, dim]`` → answer-vocabulary logits ``[B, answers]``, trained as soft-score multi-label."""

    def __init__(self, dim: int, answers: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.LayerNorm(2 * dim, eps=eps),
                                 nn.Linear(2 * dim, answers))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)

    @staticmethod
    def loss(logits: Tensor, scores: Tensor) -> Tensor:
        """The VQA v2 standard: binary cross-entropy against soft scores in [0, 1] (``min(1, #humans/3)``),
        summed over answers and averaged over questions."""
        if scores.min() < 0 or scores.max() > 1:
            raise ValueError("VQA answer scores must lie in [0, 1]")
        return F.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / logits.shape[0]
