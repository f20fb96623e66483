"""Heads and the losses they train with (DESIGN §2).

Pretraining: masked language modeling (:class:`MLMHead`, with :func:`mask_tokens`), image–text contrastive
(:class:`ContrastiveHead`), masked patch modeling (:class:`MaskedPatchHead`) and masked point modeling
(:class:`MaskedPointHead`). Fine-tuning: classification (:class:`ClassificationHead`: ImageNet, GLUE,
ModelNet40, NLVR2 as two classes), regression (:class:`RegressionHead`: GLUE STS-B) and VQA (:class:`VQAHead`,
soft-score multi-label). Every loss is a mean over what it is defined on (masked tokens, masked patches, masked
groups, samples) and is 0 — still part of the graph — when a batch has none of them, so a batch without a masked
token never yields NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100  # label of positions without a target (PyTorch's ignore_index)
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the contrastive temperature's inverse


def mean_pool(hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Mean over the real tokens: ``[B, N, dim]`` with ``padding_mask`` ``[B, N]`` (True = padding) →
    ``[B, dim]``; how every task pools (the encoders add no ``[CLS]`` token)."""
    if padding_mask is None:
        return hidden.mean(1)
    keep = (~padding_mask)[..., None].to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


POOLINGS = ("mean", "attention")


def check_pooling(kind: str) -> None:
    """``ValueError`` naming ``pooling`` unless ``kind`` is one of :data:`POOLINGS`."""
    if kind not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")


class Pooling(nn.Module):
    """``[B, N, dim]`` (+ ``padding_mask`` ``[B, N]``, True = padding) → ``[B, dim]``, one feature per input.

    ``mean``: :func:`mean_pool`. ``attention``: per head ``h`` (``dim / heads`` channels each) the weighted mean
    ``Σ_j softmax_j(w_hᵀ LN(x_j) + c_h) x_j`` over the real tokens (attention-based MIL pooling, Ilse et al. 2018;
    a learned query as in a ViT's MAP head): the task picks the tokens that carry it — a small object among
    background patches, the answer slot of a sequence — where a mean dilutes them. ``w, c`` start at 0, so it
    starts as the mean. A sample with no real token pools to zeros.
    """

    def __init__(self, dim: int, heads: int, kind: str = "mean", eps: float = 1e-6) -> None:
        super().__init__()
        check_pooling(kind)
        if dim % heads:
            raise ValueError(f"pooling: dim={dim} must be divisible by heads={heads}")
        self.kind, self.heads = kind, heads
        if kind == "attention":
            self.norm = nn.LayerNorm(dim, eps=eps)
            self.score = nn.Linear(dim, heads)
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def forward(self, hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.kind == "mean":
            return mean_pool(hidden, padding_mask)
        scores = self.score(self.norm(hidden))                                  # [B, N, H]
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask[..., None], -torch.inf)
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)                  # an all-padding row: zeros
        return (weights[..., None] * hidden.unflatten(-1, (self.heads, -1))).sum(1).flatten(1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, heads={self.heads}"


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds (same shape); 0 (with gradient) where it never holds."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def mask_tokens(ids: Tensor, *, mask_id: int, vocab_size: int, special_ids: Sequence[int], prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's masking of token ids ``[B, L]`` for MLM: pick each ordinary token with probability ``prob``; of
    the picked, 80% become ``mask_id``, 10% a random ordinary token, 10% stay. Tokens in ``special_ids``
    (which must hold the padding id) are never picked, nor drawn as random replacements.

    Returns ``(inputs, labels)``: the masked ids and the original ids at the picked positions, ``IGNORE``
    (−100) elsewhere. ``generator`` makes the draw reproducible.
    """
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"mask_tokens: ids must be an integer tensor, got {ids.dtype}")
    if not 0.0 < prob < 1.0:
        raise ValueError(f"mask_tokens: prob must be in (0, 1), got {prob}")
    special = torch.zeros(vocab_size, dtype=torch.bool, device=ids.device)
    special_ids = [int(token) for token in special_ids]
    if any(not 0 <= token < vocab_size for token in [*special_ids, mask_id]):
        raise ValueError(f"mask_tokens: special_ids {special_ids} and mask_id={mask_id} must be ids below "
                         f"vocab_size={vocab_size}")
    special[special_ids] = True
    ordinary = (~special).nonzero()[:, 0]
    if len(ordinary) == 0:
        raise ValueError("mask_tokens: every id is special: nothing to mask or draw")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"mask_tokens: ids must lie in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
    picked = (torch.rand(ids.shape, generator=generator, device=ids.device) < prob) & ~special[ids]
    labels = torch.where(picked, ids, IGNORE)
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator, device=ids.device)]
    inputs = torch.where(picked & (action < 0.8), mask_id, ids)
    inputs = torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


class MLMHead(nn.Module):
    """Hidden states ``[..., dim]`` → vocabulary logits ``[..., vocab]`` (dense → GELU → LayerNorm → decoder,
    as BERT); the decoder weight is the text embedding's when ``embedding`` is given (tied)."""

    def __init__(self, dim: int, vocab_size: int, embedding: nn.Embedding | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.decoder = nn.Linear(dim, vocab_size)
        if embedding is not None:
            if tuple(embedding.weight.shape) != (vocab_size, dim):
                raise ValueError(f"tied embedding must be [{vocab_size}, {dim}], got {list(embedding.weight.shape)}")
            self.decoder.weight = embedding.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden))

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy ``logits`` ``[B, L, vocab]`` vs ``labels`` ``[B, L]``, averaged over the picked
        positions only (labels ``IGNORE`` elsewhere)."""
        if tuple(labels.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"mlm_labels must have shape {list(logits.shape[:-1])}, got {list(labels.shape)}")
        labels = labels.flatten()
        per_token = F.cross_entropy(logits.flatten(0, -2), labels, ignore_index=IGNORE, reduction="none")
        return _masked_mean(per_token, labels != IGNORE)


class BatchStandardize(nn.Module):
    """Each feature of ``[B, dim]`` rows to zero mean and unit variance over the batch (BatchNorm without an
    affine map). Training: the batch's statistics, folded into running ones (momentum ``momentum``); evaluation,
    or a batch of one row: the running statistics. The running statistics are float buffers, identical on every
    rank when every rank standardizes the same (all-gathered) rows."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def set_statistics(self, mean: Tensor, var: Tensor) -> None:
        """Replace the running statistics (``[dim]`` each), e.g. by ones recomputed over many rows with the
        current weights — more accurate than the running averages while the weights still move (PreciseBN)."""
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)

    def forward(self, rows: Tensor) -> Tensor:
        batch_statistics = self.training and rows.shape[0] > 1
        return F.batch_norm(rows, self.running_mean, self.running_var, training=batch_statistics,
                            momentum=self.momentum, eps=self.eps)


class ContrastiveHead(nn.Module):
    """Image–text contrastive (CLIP): pooled image and text features ``[B, dim]`` → standardized over the batch →
    projected → L2-normalized embeddings ``[B, embed_dim]``; a learnable temperature (``logit_scale`` starts at
    ``log(1/0.07)``; the scale ``exp(logit_scale)`` is clamped at 100, as CLIP's).

    Why the standardization (SimCLR's and MoCo v3's BatchNorm in the projection head, DINO's centering): a mean
    over many tokens averages out what is specific to each token — which digit, which word — while what every
    input shares adds up coherently: the stem's bias and the empty background patches of an image, the template
    words and the modality embedding of a caption. At initialization the shared part of the tiny model's pooled
    features is 14–28× (images) and 4–7× (captions) larger than their spread across inputs, so after the
    projection and the L2 normalization every image embedding points the same way, every text embedding too,
    and the logits are equal: the loss sits at ``ln B`` and the gradient that would separate the pairs is tiny
    next to the one that grows the shared part (it reached 300× under Adam). Subtracting the batch mean removes
    the shared part, dividing by the spread puts every feature on one scale; the statistics are those of every
    rank's rows when the trainer all-gathers the features first (:meth:`ITNetForPretraining.losses`).
    """

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.image_norm = BatchStandardize(dim)
        self.text_norm = BatchStandardize(dim)
        self.image_proj = nn.Linear(dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(dim, embed_dim, bias=False)
        # Shape [1], not a 0-d scalar: DeepSpeed's engine broadcasts parameters as byte views, which 0-d tensors lack.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled ``image`` / ``text`` features ``[B, dim]`` (every rank's, when gathered) → normalized
        embeddings ``[B, embed_dim]``."""
        return self.encode_image(image), self.encode_text(text)

    def encode_image(self, image: Tensor) -> Tensor:
        """Pooled image features ``[B, dim]`` → normalized embeddings ``[B, embed_dim]``."""
        return F.normalize(self.image_proj(self.image_norm(image)), dim=-1)

    def encode_text(self, text: Tensor) -> Tensor:
        """Pooled text features ``[B, dim]`` → normalized embeddings ``[B, embed_dim]``."""
        return F.normalize(self.text_proj(self.text_norm(text)), dim=-1)

    def loss(self, image: Tensor, text: Tensor, offset: int = 0, rows: int | None = None) -> Tensor:
        """Symmetric InfoNCE of the matched pairs ``image[i] ↔ text[i]`` (normalized ``[N, e]``): the mean of
        image→text and text→image cross-entropies over all ``N`` candidates, for the ``rows`` pairs from
        ``offset`` on (default: all). With data parallelism ``image`` / ``text`` hold every rank's pairs and
        ``offset`` / ``rows`` pick this rank's.
        """
        if image.shape != text.shape:
            raise ValueError(f"image and text embeddings must have the same shape, got {list(image.shape)} and "
                             f"{list(text.shape)}")
        rows = image.shape[0] - offset if rows is None else rows
        if rows < 1 or not 0 <= offset <= image.shape[0] - rows:
            raise ValueError(f"rows {offset}:{offset + rows} are not among the {image.shape[0]} embeddings")
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        local = slice(offset, offset + rows)
        targets = torch.arange(rows, device=image.device) + offset
        return 0.5 * (F.cross_entropy(scale * image[local] @ text.T, targets)
                      + F.cross_entropy(scale * text[local] @ image.T, targets))


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` → ``[B, h·w, patch·patch·C]``: row-major patches (the order of the image tokens),
    pixels row-major inside a patch, channels last."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


class MaskedPatchHead(nn.Module):
    """Masked patch modeling (MAE-style): a hidden state ``[B, h·w, dim]`` → the pixels of its patch
    ``[B, h·w, patch²·C]``; trained against each patch's pixels normalized to zero mean and unit variance."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.patch = patch
        self.decoder = nn.Linear(dim, patch * patch * channels)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(hidden)

    def loss(self, prediction: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        """MSE over the masked patches only (``mask`` ``[B, h·w]``, True = masked)."""
        target = patchify(images, self.patch)
        if prediction.shape != target.shape or tuple(mask.shape) != tuple(target.shape[:2]):
            raise ValueError(f"prediction {list(prediction.shape)} and image_mask {list(mask.shape)} do not match "
                             f"the images' patches {list(target.shape)}")
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return _masked_mean((prediction - target).square().mean(-1), mask)


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance between point sets ``a`` ``[..., n, D]`` and ``b`` ``[..., m, D]``: the mean
    squared distance from each point to the nearest of the other set, summed over both directions → ``[...]``."""
    squared = (a[..., :, None, :] - b[..., None, :, :]).square().sum(-1)  # exact (cdist's matmul path rounds)
    return squared.amin(-1).mean(-1) + squared.amin(-2).mean(-1)


class MaskedPointHead(nn.Module):
    """Masked point modeling (Point-MAE-style): a point token's hidden state ``[B, G, dim]`` → its group's
    ``group_size`` points relative to the token's center ``[B, G, group_size, 3]``. Trained with the Chamfer
    distance, which does not depend on the order of the points in a group (there is none)."""

    def __init__(self, dim: int, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.decoder = nn.Linear(dim, group_size * 3)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(hidden).unflatten(-1, (self.group_size, 3))

    def loss(self, prediction: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
        """Mean Chamfer distance between predicted and true groups over the masked tokens (``mask`` ``[B, G]``)."""
        if prediction.shape != groups.shape or tuple(mask.shape) != tuple(groups.shape[:2]):
            raise ValueError(f"prediction {list(prediction.shape)} and point_mask {list(mask.shape)} do not match "
                             f"the point groups {list(groups.shape)}")
        return _masked_mean(chamfer_distance(prediction, groups), mask)


class ClassificationHead(nn.Module):
    """Pooled ``[B, dim]`` → LayerNorm → ``[B, classes]`` logits (ImageNet, GLUE, ModelNet40, NLVR2);
    cross-entropy against class indices. (One output: :class:`RegressionHead`.)"""

    def __init__(self, dim: int, classes: int, eps: float = 1e-6) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes} (one output: the regression task, "
                             "RegressionHead)")
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.norm(pooled))

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must have shape [{logits.shape[0]}], got {list(labels.shape)}")
        if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]:
            raise ValueError(f"labels must be class indices in [0, {logits.shape[-1]}), got {labels.tolist()}")
        return F.cross_entropy(logits, labels)


class RegressionHead(nn.Module):
    """Pooled ``[B, dim]`` → LayerNorm → one value per sample ``[B]`` (GLUE STS-B); mean squared error."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, 1)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.norm(pooled)).squeeze(-1)

    @staticmethod
    def loss(predictions: Tensor, labels: Tensor) -> Tensor:
        if labels.shape != predictions.shape:
            raise ValueError(f"labels must have shape {list(predictions.shape)}, got {list(labels.shape)}")
        if not labels.is_floating_point() or not bool(torch.isfinite(labels).all()):
            raise ValueError(f"labels must be finite floats (regression targets), got {labels.dtype} "
                             f"{labels.tolist()}")
        return F.mse_loss(predictions, labels.to(predictions.dtype))


class VQAHead(nn.Module):
    """Pooled image + question ``[B, dim]`` → answer-vocabulary logits ``[B, answers]`` (a 2-layer MLP, as
    ViLT's), trained as soft-score multi-label classification."""

    def __init__(self, dim: int, answers: int, eps: float = 1e-6) -> None:
        super().__init__()
        if answers < 1:
            raise ValueError(f"answers must be >= 1, got {answers}")
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.LayerNorm(2 * dim, eps=eps),
                                 nn.Linear(2 * dim, answers))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)

    @staticmethod
    def loss(logits: Tensor, scores: Tensor) -> Tensor:
        """The VQA v2 standard objective: binary cross-entropy of every answer against its soft score in [0, 1]
        (``min(1, #humans who gave it / 3)``), summed over answers and averaged over questions."""
        if scores.shape != logits.shape:
            raise ValueError(f"answer_scores must have shape {list(logits.shape)}, got {list(scores.shape)}")
        if scores.numel() and (scores.min() < 0 or scores.max() > 1):
            raise ValueError("answer_scores must lie in [0, 1]")
        return F.binary_cross_entropy_with_logits(logits, scores.to(logits.dtype), reduction="sum") / logits.shape[0]
