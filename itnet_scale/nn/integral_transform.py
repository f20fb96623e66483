"""``IntegralTransform``: the ITNet layer — parameters and projections around the functional core.

Per head ``h`` (DESIGN §1)::

    q_i = Wq x_i    k_j = Wk x_j    v_j = Wv x_j
    a_i = Wa x_i + Ua p_i + c       b_j = Wb x_j − Ua p_j      (so a_i + b_j sees p_i − p_j)
    τ_i = Σ_{t≤i} softplus(λ(x_t))·exp(ρ)                       (learned decay, optional)
    y_i = Wo concat_h Σ_j K_h(i,j) v_j

A layer is built from two small typed values: a :class:`KernelConfig` (what the kernel is, hence which
parameters exist) and an integrator setting (:class:`~itnet_scale.ops.Exact`, :class:`~itnet_scale.ops.LowRank`,
:class:`~itnet_scale.ops.MonteCarlo`: how ``Σ_j`` is computed, assignable at any time). The score, support,
normalization and every integrator live in :mod:`itnet_scale.ops`, reached through :func:`itnet_scale.ops.integrate`;
this module owns the parameters and the tensor layout (``[batch, N, channels]`` in and out).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn.feature_map import FEATURE_MAPS, FeatureMap
from itnet_scale.ops import (
    Exact,
    Integrator,
    KernelInputs,
    KernelSpec,
    LowRank,
    MonteCarlo,
    integrate,
    kernel_matrix,
    make_integrator,
    with_settings,
)
from itnet_scale.ops.lowrank import check_lowrank_support, lowrank_kernel
from itnet_scale.ops.montecarlo.integrator import check_proposal
from itnet_scale.ops.settings import check_is_integrator

DEFAULT_RANK = 64
DECAY_ACTIVATIONS = ("softplus", "identity")


@dataclass(frozen=True)
class KernelConfig:
    """What a layer's kernel is (DESIGN §1): its terms, where it applies, and so which parameters the layer has.

    mode: ``softmax`` (normalized over sources) or ``linear``.
    support: ``all`` | ``causal`` | ``window`` | ``radius`` | ``causal_window``, with ``support_size`` the window
        half-width or radius.
    width: the kernel MLP's width ``r`` (0: no kernel MLP); ``depth`` its layers (1 = ``w2ᵀσ(a_i + b_j)``);
        ``activation`` its ``σ`` (:data:`~itnet_scale.ops.ACTIVATIONS`). ReLU by default: the MLP is evaluated for
        every pair, and ReLU (with its step derivative) costs about half of GELU's erf per pair
        (``tools/bench.py operator --activation``); piecewise-linear kernels also contain the "tent" construction
        of convolution.
    bilinear: include the ``β q·k/√d`` term.
    offset_range: an offset table ``t(p_i − p_j)`` over integer offsets ``−R…R`` (one int for every position dim,
        or one per dim); None: no table.
    decay: learn the decay ``τ`` (causal supports, self-transforms); ``decay_activation`` ``softplus`` keeps its
        increments > 0, ``identity`` leaves that to the caller (exact special cases).
    locality: the strength ``α`` of a locality prior at initialization (0: none). Head ``h``'s kernel MLP starts
        as the tent ``−α ‖(p_i − p_j) − Δ_h‖₁``, built from ``2·pos_dim`` of its ReLU units (``σ(±(e_k − Δ_hk))``
        per position axis ``k``, content weights 0, ``w2 = −α``), around its own offset ``Δ_h``: the heads' offsets
        lie on the unit circle of every pair of position axes, so on a grid the four heads of a 4-head layer start
        on the four neighbours, and on a sequence on the previous token, the token itself and the next. This is
        how the transform subsumes convolution (Cordonnier et al. 2020; ConViT's local initialization): every
        head starts as a local kernel tap and the kernel MLP learns away from locality where the data asks.
        Needs ``width ≥ 2·pos_dim`` and ReLU; in a deeper MLP the hidden layers pass those units through
        unchanged (identity rows, ReLU of a non-negative unit is itself).
    rank, feature_map: low-rank feature maps ``φ, ψ`` (:class:`~itnet_scale.nn.FeatureMap`, ``prf`` or
        ``learned``) of rank ``R`` that approximate this kernel, for the lowrank integrator and the learned Monte
        Carlo proposal. None: none, unless the layer is built with one of those (then ``R`` = 64).
    """

    mode: str = "softmax"
    support: str = "all"
    support_size: float = math.inf
    width: int = 16
    depth: int = 1
    activation: str = "relu"
    bilinear: bool = True
    offset_range: int | tuple[int, ...] | None = None
    decay: bool = False
    decay_activation: str = "softplus"
    locality: float = 0.0
    rank: int | None = None
    feature_map: str = "learned"

    def __post_init__(self) -> None:
        if self.width < 0 or self.depth < 1:
            raise ValueError(f"kernel width must be >= 0 and depth >= 1, got {self.width}, {self.depth}")
        if self.decay_activation not in DECAY_ACTIVATIONS:
            raise ValueError(f"decay_activation must be one of {DECAY_ACTIVATIONS}, got {self.decay_activation!r}")
        if self.locality < 0:
            raise ValueError(f"locality must be >= 0, got {self.locality}")
        if self.locality and (self.width == 0 or self.activation != "relu"):
            raise ValueError(f"a locality prior is built from ReLU units of the kernel MLP; got width={self.width}, "
                             f"activation={self.activation!r}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}")
        if isinstance(self.offset_range, list):
            object.__setattr__(self, "offset_range", tuple(self.offset_range))
        self.spec()  # mode, support, activation
        if self.decay and self.support not in ("causal", "causal_window"):
            raise ValueError(f"decay=True needs a causal support ('causal' or 'causal_window'), got {self.support!r}")

    def spec(self, pos_dim: int | None = None) -> KernelSpec:
        """The functional core's :class:`~itnet_scale.ops.KernelSpec` for positions of ``pos_dim`` dims (None: as
        many as a per-dim ``offset_range`` has, else 1)."""
        offset_range = self.offset_range
        if pos_dim is None:
            pos_dim = len(offset_range) if isinstance(offset_range, tuple) else 1
        if isinstance(offset_range, int):
            offset_range = (offset_range,) * pos_dim
        if offset_range is not None and len(offset_range) != pos_dim:
            raise ValueError(f"offset_range needs one entry per position dim ({pos_dim}), got {offset_range}")
        return KernelSpec(self.mode, self.support, self.support_size, self.activation, offset_range)


class IntegralTransform(nn.Module):
    """One learnable integral transform over positions and features.

    Args:
        dim: channels of the query features ``x``.
        heads: number of heads ``H``.
        kernel: the kernel (:class:`KernelConfig`).
        integrator: how ``Σ_j`` is computed: :class:`~itnet_scale.ops.Exact` (every pair),
            :class:`~itnet_scale.ops.LowRank` (the feature maps, linear in N), :class:`~itnet_scale.ops.MonteCarlo`
            (sampled sources). Assignable on a built layer (``layer.integrator = Exact()``); the parameters are the
            same whatever the integrator.
        pos_dim: position dimension ``P`` (1 text, 2 image grids, 3 points).
        head_dim: bilinear feature size ``d`` per head (default ``dim // heads``).
        value_dim: value size ``e`` per head (default ``head_dim``).
        source_dim: channels of the source features (default ``dim``).
        out_dim: output channels (default ``dim``).
        bias: biases on the projections.

    Attributes set after construction: ``generator``, the ``torch.Generator`` Monte Carlo draws come from (None:
    torch's global one, so ``torch.manual_seed`` fixes them); ``proposal_loss``, the learned proposal's loss after
    a training forward (add it to the objective).
    """

    def __init__(self, dim: int, heads: int, kernel: KernelConfig | None = None, integrator: Integrator | None = None,
                 *, pos_dim: int = 1, head_dim: int | None = None, value_dim: int | None = None,
                 source_dim: int | None = None, out_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        kernel = KernelConfig() if kernel is None else kernel
        integrator = Exact() if integrator is None else integrator
        if not isinstance(kernel, KernelConfig):
            raise TypeError(f"kernel must be a KernelConfig, got {kernel!r}")
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass head_dim")
            head_dim = dim // heads
        if kernel.rank is None and _needs_features(integrator):
            kernel = dataclasses.replace(kernel, rank=DEFAULT_RANK)  # the integrator it is built with needs them
        self.kernel, self.spec = kernel, kernel.spec(pos_dim)
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.value_dim = value_dim or head_dim
        self.source_dim = source_dim or dim
        self.out_dim = out_dim or dim
        self.pos_dim = pos_dim
        self.generator: torch.Generator | None = None
        self.proposal_loss: Tensor | None = None
        H, d, e, r = heads, head_dim, self.value_dim, kernel.width

        self.q_proj = nn.Linear(dim, H * d, bias=bias) if kernel.bilinear else None
        self.k_proj = nn.Linear(self.source_dim, H * d, bias=bias) if kernel.bilinear else None
        self.beta = nn.Parameter(torch.ones(H)) if kernel.bilinear else None
        self.v_proj = nn.Linear(self.source_dim, H * e, bias=bias)
        self.o_proj = nn.Linear(H * e, self.out_dim, bias=bias)
        if r > 0:
            self.a_proj = nn.Linear(dim, H * r, bias=True)  # its bias is the c of σ(a_i + b_j + c)
            self.b_proj = nn.Linear(self.source_dim, H * r, bias=False)
            self.pos_proj = nn.Linear(pos_dim, H * r, bias=False)  # Ua, shared with opposite signs
            # Hidden layers only when there are some: a 0-element parameter cannot be gathered by ZeRO-3.
            deep = kernel.depth > 1
            self.mlp_w = nn.Parameter(torch.randn(kernel.depth - 1, H, r, r) / math.sqrt(r)) if deep else None
            self.mlp_c = nn.Parameter(torch.zeros(kernel.depth - 1, H, r)) if deep else None
            self.w2 = nn.Parameter(torch.randn(H, r) / math.sqrt(r))
        else:
            self.a_proj = self.b_proj = self.pos_proj = None
            self.mlp_w = self.mlp_c = self.w2 = None
        self.table = nn.Parameter(torch.zeros(H, self.spec.table_size)) if kernel.offset_range is not None else None
        if kernel.decay:
            self.decay_proj = nn.Linear(dim, H)
            self.decay_log_rate = nn.Parameter(torch.zeros(H))
        else:
            self.decay_proj = self.decay_log_rate = None
        self.features = (FeatureMap(H, d if kernel.bilinear else 0, r, kernel.rank, kernel.feature_map, kernel.mode)
                         if kernel.rank is not None else None)
        self.integrator = integrator
        if kernel.locality:
            self.init_locality(kernel.locality)

    @torch.no_grad()
    def init_locality(self, strength: float) -> None:
        """Make each head's kernel MLP the tent ``−strength · ‖(p_i − p_j) − Δ_h‖₁`` around its offset
        ``Δ_h = locality_offsets(H, P)[h]`` (see :class:`KernelConfig`'s ``locality``), with the first ``2P`` of
        its ``r`` units (carried through any hidden layers by identity rows); the other units keep their random
        initialization, except that they do not read the tent's units."""
        H, r, P = self.heads, self.kernel.width, self.pos_dim
        if r < 2 * P:
            raise ValueError(f"a locality prior over {P} position axes needs kernel width >= {2 * P}, got {r}")
        a_w, a_c = self.a_proj.weight.view(H, r, -1), self.a_proj.bias.view(H, r)
        b_w, u_w = self.b_proj.weight.view(H, r, -1), self.pos_proj.weight.view(H, r, P)
        centers = locality_offsets(H, P).to(a_c)
        for k in range(P):
            for unit, sign in ((2 * k, 1.0), (2 * k + 1, -1.0)):  # σ(±(e_k − Δ_hk)), e = p_i − p_j
                a_w[:, unit].zero_()
                b_w[:, unit].zero_()
                u_w[:, unit].zero_()
                u_w[:, unit, k] = sign
                a_c[:, unit] = -sign * centers[:, k]
                self.w2[:, unit] = -strength
        if self.mlp_w is not None:  # [L, H, r_out, r_in]: the tent units pass through every hidden layer
            tent = slice(0, 2 * P)
            self.mlp_w[:, :, :, tent] = 0.0
            self.mlp_w[:, :, tent, :] = 0.0
            self.mlp_w[:, :, tent, tent] = torch.eye(2 * P).to(self.mlp_w)
            self.mlp_c[:, :, tent] = 0.0

    # -- configuration ---------------------------------------------------------------

    @property
    def integrator(self) -> Integrator:
        return self._integrator

    @integrator.setter
    def integrator(self, value: Integrator) -> None:
        self.check_integrator(value)
        self._integrator = value

    def check_integrator(self, value: Integrator) -> None:
        """``ValueError`` (``TypeError``) unless this layer can run ``value``."""
        check_integrator(self.spec, value, has_features=self.features is not None)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, value_dim={self.value_dim}, "
                f"pos_dim={self.pos_dim}, kernel={self.kernel}, integrator={self.integrator}")

    # -- forward ---------------------------------------------------------------------

    def project(self, x: Tensor, source: Tensor) -> dict[str, Tensor]:
        """The per-position, per-head projections ``[B, N, H, c]``: ``v`` (and ``q, k`` with the bilinear term,
        ``a, b`` with the kernel MLP, the decay ``rate`` ``[B, N, H, 1]`` with decay). Position-wise, so a
        sequence-parallel rank computes them on its own shard (see :mod:`itnet_scale.parallel.ulysses`)."""
        def heads(t: Tensor) -> Tensor:  # [B, N, H*c] -> [B, N, H, c]
            return t.unflatten(-1, (self.heads, -1))

        proj = {"v": heads(self.v_proj(source))}
        if self.q_proj is not None:
            proj["q"], proj["k"] = heads(self.q_proj(x)), heads(self.k_proj(source))
        if self.a_proj is not None:
            proj["a"], proj["b"] = heads(self.a_proj(x)), heads(self.b_proj(source))
        if self.decay_proj is not None:
            proj["rate"] = self.decay_rate(x)[..., None]
        return proj

    def decay_rate(self, x: Tensor) -> Tensor:
        """The per-position decay rate ``[B, N, H]`` (τ's increments); requires ``decay=True``."""
        rate = self.decay_proj(x)
        rate = F.softplus(rate) if self.kernel.decay_activation == "softplus" else rate
        return rate * self.decay_log_rate.exp()

    def assemble(self, proj: dict[str, Tensor], pos: Tensor, source_pos: Tensor,
                 heads: slice = slice(None)) -> KernelInputs:
        """:class:`KernelInputs` from :meth:`project`'s tensors over whole sequences, for the heads ``heads``
        (the ``proj`` tensors hold just those heads; the per-head parameters are sliced to match). A
        self-transform passes the same tensor as ``pos`` and ``source_pos``."""
        H, r, P = self.heads, self.kernel.width, self.pos_dim

        def per_head(name: str) -> Tensor:  # [B, N, h, c] -> [B, h, N, c]
            return proj[name].transpose(1, 2)

        inp = KernelInputs(v=per_head("v"), pos_q=pos, pos_s=source_pos)
        if "q" in proj:
            inp.q, inp.k, inp.beta = per_head("q"), per_head("k"), self.beta[heads]
        if "a" in proj:
            inp.a, inp.b, inp.w2 = per_head("a"), per_head("b"), self.w2[heads]
            inp.pos_weight = self.pos_proj.weight.view(H, r, P)[heads]  # Ua, applied to p_i − p_j
            if self.mlp_w is not None:
                inp.mlp_w, inp.mlp_c = self.mlp_w[:, heads], self.mlp_c[:, heads]
        inp.table = None if self.table is None else self.table[heads]
        if "rate" in proj:
            # τ is a running sum that grows with N; kept in float64 so that τ_i − τ_j stays exact
            # for long sequences (the kernel casts the difference back to the compute dtype).
            inp.tau_q = inp.tau_s = torch.cumsum(proj["rate"][..., 0].double(), dim=1).transpose(1, 2)  # [B, h, N]
        return inp

    def kernel_inputs(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        source: Tensor | None = None,
        source_pos: Tensor | None = None,
        weights: Tensor | None = None,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> KernelInputs:
        """Project the layer inputs to the per-head tensors of the functional core."""
        B, Nq = self.check_features("x", x, self.dim)
        pos = self.positions("pos", pos, B, Nq, x)
        if source is None:
            if source_pos is not None:
                raise ValueError("source_pos was given without source")
            if self.source_dim != self.dim:
                raise ValueError(f"source is required: source_dim={self.source_dim} differs from dim={self.dim}")
            source, source_pos = x, pos  # a self-transform: the same positions tensor on both sides
        else:
            if self.decay_proj is not None:
                raise ValueError("decay is defined for self-transforms only (source must be None)")
            Bs, Ns = self.check_features("source", source, self.source_dim)
            if Bs != B:
                raise ValueError(f"source has batch {Bs} but x has batch {B}")
            source_pos = self.positions("source_pos", source_pos, B, Ns, source)
        inp = self.assemble(self.project(x, source), pos, source_pos)
        self.check_source_masks(weights, padding_mask, B, source.shape[1])
        if weights is not None:
            inp.weights = (weights.transpose(1, 2) if weights.dim() == 3 else weights).to(inp.v.dtype)
        inp.padding = padding_mask
        inp.attn_mask = attn_mask
        return inp

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        source: Tensor | None = None,
        source_pos: Tensor | None = None,
        weights: Tensor | None = None,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        initial_state: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Transform ``x`` ``[B, Nq, dim]`` at ``pos`` ``[B, Nq, P]`` (or ``[Nq, P]``).

        Args:
            source, source_pos: the sources ``[B, Ns, source_dim]`` and their positions
                (default: ``x`` and ``pos`` — a self-transform).
            weights: source weights ``w_j``, ``[B, Ns]`` or per head ``[B, Ns, H]``.
            padding_mask: ``[B, Ns]`` bool, True marks padding (ignored sources).
            attn_mask: ``[Nq, Ns]`` or ``[B, H, Nq, Ns]``; bool True = may interact, or float
                added to the score (softmax mode).
            initial_state, return_state: lowrank only — the recurrent state
                ``[B, H, R, e(+1)]`` left by the previous piece of the sequence (see
                :mod:`itnet_scale.ops.lowrank.spec`), and whether to return the new one. Feeding a
                sequence in pieces (one position at a time, for streaming) gives the same outputs
                as feeding it whole, given each piece's absolute positions.

        Returns ``[B, Nq, out_dim]`` (with ``return_state``: and the final state, None without a causal
        support). In softmax mode
        a query that sees no source gets zeros from the transform (the output bias remains).
        """
        if return_state and not isinstance(self.integrator, LowRank):
            raise ValueError(f"return_state needs the lowrank integrator (a causal support has a state), not "
                             f"{self.integrator.name}")
        inp = self.kernel_inputs(x, pos, source, source_pos, weights, padding_mask, attn_mask)
        result = integrate(inp, self.spec, self.integrator, feature_map=self.features, initial_state=initial_state,
                           generator=self.generator, train_proposal=self.training and torch.is_grad_enabled())
        self.proposal_loss = result.proposal_loss
        y = self.o_proj(result.out.transpose(1, 2).flatten(2))
        return (y, result.state) if return_state else y

    def kernel_matrix(self, x: Tensor, pos: Tensor | None = None, **kwargs: Tensor | None) -> Tensor:
        """The kernel ``K_h(i,j)`` of every pair, ``[B, H, Nq, Ns]`` (materialized; for inspection)."""
        return kernel_matrix(self.kernel_inputs(x, pos, **kwargs), self.spec)

    def lowrank_kernel_matrix(self, x: Tensor, pos: Tensor | None = None, **kwargs: Tensor | None) -> Tensor:
        """The kernel the lowrank integrator applies, ``[B, H, Nq, Ns]`` (materialized; to fit and inspect
        the feature maps against :meth:`kernel_matrix`)."""
        if self.features is None:
            raise ValueError("this layer has no feature maps: build it with KernelConfig(rank=R)")
        return lowrank_kernel(self.kernel_inputs(x, pos, **kwargs), self.spec, self.features)

    # -- argument checks -------------------------------------------------------------

    @staticmethod
    def check_features(name: str, t: Tensor, channels: int) -> tuple[int, int]:
        """``(B, N)`` of a ``[B, N, channels]`` tensor; another shape raises naming ``name``."""
        if t.dim() != 3 or t.shape[-1] != channels:
            raise ValueError(f"{name} must be [batch, N, {channels}], got shape {tuple(t.shape)}")
        return t.shape[0], t.shape[1]

    def check_source_masks(self, weights: Tensor | None, padding_mask: Tensor | None, B: int, Ns: int) -> None:
        """``ValueError`` unless ``weights`` and ``padding_mask`` fit ``B`` batches of ``Ns`` sources."""
        if weights is not None and tuple(weights.shape) not in ((B, Ns), (B, Ns, self.heads)):
            raise ValueError(f"weights must be [batch={B}, sources={Ns}] or [batch, sources, heads={self.heads}], "
                             f"got {tuple(weights.shape)}")
        if padding_mask is not None and (padding_mask.dtype != torch.bool or tuple(padding_mask.shape) != (B, Ns)):
            raise ValueError(f"padding_mask must be bool [batch={B}, sources={Ns}] (True = padding), got "
                             f"{padding_mask.dtype} {tuple(padding_mask.shape)}")

    def positions(self, name: str, pos: Tensor | None, B: int, N: int, like: Tensor) -> Tensor:
        """Positions as ``[B, N, P]`` in ``like``'s dtype; None means indices 0…N−1 (P = 1)."""
        if pos is None:
            if self.pos_dim != 1:
                raise ValueError(f"{name} is required when pos_dim={self.pos_dim}")
            pos = torch.arange(N, device=like.device, dtype=like.dtype)[:, None]
        if pos.dim() == 2:
            pos = pos.expand(B, *pos.shape)
        if pos.dim() != 3 or tuple(pos.shape) != (B, N, self.pos_dim):
            raise ValueError(f"{name} must be [batch={B}, N={N}, pos_dim={self.pos_dim}] or [N, pos_dim], "
                             f"got shape {tuple(pos.shape)}")
        if torch.isnan(pos).any():
            raise ValueError(f"{name} contains NaN")
        return pos.to(like.dtype)


def locality_offsets(heads: int, pos_dim: int) -> Tensor:
    """``[heads, pos_dim]``: head ``h``'s offset ``Δ_h``, at angle ``θ_h = 2πh / heads`` on the unit circle,
    axis ``k`` taking ``cos(θ_h − kπ/2)``. Every pair of neighbouring axes then sees the heads on a circle: 4 heads
    at the four grid neighbours on the (row, column) plane of an image, at ``+1, 0, −1, 0`` on a sequence axis."""
    theta = 2 * math.pi * torch.arange(heads, dtype=torch.float64) / heads
    axes = torch.arange(pos_dim, dtype=torch.float64) * (math.pi / 2)
    offsets = torch.cos(theta[:, None] - axes[None, :])
    return torch.where(offsets.abs() < 1e-12, 0.0, offsets).float()


def check_integrator(spec: KernelSpec, integrator: Integrator, has_features: bool) -> None:
    """``ValueError`` (``TypeError``) unless a layer of ``spec``, with feature maps if ``has_features``, can run
    ``integrator``."""
    check_is_integrator(integrator)
    if isinstance(integrator, LowRank):
        if not has_features:
            raise ValueError("the lowrank integrator needs feature maps: build the layer with "
                             "KernelConfig(rank=R) (or with a LowRank integrator)")
        check_lowrank_support(spec)
    if isinstance(integrator, MonteCarlo):
        check_proposal(integrator, spec, has_features=has_features)


def _needs_features(integrator: Integrator) -> bool:
    return isinstance(integrator, LowRank) or (isinstance(integrator, MonteCarlo) and integrator.proposal == "learned")


def configure_integrators(model: nn.Module, integrator: Integrator | str | None = None, **settings: object) -> int:
    """Set the integrator of every :class:`IntegralTransform` in ``model``; returns how many.

    ``integrator`` is a setting (``Exact()``, ``MonteCarlo(samples=4096)``) or a name (``"exact"``) with
    ``settings`` as keywords; with no integrator, ``settings`` change each layer's current one
    (``configure_integrators(model, samples=4096)`` on Monte Carlo layers, ``backend="reference"`` on any). One call
    switches a trained model for evaluation. Every layer's new setting is built and checked before any changes.
    """
    layers = [m for m in model.modules() if isinstance(m, IntegralTransform)]
    if isinstance(integrator, str):
        integrator = make_integrator(integrator, **settings)
    elif integrator is not None:
        check_is_integrator(integrator)
        integrator = with_settings(integrator, **settings)
    new = [integrator or with_settings(layer.integrator, **settings) for layer in layers]
    for layer, setting in zip(layers, new):
        layer.check_integrator(setting)
    for layer, setting in zip(layers, new):
        layer.integrator = setting
    return len(layers)
