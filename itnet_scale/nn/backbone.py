"""The ITNet backbone: a stack of :class:`ITNetBlock` with per-layer kernel/integrator settings, then a norm.

Layer ``i``'s integral transform takes the default settings ``layer`` merged with every override in ``layers``
whose key names ``i`` — an index (``3`` or ``"3"``) or an inclusive range (``"0-5"``) — applied in the order
the overrides are listed (a later one wins where two set the same key). E.g. local windows in the first layers
and global mixing above::

    ITNetBackbone(192, 4, 4, pos_dim=3, layer={"kernel_width": 8},
                  layers={"0-1": {"support": "window", "support_size": 4.0}})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from itnet_scale.nn.block import ITNetBlock, check_layer_settings

if TYPE_CHECKING:
    from itnet_scale.parallel.model import SequenceShards

_LAYER_KEY = re.compile(r"^(\d+)(?:-(\d+))?$")


def layer_range(key: str | int, depth: int) -> range:
    """The layer indices an override key names (``3``, ``"3"``, ``"0-5"``); a bad key raises naming it."""
    match = _LAYER_KEY.match(str(key).strip())
    if match is None:
        raise ValueError(f"layers: key {key!r} must be a layer index or an inclusive range like '0-5'")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if first > last or last >= depth:
        raise ValueError(f"layers: key {key!r} names layers outside 0..{depth - 1} (depth={depth})")
    return range(first, last + 1)


def expand_layer_settings(depth: int, layer: Mapping[str, Any] | None = None,
                          layers: Mapping[str | int, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The IntegralTransform keyword arguments of each of ``depth`` layers: ``layer`` merged with the
    ``layers`` overrides that name it. Unknown settings raise naming the override key and the layer index."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    defaults = check_layer_settings(layer or {}, "layer")
    settings = [dict(defaults) for _ in range(depth)]
    for key, override in (layers or {}).items():
        indices = layer_range(key, depth)
        checked = check_layer_settings(override, f"layers[{key!r}] (layer {indices[0]})")
        for index in indices:
            settings[index].update(checked)
    return settings


class ITNetBackbone(nn.Module):
    """``depth`` :class:`ITNetBlock` of width ``dim`` and a final LayerNorm.

    Args:
        dim, depth, heads: width, number of blocks, heads per transform.
        pos_dim: the shared position space (3 for the encoders of :mod:`itnet_scale.nn.encoders`).
        mlp_ratio, dropout, norm_eps: as in :class:`ITNetBlock`.
        drop_path: stochastic depth of the last block; block ``i`` gets ``drop_path · i / (depth − 1)``.
        layer: default IntegralTransform settings of every layer.
        layers: per-layer overrides (see the module doc).

    ``forward(tokens [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] | None) → [B, N, dim]``.
    ``layer_settings[i]`` holds block ``i``'s merged settings. ``sequence_parallel`` (None, or set by
    :func:`itnet_scale.parallel.apply_sequence_parallel`) runs the blocks on this rank's shard of the sequence.
    """

    def __init__(self, dim: int, depth: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 layer: Mapping[str, Any] | None = None,
                 layers: Mapping[str | int, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.layer_settings = expand_layer_settings(depth, layer, layers)
        blocks = []
        for index, settings in enumerate(self.layer_settings):
            try:
                blocks.append(ITNetBlock(dim, heads, pos_dim=pos_dim, mlp_ratio=mlp_ratio, dropout=dropout,
                                         drop_path=drop_path * index / max(depth - 1, 1), norm_eps=norm_eps,
                                         layer=settings))
            except ValueError as error:  # a bad value (the keys were checked above): name the layer
                raise ValueError(f"layer {index}: {error}") from None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.sequence_parallel: SequenceShards | None = None  # not a module: no parameters, no state_dict keys

    def forward(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        sp, length = self.sequence_parallel, tokens.shape[1]
        if sp is not None:  # this rank's shard of the sequence (padded to a multiple of the group size)
            tokens, pos, padding_mask = sp.shard(tokens, pos, padding_mask)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, pos, padding_mask, mixer=None if sp is None else sp.mixers[index])
        tokens = self.norm(tokens)
        return tokens if sp is None else sp.gather(tokens, length)
