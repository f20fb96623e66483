"""Modality encoders: tokens ``[B, N, dim]`` and their positions ``[B, N, 3]`` in one shared space.

Position convention (``POS_DIM = 3``, coordinates ``(sequence, row, column)``), chosen so that the kernel MLP
sees meaningful offsets within a modality and modalities never collide:

- text token ``t`` (0-based) sits at ``(t + 1, 0, 0)``: a 1-D sequence on the first axis (the axis causal
  supports and the low-rank scan follow), starting at 1;
- image patch ``(r, c)`` (patch units) sits at ``(0, r, c)``; the ``k``-th image of an image pair at
  ``(−k, r, c)`` — each image is a plane before the text;
- a point-cloud group sits at its center, the cloud centered and scaled into the unit ball, times
  :data:`POINT_POSITION_SCALE` (so neighbouring groups are a few units apart, like patches).

Which modality a token came from is also told by a modality-type embedding (added by the model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

POS_DIM = 3
POINT_POSITION_SCALE = 8.0


class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` (+ ``attention_mask`` ``[B, L]``, True = real) → tokens, positions, padding mask."""

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embedding.weight, std=0.02)  # BERT's init: the MLM decoder is tied to it
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.pad_id = pad_id

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text ids must be integer [batch, length], got {tuple(ids.shape)} {ids.dtype}")
        if int(ids.max()) >= self.embedding.num_embeddings or int(ids.min()) < 0:
            raise ValueError(f"text ids must lie in [0, {self.embedding.num_embeddings}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        B, L = ids.shape
        padding = ids == self.pad_id if attention_mask is None else ~attention_mask.bool()
        pos = torch.zeros(B, L, POS_DIM, dtype=self.embedding.weight.dtype, device=ids.device)
        pos[..., 0] = torch.arange(1, L + 1, device=ids.device)
        return self.embedding(ids), pos, padding


class ImageEncoder(nn.Module):
    """Images ``[B, C, H, W]`` → one token per ``patch × patch`` patch (a strided convolution), at ``(0, r, c)``.

    ``mask`` ``[B, h·w]`` (True = hidden, for masked patch modeling) replaces those tokens by a learned mask
    token; their positions stay, so the model knows where to reconstruct.
    """

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.stem = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.mask_token = nn.Parameter(torch.zeros(dim))

    def grid(self, images: Tensor) -> tuple[int, int]:
        """Patches per column and row; images whose sides are not multiples of the patch are refused."""
        if images.dim() != 4 or images.shape[1] != self.stem.in_channels:
            raise ValueError(f"images must be [batch, {self.stem.in_channels}, height, width], "
                             f"got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"image size {H}×{W} is not a multiple of patch_size={self.patch}")
        return H // self.patch, W // self.patch

    def forward(self, images: Tensor, mask: Tensor | None = None, plane: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        h, w = self.grid(images)
        tokens = self.stem(images).flatten(2).transpose(1, 2)  # [B, h·w, dim]
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([torch.full((h * w,), -plane), rows.flatten(), cols.flatten()], dim=-1)
        pos = grid.to(tokens).expand(images.shape[0], -1, -1)
        padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, pos, padding


def farthest_point_sampling(points: Tensor, count: int, padding: Tensor | None = None) -> Tensor:
    """Indices ``[B, count]`` of ``count`` points of ``points`` ``[B, P, 3]``, each the farthest from those
    chosen before; starts at each cloud's first real point (deterministic). Padding points are never chosen."""
    B, P, _ = points.shape
    real = torch.ones(B, P, dtype=torch.bool, device=points.device) if padding is None else ~padding
    if int(real.sum(1).min()) < count:
        raise ValueError(f"farthest_point_sampling: a cloud has {int(real.sum(1).min())} real points, "
                         f"fewer than the {count} to sample")
    distance = torch.where(real, torch.inf, -torch.inf).to(points.dtype)
    chosen = torch.empty(B, count, dtype=torch.long, device=points.device)
    current = real.int().argmax(1)  # the first real point
    batch = torch.arange(B, device=points.device)
    for i in range(count):
        chosen[:, i] = current
        step = (points - points[batch, current][:, None]).square().sum(-1)
        distance = torch.minimum(distance, step)
        current = distance.argmax(1)
    return chosen


class PointEncoder(nn.Module):
    """Point clouds ``[B, P, 3]`` → ``groups`` tokens: farthest-point centers, each with its ``group_size``
    nearest points encoded relative to the center by a per-point MLP and max-pooled (a mini-PointNet).

    Returns tokens, positions (centers, see the module doc), padding (none) and the groups' local coordinates
    ``[B, groups, group_size, 3]`` (the targets of masked point modeling). ``mask`` ``[B, groups]`` hides
    groups behind a learned mask token.
    """

    def __init__(self, dim: int, groups: int, group_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.groups, self.group_size = groups, group_size
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))

    def forward(self, points: Tensor, padding: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be [batch, points, 3], got {tuple(points.shape)}")
        real = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device) if padding is None else ~padding
        weight = real[..., None].to(points.dtype)
        center = (points * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True)
        radius = ((points - center).norm(dim=-1) * real).amax(1).clamp_min(1e-6)[:, None, None]
        unit = (points - center) / radius  # each cloud in the unit ball
        batch = torch.arange(points.shape[0], device=points.device)[:, None]
        centers = unit[batch, farthest_point_sampling(unit, self.groups, padding)]  # [B, G, 3]
        distance = torch.cdist(centers, unit).masked_fill(~real[:, None, :], torch.inf)
        if self.group_size > int(real.sum(1).min()):
            raise ValueError(f"point_group_size={self.group_size} exceeds a cloud's {int(real.sum(1).min())} points")
        nearest = distance.topk(self.group_size, dim=-1, largest=False).indices  # [B, G, k]
        local = unit[batch[..., None], nearest] - centers[:, :, None]  # [B, G, k, 3]
        tokens = self.mlp(local).amax(2)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        pos = centers * POINT_POSITION_SCALE
        return tokens, pos, torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device), local
