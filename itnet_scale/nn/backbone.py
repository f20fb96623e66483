"""The ITNet backbone: a stack of :class:`ITNetBlock` with per-layer kernel/integrator settings, then a norm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from itnet_scale.nn.block import ITNetBlock


class ITNetBackbone(nn.Module):
    """``depth`` blocks of width ``dim``; block ``i``'s integral transform takes ``layers[i]`` (keyword arguments
    of :class:`~itnet_scale.nn.IntegralTransform`, e.g. from :meth:`ModelConfig.layer_settings`).

    ``forward(tokens [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] | None) → [B, N, dim]``.
    """

    def __init__(self, dim: int, heads: int, layers: Sequence[Mapping[str, Any]], *, pos_dim: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        blocks = []
        for index, settings in enumerate(layers):
            try:
                blocks.append(ITNetBlock(dim, heads, pos_dim=pos_dim, mlp_ratio=mlp_ratio, dropout=dropout,
                                         norm_eps=norm_eps, layer=settings))
            except (TypeError, ValueError) as error:
                raise ValueError(f"layer {index}: {error}") from None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens, pos, padding_mask)
        return self.norm(tokens)
