"""Where the Monte Carlo integrator looks: proposals over sources, shared by a block of queries.

Queries are grouped in blocks of ``bq`` consecutive queries; each block draws ``M`` sources
from a proposal ``q(j)`` and every query of the block uses them. Shared samples turn the
sampled pairs into dense ``bq × M`` tiles (matmuls and the fused tile code of the exact
integrator) instead of ``bq·M`` scattered gathers; each query's estimate keeps its properties
(unbiased in linear mode), and ``bq = 1`` gives every query its own samples.

A draw is a :class:`Samples`: source indices, their importance factor ``c = 1/(M·q(j))``
(detached; 0 on unused slots) and, for learned proposals, ``log q(j)`` with gradients for the
proposal's own loss. A stratum with no more candidates than slots is enumerated instead
(each candidate once, ``c = 1``: Horvitz–Thompson with inclusion probability 1), so
``M ≥ N`` reproduces the exact integral.

Proposals (``self`` transforms with a causal support only look at ``j ≤`` the block's last query):

- ``uniform``: ``q(j) = 1/n`` over the ``n`` candidates.
- ``window``: stratified for locality — the sources within ``window`` positions (sequence
  order) of the block are enumerated, the rest sampled uniformly with the remaining slots.
- ``learned``: ``q(j) ∝ Σ_h φ̄_h·ψ_hj`` from the low-rank feature maps (``φ̄`` the block's mean
  query features), mixed with ``uniform`` (share ``ε``) so every source stays reachable.
  Sampling is a mixture draw — a component ``(h, r)`` with probability ``∝ φ̄_hr Z_hr``, then
  ``j`` by inverse CDF of ``ψ_·hr`` — so it costs ``O(N·H·R + M·log N)`` per block, never ``O(N²)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Samples:
    """One draw for every query block: ``[B, nb, M]`` each.

    index: source indices (long).
    scale: importance factor ``1/(M·q(j))`` (``1`` for enumerated sources, ``0`` on unused slots).
    log_prob: ``log q(j)`` with gradients to the proposal's parameters (learned proposals), or None.
    enumerated: ``[B, nb]`` bool, True where the block's sources were enumerated, not sampled.
    """

    index: Tensor
    scale: Tensor
    log_prob: Tensor | None = None
    enumerated: Tensor | None = None


@dataclass(frozen=True)
class BlockLayout:
    """Query blocks of one call: ``nb`` blocks of ``bq`` queries over ``Nq`` queries and ``Ns`` sources."""

    Nq: int
    Ns: int
    bq: int
    causal: bool

    @property
    def nb(self) -> int:
        return -(-self.Nq // self.bq)

    def block_ends(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """First and last query index of each block: ``[nb]`` each."""
        first = torch.arange(self.nb, device=device) * self.bq
        return first, (first + self.bq - 1).clamp(max=self.Nq - 1)

    def candidates(self, device: torch.device) -> Tensor:
        """Sources each block may see, ``[nb]``: all of them, or the causal prefix ``0 … last``."""
        if not self.causal:
            return torch.full((self.nb,), self.Ns, device=device)
        return (self.block_ends(device)[1] + 1).clamp(max=self.Ns)


def _uniform_slots(count: Tensor, M: int, B: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``M`` draws from ``0 … count−1`` per block (enumerated when ``count ≤ M``): ``(u [B, nb, M], scale)``."""
    nb = count.shape[-1]
    count = count.expand(B, nb)[..., None].to(torch.float64)                      # [B, nb, 1]
    slot = torch.arange(M, device=count.device, dtype=torch.float64)
    drawn = torch.rand(B, nb, M, generator=generator, device=count.device, dtype=torch.float64)
    enum = count <= M
    u = torch.where(enum, slot.expand(B, nb, M), (drawn * count).floor())
    u = torch.minimum(u, (count - 1).clamp_min(0)).long()
    scale = torch.where(enum, (slot < count).double(), count / M)
    return u, scale


def uniform(layout: BlockLayout, B: int, M: int, *, device: torch.device, generator: torch.Generator | None = None
            ) -> Samples:
    """``q(j) = 1/n`` over each block's ``n`` candidate sources."""
    count = layout.candidates(device)
    index, scale = _uniform_slots(count, M, B, generator)
    return Samples(index, scale, enumerated=(count <= M).expand(B, -1))


def window(layout: BlockLayout, B: int, M: int, half_width: int, *, device: torch.device,
           generator: torch.Generator | None = None) -> Samples:
    """Enumerate sources within ``half_width`` of the block (``j ≤ last`` if causal); sample the rest uniformly."""
    if layout.Nq != layout.Ns:
        raise ValueError("the window proposal needs a self-transform (as many queries as sources)")
    first, last = layout.block_ends(device)
    lo = (first - half_width).clamp(min=0)
    hi = last if layout.causal else (last + half_width).clamp(max=layout.Ns - 1)
    n_win = hi - lo + 1                                                             # [nb]
    W = layout.bq + (half_width if layout.causal else 2 * half_width)
    if W >= M:
        raise ValueError(f"window proposal: the window of a block ({W} sources: block {layout.bq} + window "
                         f"{half_width}{'' if layout.causal else ' on each side'}) must leave slots of samples={M}")
    slot = torch.arange(W, device=device)
    win_index = (lo[:, None] + slot).clamp(max=layout.Ns - 1).expand(B, -1, -1)
    win_scale = (slot < n_win[:, None]).double().expand(B, -1, -1)
    rest = layout.candidates(device) - n_win                                        # sources outside the window
    u, rest_scale = _uniform_slots(rest, M - W, B, generator)
    rest_index = torch.where(u < lo[None, :, None], u, u + n_win[None, :, None])    # skip over the window
    rest_index = rest_index.clamp(max=layout.Ns - 1)
    index, scale = torch.cat([win_index, rest_index], -1), torch.cat([win_scale, rest_scale], -1)
    everything = uniform(layout, B, M, device=device)                 # blocks with ≤ M candidates: enumerate all
    few = everything.enumerated[..., None]
    return Samples(torch.where(few, everything.index, index), torch.where(few, everything.scale, scale),
                   enumerated=(rest <= M - W).expand(B, -1) | everything.enumerated)


def learned(layout: BlockLayout, phi: Tensor, psi: Tensor, M: int, *, uniform_share: float = 0.1,
            generator: torch.Generator | None = None) -> Samples:
    """``q(j) = (1−ε) Σ_h φ̄_h·ψ_hj / Z + ε/n`` per block, from positive features ``φ [B,H,Nq,R]``, ``ψ [B,H,Ns,R]``."""
    if not 0 < uniform_share <= 1:
        raise ValueError(f"uniform_share must be in (0, 1], got {uniform_share}")
    B, H, Nq, R = phi.shape
    Ns, nb, bq = psi.shape[2], layout.nb, layout.bq
    device = phi.device
    pad = nb * bq - Nq
    phi_pad = torch.cat([phi, phi[:, :, -1:].expand(B, H, pad, R)], 2) if pad else phi
    phi_bar = phi_pad.unflatten(2, (nb, bq)).mean(3).permute(0, 2, 1, 3).reshape(B, nb, H * R)  # [B, nb, HR]
    psi_flat = psi.permute(0, 1, 3, 2).reshape(B, H * R, Ns)                                     # [B, HR, Ns]
    count = layout.candidates(device)                                                             # [nb]
    cdf = torch.cumsum(psi_flat.detach().double(), -1)                                            # [B, HR, Ns]
    Z = cdf.gather(2, (count - 1).expand(B, H * R, nb))                                           # [B, HR, nb]
    comp = (phi_bar.detach().double() * Z.transpose(1, 2)).clamp_min(0)                          # [B, nb, HR]
    dead = comp.sum(-1, keepdim=True) <= 0                                                        # nothing to follow
    comp = torch.where(dead, 1.0, comp)
    k = torch.multinomial(comp.reshape(B * nb, H * R), M, replacement=True, generator=generator).view(B, nb, M)
    # inverse CDF in one sorted sequence: row k of the cdf is shifted by the totals of the rows before it
    totals = cdf[..., -1]                                                                         # [B, HR]
    shift = torch.cumsum(totals, -1) - totals
    flat = (cdf + shift[..., None]).reshape(B, H * R * Ns)
    u = torch.rand(B, nb, M, generator=generator, device=device, dtype=torch.float64)
    target = shift.gather(1, k.reshape(B, -1)).view(B, nb, M) + u * Z.transpose(1, 2).gather(2, k)
    pos = torch.searchsorted(flat, target.reshape(B, -1), right=True).view(B, nb, M)
    j_feat = (pos - k * Ns).clamp(0, Ns - 1)
    j_feat = torch.minimum(j_feat, (count - 1)[None, :, None])
    take_uniform = (torch.rand(B, nb, M, generator=generator, device=device) < uniform_share) | dead
    j_uni, _ = _uniform_slots(count, M, B, generator)
    sampled = torch.where(take_uniform, torch.minimum(j_uni, (count - 1)[None, :, None]), j_feat)
    enum = (count <= M).expand(B, nb)
    slot = torch.arange(M, device=device)
    index = torch.where(enum[..., None], torch.minimum(slot, (count - 1)[None, :, None]), sampled)
    # q(j) of the mixture, differentiable in φ and ψ for the proposal loss
    psi_j = psi_flat.gather(2, index.reshape(B, 1, -1).expand(B, H * R, -1)).view(B, H * R, nb, M)
    Zt = torch.cumsum(psi_flat, -1).gather(2, (count - 1).expand(B, H * R, nb))                  # [B, HR, nb]
    feat = (phi_bar[..., None] * psi_j.permute(0, 2, 1, 3)).sum(2)                                # [B, nb, M]
    norm = (phi_bar * Zt.transpose(1, 2)).sum(-1, keepdim=True)                                  # [B, nb, 1]
    share = torch.full_like(norm, uniform_share).masked_fill(dead, 1.0)
    q = (1 - share) * feat / norm.clamp_min(torch.finfo(feat.dtype).tiny) + share / count[None, :, None]
    log_prob = q.clamp_min(torch.finfo(q.dtype).tiny).log()
    scale = torch.where(enum[..., None], (slot < count[None, :, None]).double(), 1.0 / (M * q.detach().double()))
    return Samples(index, scale, log_prob=log_prob, enumerated=enum)
