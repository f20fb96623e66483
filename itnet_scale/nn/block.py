"""The ITNet block: pre-norm residual, ``x + IT(norm1(x))`` then ``x + MLP(norm2(x))`` (DESIGN §2).

The integral transform takes attention's place; everything else is a standard pre-norm transformer block
(LayerNorm, GELU MLP, dropout, stochastic depth), so the block is the same whatever the kernel, support or
integrator of its layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform, KernelConfig, check_integrator
from itnet_scale.ops import Exact, Integrator


@dataclass(frozen=True)
class TransformConfig:
    """One block's :class:`IntegralTransform`: its kernel, its integrator and its per-head sizes (``head_dim``,
    ``value_dim``: None for ``dim // heads``) and projection biases. The block gives the width, heads and
    position space."""

    kernel: KernelConfig = field(default_factory=KernelConfig)
    integrator: Integrator = field(default_factory=Exact)
    head_dim: int | None = None
    value_dim: int | None = None
    bias: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, KernelConfig):
            raise TypeError(f"kernel must be a KernelConfig, got {self.kernel!r}")
        check_integrator(self.kernel.spec(), self.integrator, has_features=True)  # the layer makes them if needed

    def build(self, dim: int, heads: int, pos_dim: int) -> IntegralTransform:
        return IntegralTransform(dim, heads, self.kernel, self.integrator, pos_dim=pos_dim, head_dim=self.head_dim,
                                 value_dim=self.value_dim, bias=self.bias)


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
        transform: the transform's kernel, integrator and sizes (:class:`TransformConfig`).

    ``forward(x [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] (True = padding) | None) → [B, N, dim]``.
    """

    def __init__(self, dim: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, transform: TransformConfig | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = (transform or TransformConfig()).build(dim, heads, pos_dim)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.drop(self.mixer(self.norm1(x), pos, padding_mask=padding_mask)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
