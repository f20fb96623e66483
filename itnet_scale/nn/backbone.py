"""The ITNet backbone: a stack of :class:`ITNetBlock`, each with its own transform settings, then a norm.

Every block takes a :class:`~itnet_scale.nn.block.TransformConfig` (kernel, integrator, sizes): one for all, or
one per block — e.g. local windows in the first layers and global mixing above::

    local = TransformConfig(KernelConfig(width=8, support="window", support_size=4.0))
    ITNetBackbone(192, 4, 4, pos_dim=3, transforms=[local, local, TransformConfig(), TransformConfig()])

(A model config writes the same with YAML overrides per layer range; :mod:`itnet_scale.models.config`.)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from itnet_scale.nn.block import ITNetBlock, TransformConfig


class ITNetBackbone(nn.Module):
    """``depth`` :class:`ITNetBlock` of width ``dim`` and a final LayerNorm.

    Args:
        dim, depth, heads: width, number of blocks, heads per transform.
        pos_dim: the shared position space (3 for the encoders of :mod:`itnet_scale.nn.encoders`).
        mlp_ratio, dropout, norm_eps: as in :class:`ITNetBlock`.
        drop_path: stochastic depth of the last block; block ``i`` gets ``drop_path · i / (depth − 1)``.
        transforms: every block's transform, or one per block.

    ``forward(tokens [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] | None) → [B, N, dim]``.
    """

    def __init__(self, dim: int, depth: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 transforms: TransformConfig | Sequence[TransformConfig] | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if transforms is None or isinstance(transforms, TransformConfig):
            transforms = [transforms or TransformConfig()] * depth
        if len(transforms) != depth:
            raise ValueError(f"transforms: {len(transforms)} given for depth={depth} (one, or one per block)")
        blocks = []
        for index, transform in enumerate(transforms):
            try:
                blocks.append(ITNetBlock(dim, heads, pos_dim=pos_dim, mlp_ratio=mlp_ratio, dropout=dropout,
                                         drop_path=drop_path * index / max(depth - 1, 1), norm_eps=norm_eps,
                                         transform=transform))
            except ValueError as error:  # a value the layer refuses: name the layer
                raise ValueError(f"layer {index}: {error}") from None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens, pos, padding_mask)
        return self.norm(tokens)
