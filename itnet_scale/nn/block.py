"""The ITNet block: pre-norm residual, ``x + IT(norm1(x))`` then ``x + MLP(norm2(x))`` (DESIGN §2).

The integral transform takes attention's place; everything else is a standard pre-norm transformer block
(LayerNorm, GELU MLP, dropout, stochastic depth), so the block is the same whatever the kernel, support or
integrator of its layer.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform

#: IntegralTransform arguments the block sets itself (a layer config may not give them).
BLOCK_OWNED = ("dim", "heads", "pos_dim")
#: The IntegralTransform keyword arguments a layer config may set.
LAYER_SETTINGS = tuple(name for name, parameter in inspect.signature(IntegralTransform).parameters.items()
                       if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in BLOCK_OWNED)


def check_layer_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``settings`` as a dict after checking every key is an :class:`IntegralTransform` keyword argument a
    layer config may set; an unknown key raises ``ValueError`` naming ``where`` and the key."""
    for key in settings:
        if key not in LAYER_SETTINGS:
            owned = f" (the block sets {key!r} itself)" if key in BLOCK_OWNED else ""
            close = difflib.get_close_matches(str(key), LAYER_SETTINGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close and not owned else ""
            raise ValueError(f"{where}: unknown IntegralTransform setting {key!r}{owned}{hint}")
    return dict(settings)


class MLP(nn.Module):
    """``Linear(dim → hidden) → GELU → dropout → Linear(hidden → dim) → dropout``: ``[..., dim] → [..., dim]``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch ``[B, ...]`` for a random ``prob`` share of the
    samples and scale the others by ``1 / (1 − prob)`` (so the expectation is unchanged); identity in eval."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {prob}")
        self.prob = prob

    def forward(self, branch: Tensor) -> Tensor:
        if not self.training or self.prob == 0.0:
            return branch
        keep = torch.rand((branch.shape[0],) + (1,) * (branch.dim() - 1), device=branch.device) >= self.prob
        return branch * keep.to(branch.dtype) / (1.0 - self.prob)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class ITNetBlock(nn.Module):
    """Pre-norm residual block around one :class:`IntegralTransform` (``mixer``) and one :class:`MLP` (``mlp``).

    Args:
        dim, heads: width and heads of the transform.
        pos_dim: the dimension of the shared position space.
        mlp_ratio: the MLP's hidden width is ``dim · mlp_ratio``.
        dropout: on the transform's output and inside the MLP.
        drop_path: stochastic-depth probability of both residual branches.
        norm_eps: LayerNorm epsilon.
        layer: the transform's keyword arguments (kernel, support, integrator…; see :data:`LAYER_SETTINGS`).

    ``forward(x [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] (True = padding) | None) → [B, N, dim]``;
    ``mixer`` replaces ``self.mixer`` for the call by a transform with the same parameters (the backbone passes
    its sequence-parallel form, :mod:`itnet_scale.parallel.model`).
    """

    def __init__(self, dim: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, layer: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        settings = check_layer_settings(layer or {}, "layer")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = IntegralTransform(dim, heads, pos_dim=pos_dim, **settings)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Tensor | None = None,
                mixer: Callable[..., Tensor] | None = None) -> Tensor:
        mixer = self.mixer if mixer is None else mixer
        x = x + self.drop_path(self.drop(mixer(self.norm1(x), pos, padding_mask=padding_mask)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
