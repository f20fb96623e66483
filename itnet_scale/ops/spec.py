"""The ITNet kernel, defined once: what every backend computes (DESIGN §1).

Per head ``h`` (head dim ``d``, kernel-MLP width ``r``), for query ``i`` and source ``j``::

    s(i,j) = β·q_i·k_j/√d  +  w2ᵀ σ(a_i + b_j)  +  t(p_i − p_j)  [+ float attn_mask]
    D(i,j) = exp(−(τ_i − τ_j))                                     (causal decay; else 1)
    softmax:  K(i,j) = w_j m(i,j) exp(s)·D / Σ_j' w_j' m(i,j') exp(s)·D
    linear:   K(i,j) = w_j m(i,j) s(i,j)·D
    out_i = Σ_j K(i,j) v_j

The module (:class:`itnet_scale.nn.IntegralTransform`) owns the projections
(``q = Wq x``, ``a = Wa x + Ua p + c``, ``b = Wb x − Ua p`` …); the functional core here
takes their per-head results. :func:`pair_scores` and :func:`support_mask` evaluate ``s``
and ``m`` on any block of pairs, so the reference (all pairs at once) and the tiled form
(one block at a time) share one definition of the math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("softmax", "linear")
SUPPORTS = ("all", "causal", "window", "radius", "causal_window")
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "tanh": torch.tanh,
}


@dataclass(frozen=True)
class KernelSpec:
    """Static choices of one integral transform (hashable; no tensors).

    mode: ``"softmax"`` (normalized over sources) or ``"linear"`` (raw kernel sum).
    support: which pairs ``m(i,j)`` may interact, decided on positions:
        ``all``; ``causal`` (``p_j[0] ≤ p_i[0]``); ``window`` (``max_k |p_i[k]−p_j[k]| ≤ size``);
        ``radius`` (``‖p_i − p_j‖₂ ≤ size``); ``causal_window`` (causal and ``p_i[0]−p_j[0] ≤ size``).
    support_size: the window half-width or radius (ignored for ``all``/``causal``).
    activation: ``σ`` of the kernel MLP (a name from :data:`ACTIVATIONS`).
    offset_range: per position dim, the table covers integer offsets ``−R_k … R_k``;
        offsets outside it contribute 0. ``None``: no table.
    """

    mode: str = "softmax"
    support: str = "all"
    support_size: float = math.inf
    activation: str = "relu"
    offset_range: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.support not in SUPPORTS:
            raise ValueError(f"support must be one of {SUPPORTS}, got {self.support!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.support in ("window", "radius", "causal_window") and not 0 <= self.support_size < math.inf:
            raise ValueError(f"support={self.support!r} needs a finite support_size >= 0, got {self.support_size}")

    @property
    def causal(self) -> bool:
        return self.support in ("causal", "causal_window")

    @property
    def table_size(self) -> int:
        return math.prod(2 * r + 1 for r in self.offset_range) if self.offset_range else 0


@dataclass
class KernelInputs:
    """Per-head tensors of one call. ``B`` batch, ``H`` heads, ``Nq`` queries, ``Ns`` sources.

    q, k: ``[B, H, Nq|Ns, d]`` bilinear features, or None (bilinear term off).
    beta: ``[H]`` bilinear scale β (with q/k).
    v: ``[B, H, Ns, e]`` values.
    a, b: ``[B, H, Nq|Ns, r]`` first kernel-MLP layer, split by query/source (bias c in a), or None.
    pos_weight: ``[H, r, P]`` the position part ``Ua`` of the first layer, applied to the exact
        offset: ``z_ij = a_i + b_j + Ua (p_i − p_j)``. Kept apart from ``a``/``b`` because
        ``Ua p_i − Ua p_j`` computed from absolute positions loses precision as positions grow
        (fp32 at N = 2000 already errs by ~1e-5; bf16 far worse). None: no position term.
    mlp_w: ``[L, H, r, r]`` and mlp_c ``[L, H, r]``: optional hidden layers of the kernel MLP.
    w2: ``[H, r]`` kernel-MLP read-out.
    table: ``[H, T]`` offset table (see ``KernelSpec.offset_range``) or None.
    pos_q, pos_s: ``[B, Nq|Ns, P]`` positions (masks and the offset table read them).
    tau_q, tau_s: ``[B, H, Nq|Ns]`` cumulative decay coordinates, or None (float64 keeps
        ``τ_i − τ_j`` exact on long sequences; the difference is cast to ``v``'s dtype).
    weights: ``[B, Ns]`` or ``[B, H, Ns]`` source weights ``w_j`` (≥ 0 in softmax mode), or None.
    padding: ``[B, Ns]`` bool, True where a source is padding (ignored), or None.
    attn_mask: ``[Nq, Ns]`` or ``[B, H, Nq, Ns]``; bool (True = may interact) or float
        (added to the score; softmax mode only), or None.
    """

    v: Tensor
    pos_q: Tensor
    pos_s: Tensor
    q: Tensor | None = None
    k: Tensor | None = None
    beta: Tensor | None = None
    a: Tensor | None = None
    b: Tensor | None = None
    pos_weight: Tensor | None = None
    mlp_w: Tensor | None = None
    mlp_c: Tensor | None = None
    w2: Tensor | None = None
    table: Tensor | None = None
    tau_q: Tensor | None = None
    tau_s: Tensor | None = None
    weights: Tensor | None = None
    padding: Tensor | None = None
    attn_mask: Tensor | None = None

    #: Fields that are parameters (no batch or position axis); every other tensor has batch first.
    PARAMETERS = ("beta", "pos_weight", "mlp_w", "mlp_c", "w2", "table")

    def names(self) -> list[str]:
        return [f.name for f in fields(self)]

    def split(self, size: int) -> list[KernelInputs]:
        """Pieces of ``size`` along the batch.

        One ``split`` per tensor: its backward is a single concatenation, where slicing piece by piece
        would make backward fill a full-size zero gradient per piece. Parameters and a 2-D
        ``attn_mask`` are shared by every piece.
        """
        pieces: dict[str, list] = {}
        for name, t in zip(self.names(), self.tensors()):
            if t is None or name in self.PARAMETERS or (name == "attn_mask" and t.dim() == 2):
                pieces[name] = [t]
            else:
                pieces[name] = list(t.split(size, 0))
        n = max(len(p) for p in pieces.values())
        return [KernelInputs(**{name: p[i] if len(p) > 1 else p[0] for name, p in pieces.items()}) for i in range(n)]

    def tensors(self) -> list[Tensor | None]:
        return [getattr(self, n) for n in self.names()]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(B, H, Nq, Ns, e)``."""
        B, H, Ns, e = self.v.shape
        return B, H, self.pos_q.shape[1], Ns, e


# --------------------------------------------------------------------------------------
# The score s(i,j) and the support m(i,j) on a block of pairs
# --------------------------------------------------------------------------------------


def offsets(pos_q: Tensor, pos_s: Tensor) -> Tensor:
    """``p_i − p_j`` for all pairs: ``[B, Nq, P]``, ``[B, Ns, P]`` → ``[B, Nq, Ns, P]``."""
    return pos_q[:, :, None, :] - pos_s[:, None, :, :]


def table_index(delta: Tensor, offset_range: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Flat table index of each offset and whether it lies inside the table: ``[B, Nq, Ns]`` each.

    Offsets are rounded to integers; the index is row-major over ``δ_k + R_k``.
    """
    idx = torch.zeros(delta.shape[:-1], dtype=torch.long, device=delta.device)
    inside = torch.ones(delta.shape[:-1], dtype=torch.bool, device=delta.device)
    for k, r in enumerate(offset_range):
        dk = torch.round(delta[..., k]).long()
        inside &= dk.abs() <= r
        idx = idx * (2 * r + 1) + (dk.clamp(-r, r) + r)
    return idx, inside


def table_lookup(table: Tensor, index: tuple[Tensor, Tensor]) -> Tensor:
    """``t(δ)`` per head: table ``[H, T]`` at the offsets' :func:`table_index` ``([B, Nq, Ns], [B, Nq, Ns])`` →
    ``[B, H, Nq, Ns]``. An offset outside ``±R_k`` in any dim gives 0.
    """
    idx, inside = index
    H = table.shape[0]
    vals = table[:, idx.reshape(-1)].reshape(H, *idx.shape).movedim(0, 1)  # [B, H, Nq, Ns]
    return vals * inside[:, None].to(vals.dtype)


def position_term(pos_weight: Tensor, delta: Tensor) -> Tensor:
    """``Ua (p_i − p_j)``: ``[H, r, P]``, offsets ``[B, nq, ns, P]`` → ``[B, H, nq, ns, r]``."""
    return torch.einsum("hrp,bqsp->bhqsr", pos_weight, delta)


def kernel_mlp(z: Tensor, inp: KernelInputs, activation: str) -> Tensor:
    """``w2ᵀ σ(… σ(z))`` over the last dim: ``z`` ``[B, H, nq, ns, r]`` → ``[B, H, nq, ns]``."""
    act = ACTIVATIONS[activation]
    h = act(z)
    if inp.mlp_w is not None:
        for W, c in zip(inp.mlp_w, inp.mlp_c):  # [H, r, r], [H, r]
            h = act(torch.einsum("bhqsr,hor->bhqso", h, W) + c[None, :, None, None, :])
    return torch.einsum("bhqsr,hr->bhqs", h, inp.w2)


def pair_scores(inp: KernelInputs, spec: KernelSpec) -> Tensor:
    """``s(i,j)`` for every pair: ``[B, H, Nq, Ns]``.

    Materializes ``[B, H, Nq, Ns, r]`` for the kernel MLP: this is the reference's definition;
    the tiled form evaluates the same terms tile by tile.
    """
    B, H, Nq, Ns, _ = inp.shape
    s = inp.v.new_zeros(B, H, Nq, Ns)
    if inp.q is not None:
        s = s + inp.beta[None, :, None, None] * (inp.q @ inp.k.transpose(-1, -2)) / math.sqrt(inp.q.shape[-1])
    if inp.a is not None:
        z = inp.a[:, :, :, None, :] + inp.b[:, :, None, :, :]
        if inp.pos_weight is not None:
            z = z + position_term(inp.pos_weight, offsets(inp.pos_q, inp.pos_s))
        s = s + kernel_mlp(z, inp, spec.activation)
    if inp.table is not None:
        s = s + table_lookup(inp.table, table_index(offsets(inp.pos_q, inp.pos_s), spec.offset_range))
    if inp.attn_mask is not None and inp.attn_mask.is_floating_point():
        s = s + mask_block(inp.attn_mask, slice(None), slice(None))
    return s


def mask_block(mask: Tensor, qs: slice, ss: slice) -> Tensor:
    """A block of an ``[Nq, Ns]`` or ``[B, H, Nq, Ns]`` mask, broadcastable to ``[B, H, nq, ns]``."""
    return mask[..., qs, ss] if mask.dim() == 4 else mask[None, None, qs, ss]


def support_mask(
    inp: KernelInputs, spec: KernelSpec, qs: slice = slice(None), ss: slice = slice(None)
) -> Tensor | None:
    """``m(i,j)`` for a block, broadcastable to ``[B, H, nq, ns]`` (bool), or None if all-true."""
    m: Tensor | None = None

    def both(x: Tensor) -> Tensor:
        return x if m is None else m & x

    if spec.support != "all":
        pq, ps = inp.pos_q[:, qs], inp.pos_s[:, ss]
        if spec.support in ("causal", "causal_window"):
            lag = pq[:, :, None, 0] - ps[:, None, :, 0]
            m = both(lag >= 0)
            if spec.support == "causal_window":
                m = both(lag <= spec.support_size)
        elif spec.support == "window":
            m = both(offsets(pq, ps).abs().amax(-1) <= spec.support_size)
        else:  # radius
            m = both(offsets(pq, ps).square().sum(-1) <= spec.support_size**2)
        m = m[:, None]
    if inp.padding is not None:
        m = both(~inp.padding[:, None, None, ss])
    if inp.attn_mask is not None and inp.attn_mask.dtype == torch.bool:
        m = both(mask_block(inp.attn_mask, qs, ss))
    return m


def source_weights(inp: KernelInputs, ss: slice = slice(None)) -> Tensor | None:
    """``w_j`` for sources ``ss``, broadcastable to ``[B, H, 1, ns]``, or None."""
    w = inp.weights
    if w is None:
        return None
    return w[:, None, None, ss] if w.dim() == 2 else w[:, :, None, ss]


def decay_log(inp: KernelInputs, qs: slice = slice(None), ss: slice = slice(None)) -> Tensor | None:
    """``log D(i,j) = −(τ_i − τ_j)`` for a block ``[B, H, nq, ns]``, or None without decay."""
    if inp.tau_q is None:
        return None
    return (inp.tau_s[:, :, None, ss] - inp.tau_q[:, :, qs, None]).to(inp.v.dtype)


# --------------------------------------------------------------------------------------
# Input checks shared by all backends
# --------------------------------------------------------------------------------------


def check_inputs(inp: KernelInputs, spec: KernelSpec) -> None:
    """Raise a ``ValueError`` naming the offending tensor if the call is malformed."""
    if inp.v.dim() != 4:
        raise ValueError(f"v must be [batch, heads, sources, value_dim], got shape {tuple(inp.v.shape)}")
    B, H, Nq, Ns, _ = inp.shape
    if Ns == 0:
        raise ValueError("the source set is empty (0 sources): nothing to integrate over")
    for name, t in (("pos_q", inp.pos_q), ("pos_s", inp.pos_s)):
        if t.dim() != 3 or t.shape[0] != B:
            raise ValueError(f"{name} must be [batch={B}, n, pos_dim], got shape {tuple(t.shape)}")
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN positions")
    if inp.pos_s.shape[1] != Ns:
        raise ValueError(f"pos_s has {inp.pos_s.shape[1]} sources but v has {Ns}")
    if inp.pos_q.shape[2] != inp.pos_s.shape[2]:
        raise ValueError(f"pos_q has pos_dim {inp.pos_q.shape[2]} but pos_s has {inp.pos_s.shape[2]}")
    expect = {"q": (B, H, Nq), "k": (B, H, Ns), "a": (B, H, Nq), "b": (B, H, Ns)}
    for name, lead in expect.items():
        t = getattr(inp, name)
        if t is not None and tuple(t.shape[:3]) != lead:
            raise ValueError(f"{name} must start with {lead} (batch, heads, n), got shape {tuple(t.shape)}")
    if (inp.q is None) != (inp.k is None) or (inp.q is not None and inp.beta is None):
        raise ValueError("the bilinear term needs q, k and beta together")
    if (inp.a is None) != (inp.b is None) or (inp.a is not None and inp.w2 is None):
        raise ValueError("the kernel MLP needs a, b and w2 together")
    if inp.pos_weight is not None and (
        inp.a is None or tuple(inp.pos_weight.shape) != (H, inp.a.shape[-1], inp.pos_q.shape[2])
    ):
        raise ValueError(f"pos_weight must be [heads, kernel_width, pos_dim] beside a and b, got "
                         f"{tuple(inp.pos_weight.shape)}")
    if inp.table is not None:
        if spec.offset_range is None or len(spec.offset_range) != inp.pos_q.shape[2]:
            raise ValueError(
                f"offset table needs offset_range with one entry per position dim ({inp.pos_q.shape[2]}),"
                f" got {spec.offset_range}"
            )
        if tuple(inp.table.shape) != (H, spec.table_size):
            raise ValueError(f"table must be [{H}, {spec.table_size}], got {tuple(inp.table.shape)}")
    if (inp.tau_q is None) != (inp.tau_s is None):
        raise ValueError("decay needs both tau_q and tau_s")
    if inp.tau_q is not None and not spec.causal:
        raise ValueError(f"decay needs a causal support ('causal' or 'causal_window'), got {spec.support!r}")
    if inp.weights is not None:
        w = inp.weights
        if not (tuple(w.shape) == (B, Ns) or tuple(w.shape) == (B, H, Ns)):
            raise ValueError(f"weights must be [batch, sources] or [batch, heads, sources], got {tuple(w.shape)}")
        if spec.mode == "softmax" and (w < 0).any():
            raise ValueError("weights must be non-negative in softmax mode")
    if inp.padding is not None and (inp.padding.dtype != torch.bool or tuple(inp.padding.shape) != (B, Ns)):
        raise ValueError(f"padding_mask must be a bool [batch={B}, sources={Ns}] tensor, got "
                         f"{inp.padding.dtype} {tuple(inp.padding.shape)}")
    if inp.attn_mask is not None:
        m = inp.attn_mask
        if tuple(m.shape) not in ((Nq, Ns), (B, H, Nq, Ns)):
            raise ValueError(f"attn_mask must be [{Nq}, {Ns}] or [{B}, {H}, {Nq}, {Ns}], got {tuple(m.shape)}")
        if m.is_floating_point() and spec.mode != "softmax":
            raise ValueError("a float attn_mask (additive score bias) is only defined in softmax mode")


def check_sequence_order(pos: Tensor, what: str) -> None:
    """Sampled and low-rank causal passes treat sequence order as time: the first position
    coordinate must increase strictly along the sequence, or ``j ≤ i`` would not be ``p_j ≤ p_i``."""
    if pos.shape[1] > 1 and not bool((pos[:, 1:, 0] > pos[:, :-1, 0]).all()):
        raise ValueError(f"{what} with a causal support needs positions whose first coordinate increases strictly "
                         "along the sequence (it follows sequence order); use the exact integrator otherwise")
