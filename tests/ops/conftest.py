"""Random inputs for the functional core, in the shapes of ``KernelInputs``."""

from __future__ import annotations

import math

import pytest
import torch

from itnet_scale.ops import KernelInputs, KernelSpec


def random_inputs(
    Nq: int,
    Ns: int,
    *,
    spec: KernelSpec,
    B: int = 2,
    H: int = 2,
    d: int = 5,
    e: int = 3,
    r: int = 4,
    depth: int = 1,
    pos_dim: int = 1,
    bilinear: bool = True,
    table: bool = False,
    decay: bool = False,
    weights: str | None = None,  # None | "shared" | "per_head"
    padding: bool = False,
    attn_mask: str | None = None,  # None | "bool" | "float"
    dtype: torch.dtype = torch.float64,
    requires_grad: bool = True,
) -> KernelInputs:
    """Inputs with every requested term switched on; integer-valued positions.

    Query ``i`` sits at position ``i`` scaled to the source range, so causal and window
    supports cut through tiles (some fully visible, some partly, some skipped).
    """
    g = torch.Generator().manual_seed(1234 + Nq * 7 + Ns)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(requires_grad)

    if pos_dim == 1:
        pos_s = torch.arange(Ns, dtype=dtype)[None, :, None].expand(B, Ns, 1)
        pos_q = torch.round(torch.arange(Nq, dtype=dtype) * (Ns / max(Nq, 1)))[None, :, None].expand(B, Nq, 1)
    else:
        side = math.ceil(math.sqrt(Ns))
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
        pos_s = grid[:Ns].to(dtype)[None].expand(B, Ns, 2)
        perm = torch.randperm(side * side, generator=g)[:Nq]
        pos_q = grid[perm].to(dtype)[None].expand(B, Nq, 2)
    pos_q, pos_s = (p.contiguous().requires_grad_(requires_grad) for p in (pos_q, pos_s))
    inp = KernelInputs(v=rnd(B, H, Ns, e), pos_q=pos_q, pos_s=pos_s)
    if bilinear:
        inp.q, inp.k, inp.beta = rnd(B, H, Nq, d), rnd(B, H, Ns, d), rnd(H)
    if r:
        inp.a, inp.b, inp.w2 = rnd(B, H, Nq, r), rnd(B, H, Ns, r), rnd(H, r)
        inp.pos_weight = rnd(H, r, pos_dim, scale=0.3)
        if depth > 1:
            inp.mlp_w, inp.mlp_c = rnd(depth - 1, H, r, r, scale=0.5), rnd(depth - 1, H, r)
    if table:
        inp.table = rnd(H, spec.table_size)
    if decay:
        inc = torch.rand(B, H, Ns, generator=g, dtype=dtype) * 0.3
        tau = torch.cumsum(inc, -1).requires_grad_(requires_grad)
        inp.tau_q = inp.tau_s = tau
    if weights == "shared":
        inp.weights = torch.rand(B, Ns, generator=g, dtype=dtype).requires_grad_(requires_grad)
    elif weights == "per_head":
        inp.weights = torch.rand(B, H, Ns, generator=g, dtype=dtype).requires_grad_(requires_grad)
    if padding:
        pad = torch.zeros(B, Ns, dtype=torch.bool)
        pad[-1, Ns - Ns // 3:] = True
        inp.padding = pad
    if attn_mask == "bool":
        inp.attn_mask = torch.rand(Nq, Ns, generator=g) > 0.3
    elif attn_mask == "float":
        inp.attn_mask = rnd(B, H, Nq, Ns)
    return inp


@pytest.fixture
def make_inputs():
    return random_inputs


@pytest.fixture
def eager_torch_backend(monkeypatch):
    """The tiled form eagerly (compiling for a few small calls costs more than it saves) and no forced backend:
    what the Triton kernels' tests compare against."""
    monkeypatch.setenv("ITNET_COMPILE", "0")
    monkeypatch.delenv("ITNET_BACKEND", raising=False)
