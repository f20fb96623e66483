"""Feature maps ``φ, ψ`` of the low-rank integrator: ``F(s(i,j)) ≈ φ_i·ψ_j`` (DESIGN §1).

They read the same per-head tensors as the exact kernel, concatenated per position::

    u_i = [β/√d · q_i,  a_i + Ua p_i]        u'_j = [k_j,  b_j − Ua p_j]

so that ``u_i·u'_j`` restricted to the first block is the bilinear score, and a map of both
blocks can approximate the kernel MLP and the position term. With ``g = G u`` (a learned
per-head projection, initialized to keep the bilinear block only):

- ``prf`` — positive random features (Performer's FAVOR+), softmax mode:
  ``φ_r = exp(ω_r·g − ‖g‖²/2)/√R`` and the same for ``ψ`` with the same fixed ``ω_r ~ N(0, I)``;
  then ``E[φ·ψ] = exp(g·g')``, which at initialization is ``exp(β q·k/√d)`` exactly in expectation.
- ``learned`` — the same form with ``ω`` learned per side plus an MLP term in the exponent
  (softmax mode; starts as ``prf``), or ``φ = Ω g + MLP(g)`` without the exponential (linear mode;
  ``Ω`` starts as the identity on the bilinear block, so a bilinear-only linear kernel is
  reproduced exactly once ``R ≥ d``). ``tools/distill_kernel.py`` fits them to the exact kernel.

Softmax-mode query features are divided by their largest entry (a per-query constant, which
cancels in the normalization); source exponents are clamped to ``±SOURCE_EXP_MAX``, so no sum of
features overflows fp32/bf16 and no normalizer sinks into denormals (whose reciprocal made
gradients NaN while fitting).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from itnet_scale.ops import KernelInputs

FEATURE_MAPS = ("prf", "learned")
SOURCE_EXP_MAX = 60.0


class FeatureMap(nn.Module):
    """``φ, ψ``: ``[B, H, N, R]`` each, from a layer's :class:`KernelInputs`.

    Args:
        heads: ``H``.
        bilinear_dim: ``d``, the size of the ``q``/``k`` block of ``u`` (0 without bilinear term).
        kernel_width: ``r``, the size of the ``a``/``b`` block (0 without kernel MLP).
        rank: ``R``.
        kind: ``prf`` | ``learned``.
        mode: the layer's kernel mode (``softmax`` features are positive; ``prf`` needs softmax).
    """

    def __init__(self, heads: int, bilinear_dim: int, kernel_width: int, rank: int, kind: str, mode: str) -> None:
        super().__init__()
        if kind not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if kind == "prf" and mode != "softmax":
            raise ValueError("feature_map='prf' approximates exp(s) and needs mode='softmax'; use 'learned'")
        self.kind, self.mode, self.rank = kind, mode, rank
        self.bilinear_dim, self.kernel_width = bilinear_dim, kernel_width
        H, D, R = heads, bilinear_dim + kernel_width, rank
        keep_bilinear = torch.zeros(H, D, D)
        keep_bilinear[:, range(bilinear_dim), range(bilinear_dim)] = 1.0
        self.proj_q = nn.Parameter(keep_bilinear.clone())  # G for queries  [H, D, D]
        self.proj_s = nn.Parameter(keep_bilinear.clone())  # G for sources
        if mode == "linear":
            omega = torch.zeros(H, R, D)
            n = min(R, D)
            omega[:, range(n), range(n)] = 1.0
        else:
            omega = torch.randn(H, R, D)
        if kind == "prf":
            self.register_buffer("omega", omega)
            self.omega_q = self.omega_s = self.mlp_in_q = self.mlp_in_s = self.mlp_out_q = self.mlp_out_s = None
        else:
            self.omega = None
            self.omega_q, self.omega_s = nn.Parameter(omega.clone()), nn.Parameter(omega.clone())
            self.mlp_in_q = nn.Parameter(torch.randn(H, R, D + 1) / math.sqrt(D + 1))  # last column: bias
            self.mlp_in_s = nn.Parameter(torch.randn(H, R, D + 1) / math.sqrt(D + 1))
            self.mlp_out_q = nn.Parameter(torch.zeros(H, R, R))  # zero: starts as the plain map
            self.mlp_out_s = nn.Parameter(torch.zeros(H, R, R))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, mode={self.mode!r}, rank={self.rank}"

    @staticmethod
    def inputs(inp: KernelInputs) -> tuple[Tensor, Tensor]:
        """``u_i`` ``[B, H, Nq, D]`` and ``u'_j`` ``[B, H, Ns, D]`` from the kernel's per-head tensors."""
        uq, us = [], []
        if inp.q is not None:
            uq.append(inp.q * (inp.beta[None, :, None, None] / math.sqrt(inp.q.shape[-1])))
            us.append(inp.k)
        if inp.a is not None:
            a, b = inp.a, inp.b
            if inp.pos_weight is not None:
                a = a + torch.einsum("hrp,bnp->bhnr", inp.pos_weight, inp.pos_q)
                b = b - torch.einsum("hrp,bnp->bhnr", inp.pos_weight, inp.pos_s)
            uq.append(a)
            us.append(b)
        if not uq:  # no bilinear term, no kernel MLP: a zero-width input (constant features)
            B, H, Nq, Ns, _ = inp.shape
            empty = inp.v.new_zeros(B, H, Nq, 0), inp.v.new_zeros(B, H, Ns, 0)
            return empty
        return torch.cat(uq, -1), torch.cat(us, -1)

    def _exponent(self, g: Tensor, omega: Tensor, mlp_in: Tensor | None, mlp_out: Tensor | None) -> Tensor:
        """``Ω g (+ MLP(g))``: ``[B, H, N, D]`` → ``[B, H, N, R]``."""
        h = torch.einsum("hrd,bhnd->bhnr", omega, g)
        if mlp_in is not None:
            hidden = torch.relu(torch.einsum("hrd,bhnd->bhnr", mlp_in[..., :-1], g) + mlp_in[None, :, None, :, -1])
            h = h + torch.einsum("hor,bhnr->bhno", mlp_out, hidden)
        return h

    def forward(self, inp: KernelInputs, detach_inputs: bool = False) -> tuple[Tensor, Tensor]:
        """``(φ [B, H, Nq, R], ψ [B, H, Ns, R])``.

        ``detach_inputs``: no gradient flows back into the kernel's tensors (a Monte Carlo
        proposal trains its feature maps only, never the kernel it follows).
        """
        uq, us = self.inputs(inp)
        if detach_inputs:
            uq, us = uq.detach(), us.detach()
        gq = torch.einsum("hed,bhnd->bhne", self.proj_q, uq)
        gs = torch.einsum("hed,bhnd->bhne", self.proj_s, us)
        learned = self.kind == "learned"
        hq = self._exponent(gq, self.omega_q if learned else self.omega, self.mlp_in_q, self.mlp_out_q)
        hs = self._exponent(gs, self.omega_s if learned else self.omega, self.mlp_in_s, self.mlp_out_s)
        if self.mode == "linear":
            return hq, hs
        hq = hq - 0.5 * (gq * gq).sum(-1, keepdim=True)
        hs = hs - 0.5 * (gs * gs).sum(-1, keepdim=True)
        scale = 1.0 / math.sqrt(self.rank)
        phi = (hq - hq.amax(-1, keepdim=True).detach()).exp() * scale
        psi = hs.clamp(-SOURCE_EXP_MAX, SOURCE_EXP_MAX).exp() * scale
        return phi, psi
