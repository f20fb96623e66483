"""The ITNet block: pre-norm residual, ``x + IT(norm(x))`` then ``x + MLP(norm(x))`` (DESIGN §2).

The integral transform takes attention's place; everything else is a standard pre-norm transformer block, so
the block is the same whatever the kernel, support or integrator of its layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform


class MLP(nn.Module):
    """``Linear(dim → hidden) → GELU → Linear(hidden → dim)`` with dropout: ``[..., dim] → [..., dim]``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ITNetBlock(nn.Module):
    """Pre-norm residual block around one :class:`IntegralTransform` (``mixer``) and one :class:`MLP`.

    ``layer`` holds the transform's keyword arguments (kernel, support, integrator…); ``pos_dim`` is the shared
    position space. ``forward(x [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] | None) → [B, N, dim]``.
    """

    def __init__(self, dim: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 norm_eps: float = 1e-6, layer: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = IntegralTransform(dim, heads, pos_dim=pos_dim, **dict(layer or {}))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x), pos, padding_mask=padding_mask))
        return x + self.mlp(self.norm2(x))
