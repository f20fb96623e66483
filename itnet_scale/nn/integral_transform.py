"""``IntegralTransform``: the ITNet layer — projections around the functional core.

Per head ``h`` (DESIGN §1)::

    q_i = Wq x_i    k_j = Wk x_j    v_j = Wv x_j
    a_i = Wa x_i + Ua p_i + c       b_j = Wb x_j − Ua p_j      (so a_i + b_j sees p_i − p_j)
    τ_i = Σ_{t≤i} softplus(λ(x_t))·exp(ρ)                       (learned decay, optional)
    y_i = Wo concat_h Σ_j K_h(i,j) v_j

The score, support and normalization live in :mod:`itnet_scale.ops`; this module owns the
parameters and the tensor layout (``[batch, N, channels]`` in and out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.ops import BACKENDS, KernelInputs, KernelSpec, integral_transform, kernel_matrix
from itnet_scale.ops.lowrank import (
    LowRankInputs,
    check_lowrank_inputs,
    lowrank_chunk,
    lowrank_kernel_matrix,
    lowrank_naive,
    lowrank_step,
)
from itnet_scale.ops.lowrank.chunk import DEFAULT_CHUNK
from itnet_scale.ops.montecarlo import (
    PROPOSALS,
    BlockLayout,
    integral_transform_montecarlo,
    proposal_loss,
    sampled_inputs,
)
from itnet_scale.ops.montecarlo import learned as learned_proposal
from itnet_scale.ops.montecarlo import uniform as uniform_proposal
from itnet_scale.ops.montecarlo import window as window_proposal
from itnet_scale.ops.spec import check_sequence_order

INTEGRATORS = ("exact", "lowrank", "montecarlo")
DEFAULT_RANK = 64
LOWRANK_SEGMENT = 8192  # positions per causal low-rank pass; longer sequences carry the state across passes
DECAY_ACTIVATIONS = ("softplus", "identity")


class IntegralTransform(nn.Module):
    """One learnable integral transform over positions and features.

    Args:
        dim: channels of the query features ``x``.
        heads: number of heads ``H``.
        head_dim: bilinear feature size ``d`` per head (default ``dim // heads``).
        value_dim: value size ``e`` per head (default ``head_dim``).
        source_dim: channels of the source features (default ``dim``).
        out_dim: output channels (default ``dim``).
        pos_dim: position dimension ``P`` (1 text, 2 image grids, 3 points).
        kernel_width: kernel-MLP width ``r``; 0 turns the MLP off.
        kernel_depth: layers of the kernel MLP (1 = ``w2ᵀσ(a_i + b_j)``).
        kernel_activation: ``σ`` (see :data:`itnet_scale.ops.ACTIVATIONS`). ReLU by default: the
            kernel MLP is evaluated for every pair and ReLU (and its step derivative) costs about
            half of GELU's erf per pair (``tools/bench.py operator --activation``); piecewise-linear
            kernels also contain the "tent" construction of convolution.
        mode: ``"softmax"`` or ``"linear"``.
        support: ``all`` | ``causal`` | ``window`` | ``radius`` | ``causal_window``.
        support_size: window half-width / radius for the windowed supports.
        bilinear: include the ``β q·k/√d`` term.
        offset_range: per position dim, the offset table covers ``−R…R`` (None: no table).
        decay: learn the decay ``τ`` (needs a causal support; self-transforms only).
        decay_activation: ``softplus`` (increments always > 0) or ``identity`` (the caller
            guarantees non-negative increments; used by exact special cases).
        bias: biases on the projections.
        integrator: how ``Σ_j`` is computed: ``exact`` (every pair), ``lowrank`` (``φ_i·ψ_j``
            feature maps, linear in N). Assignable on a built layer (``layer.integrator = "exact"``);
            the exact kernel's parameters are the same whatever the integrator.
        rank: ``R`` of the low-rank feature maps; giving it (or ``integrator="lowrank"``, then
            ``R = 64``) adds their parameters (:class:`FeatureMap`).
        feature_map: ``learned`` | ``prf`` (positive random features; softmax mode).
        chunk_size: positions per chunk of the causal low-rank scan.
        samples: ``M``, sources drawn per query block by the ``montecarlo`` integrator (``M ≥ N``
            enumerates every source: exact). Assignable, e.g. more samples for evaluation.
        proposal: ``uniform`` | ``window`` (the window around the block enumerated, the rest
            sampled) | ``learned`` (from the low-rank features; needs ``rank``, softmax mode).
        proposal_window: half-width of the ``window`` proposal, in positions.
        sample_block: queries per block sharing one draw (1: every query draws its own).
        generator: the ``torch.Generator`` samples come from (default: torch's global one, so
            ``torch.manual_seed`` fixes them). Attribute ``proposal_loss`` holds the learned
            proposal's loss after a training forward (add it to the objective).
        backend: ``auto`` | ``reference`` | ``tiled``. ``reference`` materializes every pair (the
            exact kernel; ``φψᵀ`` for lowrank); the others are the tiled exact backend and the
            chunked low-rank scan.
        block_size: ``(queries, sources)`` per tile of the tiled backend.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        head_dim: int | None = None,
        value_dim: int | None = None,
        source_dim: int | None = None,
        out_dim: int | None = None,
        pos_dim: int = 1,
        kernel_width: int = 16,
        kernel_depth: int = 1,
        kernel_activation: str = "relu",
        mode: str = "softmax",
        support: str = "all",
        support_size: float = math.inf,
        bilinear: bool = True,
        offset_range: int | tuple[int, ...] | None = None,
        decay: bool = False,
        decay_activation: str = "softplus",
        bias: bool = True,
        integrator: str = "exact",
        rank: int | None = None,
        feature_map: str = "learned",
        chunk_size: int = DEFAULT_CHUNK,
        samples: int = 256,
        proposal: str = "uniform",
        proposal_window: int = 32,
        sample_block: int = 64,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        block_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass head_dim")
            head_dim = dim // heads
        if kernel_width < 0 or kernel_depth < 1:
            raise ValueError(f"kernel_width must be >= 0 and kernel_depth >= 1, got {kernel_width}, {kernel_depth}")
        if decay_activation not in DECAY_ACTIVATIONS:
            raise ValueError(f"decay_activation must be one of {DECAY_ACTIVATIONS}, got {decay_activation!r}")
        if isinstance(offset_range, int):
            offset_range = (offset_range,) * pos_dim
        if offset_range is not None and len(offset_range) != pos_dim:
            raise ValueError(f"offset_range needs one entry per position dim ({pos_dim}), got {offset_range}")
        self.spec = KernelSpec(mode, support, support_size, kernel_activation,
                               tuple(offset_range) if offset_range is not None else None)
        if decay and not self.spec.causal:
            raise ValueError(f"decay=True needs a causal support ('causal' or 'causal_window'), got {support!r}")

        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.value_dim = value_dim or head_dim
        self.source_dim = source_dim or dim
        self.out_dim = out_dim or dim
        self.pos_dim = pos_dim
        self.kernel_width, self.kernel_depth = kernel_width, kernel_depth
        self.decay_activation = decay_activation
        self.block_size = block_size
        self.chunk_size = chunk_size
        if proposal_window < 0 or sample_block < 1:
            raise ValueError(f"proposal_window must be >= 0 and sample_block >= 1, got {proposal_window}, "
                             f"{sample_block}")
        self.samples = samples
        self.proposal_window, self.sample_block = proposal_window, sample_block
        self.generator = generator
        self.proposal_loss: Tensor | None = None
        self.backend = backend
        H, d, e, r = heads, head_dim, self.value_dim, kernel_width

        self.q_proj = nn.Linear(dim, H * d, bias=bias) if bilinear else None
        self.k_proj = nn.Linear(self.source_dim, H * d, bias=bias) if bilinear else None
        self.beta = nn.Parameter(torch.ones(H)) if bilinear else None
        self.v_proj = nn.Linear(self.source_dim, H * e, bias=bias)
        self.o_proj = nn.Linear(H * e, self.out_dim, bias=bias)
        if r > 0:
            self.a_proj = nn.Linear(dim, H * r, bias=True)  # its bias is the c of σ(a_i + b_j + c)
            self.b_proj = nn.Linear(self.source_dim, H * r, bias=False)
            self.pos_proj = nn.Linear(pos_dim, H * r, bias=False)  # Ua, shared with opposite signs
            # Hidden layers only when there are some: a 0-element parameter cannot be gathered by ZeRO-3.
            self.mlp_w = nn.Parameter(torch.randn(kernel_depth - 1, H, r, r) / math.sqrt(r)) if kernel_depth > 1 \
                else None
            self.mlp_c = nn.Parameter(torch.zeros(kernel_depth - 1, H, r)) if kernel_depth > 1 else None
            self.w2 = nn.Parameter(torch.randn(H, r) / math.sqrt(r))
        else:
            self.a_proj = self.b_proj = self.pos_proj = None
            self.mlp_w = self.mlp_c = self.w2 = None
        self.table = nn.Parameter(torch.zeros(H, self.spec.table_size)) if offset_range is not None else None
        if decay:
            self.decay_proj = nn.Linear(dim, H)
            self.decay_log_rate = nn.Parameter(torch.zeros(H))
        else:
            self.decay_proj = self.decay_log_rate = None
        if rank is None and (integrator == "lowrank" or proposal == "learned"):
            rank = DEFAULT_RANK
        self.features = (FeatureMap(H, d if bilinear else 0, r, rank, feature_map, mode)
                         if rank is not None else None)
        self.proposal = proposal
        self.integrator = integrator

    # -- configuration ---------------------------------------------------------------

    @property
    def integrator(self) -> str:
        return self._integrator

    @integrator.setter
    def integrator(self, value: str) -> None:
        if value not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {value!r}")
        if value == "lowrank" and self.features is None:
            raise ValueError("integrator='lowrank' needs feature maps: build the layer with rank=R")
        self._integrator = value

    @property
    def proposal(self) -> str:
        return self._proposal

    @proposal.setter
    def proposal(self, value: str) -> None:
        if value not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {value!r}")
        if value == "learned" and (self.spec.mode != "softmax" or self.features is None):
            raise ValueError("proposal='learned' follows positive low-rank features: it needs mode='softmax' "
                             "and feature maps (rank=R)")
        self._proposal = value

    @property
    def samples(self) -> int:
        return self._samples

    @samples.setter
    def samples(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ValueError(f"samples must be a positive integer, got {value!r}")
        self._samples = int(value)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    def extra_repr(self) -> str:
        s = self.spec
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, value_dim={self.value_dim}, "
                f"pos_dim={self.pos_dim}, kernel_width={self.kernel_width}, mode={s.mode!r}, "
                f"support={s.support!r}, integrator={self.integrator!r}, backend={self.backend!r}")

    # -- integrators -----------------------------------------------------------------

    def _lowrank(self, inp: KernelInputs, initial_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``Σ_j`` through the feature maps: ``(out [B, H, Nq, e], final state or None)``."""
        spec = self.spec
        self._check_lowrank_support()
        if inp.attn_mask is not None:
            raise ValueError("integrator='lowrank' takes no attn_mask (it never forms pairs); use padding_mask "
                             "or weights, or the exact integrator")
        if spec.causal:
            check_sequence_order(inp.pos_q, "integrator='lowrank'")
        lr = self._lowrank_inputs(inp)
        normalize = spec.mode == "softmax"
        check_lowrank_inputs(lr, spec.causal, normalize, initial_state)
        if spec.causal and inp.shape[3] == 1:  # one position: the recurrent step (streaming)
            out, state = lowrank_step(initial_state, lr.phi[:, :, 0], lr.psi[:, :, 0], lr.v[:, :, 0],
                                      normalize=normalize, weight=None if lr.weights is None else lr.weights[:, :, 0],
                                      decay=None if lr.tau is None else lr.tau[:, :, 0])
            return out[:, :, None], state
        if self.backend == "reference":
            return lowrank_naive(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state)
        return lowrank_chunk(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state,
                             chunk_size=self.chunk_size)

    def _check_lowrank_support(self) -> None:
        if self.spec.support not in ("all", "causal"):
            raise ValueError(f"integrator='lowrank' integrates support 'all' or 'causal', got {self.spec.support!r}; "
                             "use the exact integrator for windowed supports")

    def _lowrank_inputs(self, inp: KernelInputs) -> LowRankInputs:
        """Features ``φ, ψ`` of ``inp``, with weights per head and padding folded into them."""
        B, H, _, Ns, _ = inp.shape
        w = inp.weights
        if w is not None and w.dim() == 2:
            w = w[:, None].expand(B, H, Ns)
        if inp.padding is not None:
            keep = (~inp.padding)[:, None].to(inp.v.dtype)
            w = keep.expand(B, H, Ns) if w is None else w * keep
        phi, psi = self.features(inp)
        return LowRankInputs(phi, psi, inp.v, w, inp.tau_q)

    def _montecarlo(self, inp: KernelInputs, self_transform: bool) -> Tensor:
        """``Σ_j`` estimated on sampled sources: ``[B, H, Nq, e]``. Sets ``self.proposal_loss``."""
        B, _, Nq, Ns, _ = inp.shape
        causal = self.spec.causal and self_transform
        if causal:
            check_sequence_order(inp.pos_q, "integrator='montecarlo'")
        bq = min(self.sample_block, Nq)
        layout = BlockLayout(Nq, Ns, bq, causal)
        M, device = self.samples, inp.v.device
        if self.proposal == "uniform":
            draw = uniform_proposal(layout, B, M, device=device, generator=self.generator)
        elif self.proposal == "window":
            if not self_transform:
                raise ValueError("proposal='window' needs a self-transform (source=None)")
            draw = window_proposal(layout, B, M, self.proposal_window, device=device, generator=self.generator)
        else:
            phi, psi = self.features(inp, detach_inputs=True)
            draw = learned_proposal(layout, phi, psi, M, generator=self.generator)
        sampled = sampled_inputs(inp, draw, bq)
        self.proposal_loss = None
        if draw.log_prob is not None and self.training and torch.is_grad_enabled():
            rows = (~draw.enumerated).flatten().nonzero()[:, 0]
            if len(rows):
                pick = torch.randint(len(rows), (min(len(rows), 8),), generator=self.generator, device=device)
                self.proposal_loss = proposal_loss(sampled, self.spec, draw, rows[pick])
        return integral_transform_montecarlo(inp, self.spec, draw, bq, backend=self.backend, sampled=sampled)

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
        rate = F.softplus(rate) if self.decay_activation == "softplus" else rate
        return rate * self.decay_log_rate.exp()

    def assemble(self, proj: dict[str, Tensor], pos: Tensor, source_pos: Tensor,
                 heads: slice = slice(None)) -> KernelInputs:
        """:class:`KernelInputs` from :meth:`project`'s tensors over whole sequences, for the heads ``heads``
        (the ``proj`` tensors hold just those heads; the per-head parameters are sliced to match)."""
        H, r, P = self.heads, self.kernel_width, self.pos_dim

        def per_head(name: str) -> Tensor:  # [B, N, h, c] -> [B, h, N, c]
            return proj[name].transpose(1, 2)

        inp = KernelInputs(v=per_head("v"), pos_q=pos, pos_s=source_pos)
        if "q" in proj:
            inp.q, inp.k, inp.beta = per_head("q"), per_head("k"), self.beta[heads]
        if "a" in proj:
            inp.a, inp.b, inp.w2 = per_head("a"), per_head("b"), self.w2[heads]
            inp.pos_weight = self.pos_proj.weight.view(H, r, P)[heads]  # Ua, applied to p_i − p_j
            if self.kernel_depth > 1:
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
        B, Nq = self._check_features("x", x, self.dim)
        pos = self._positions("pos", pos, B, Nq, x)
        if source is None:
            if source_pos is not None:
                raise ValueError("source_pos was given without source")
            source, source_pos = x, pos
            if self.source_dim != self.dim:
                raise ValueError(f"source is required: source_dim={self.source_dim} differs from dim={self.dim}")
        elif self.decay_proj is not None:
            raise ValueError("decay is defined for self-transforms only (source must be None)")
        Bs, Ns = self._check_features("source", source, self.source_dim)
        if Bs != B:
            raise ValueError(f"source has batch {Bs} but x has batch {B}")
        source_pos = self._positions("source_pos", source_pos, B, Ns, source)
        inp = self.assemble(self.project(x, source), pos, source_pos)
        self._check_source_masks(weights, padding_mask, B, Ns)
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
            initial_state, return_state: causal lowrank only — the recurrent state
                ``[B, H, R, e(+1)]`` left by the previous piece of the sequence (see
                :mod:`itnet_scale.ops.lowrank.spec`), and whether to return the new one. Feeding a
                sequence in pieces (one position at a time, for streaming) gives the same outputs
                as feeding it whole, given each piece's absolute positions.

        Returns ``[B, Nq, out_dim]`` (with ``return_state``: and the final state). In softmax mode
        a query that sees no source gets zeros from the transform (the output bias remains).
        """
        if (self.integrator == "lowrank" and self.spec.causal and source is None and attn_mask is None
                and self.backend != "reference" and x.dim() == 3 and x.shape[1] > LOWRANK_SEGMENT):
            y, state = self._lowrank_segments(x, pos, weights, padding_mask, initial_state)
            return (y, state) if return_state else y
        inp = self.kernel_inputs(x, pos, source, source_pos, weights, padding_mask, attn_mask)
        state = None
        if self.integrator == "lowrank":
            out, state = self._lowrank(inp, initial_state)
        elif initial_state is not None or return_state:
            raise ValueError(f"initial_state/return_state need integrator='lowrank' with a causal support, "
                             f"not integrator={self.integrator!r}")
        elif self.integrator == "montecarlo":
            out = self._montecarlo(inp, source is None)
        else:
            out = integral_transform(inp, self.spec, backend=self.backend, block_size=self.block_size)
        y = self.o_proj(out.transpose(1, 2).flatten(2))
        return (y, state) if return_state else y

    def _lowrank_segments(self, x: Tensor, pos: Tensor | None, weights: Tensor | None, padding_mask: Tensor | None,
                          initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """A long causal self-transform streamed in pieces of ``LOWRANK_SEGMENT`` positions, the state
        carried: the same numbers as one pass (``τ`` counts from the previous piece), but every
        temporary, the projections' included, stays small. On CPU a tensor past glibc's mmap
        threshold comes as fresh pages at every allocation, and their faults made a whole-sequence
        pass grow faster than N. Each input is cut with one ``split`` (backward: one concatenation)."""
        B, N = self._check_features("x", x, self.dim)
        pos = self._positions("pos", pos, B, N, x)
        self._check_source_masks(weights, padding_mask, B, N)
        check_sequence_order(pos, "integrator='lowrank'")
        pieces = [t.split(LOWRANK_SEGMENT, 1) if t is not None else None for t in (x, pos, weights, padding_mask)]
        outs, state = [], initial_state
        for i, (xs, ps) in enumerate(zip(pieces[0], pieces[1])):
            ws, ms = (None if p is None else p[i] for p in pieces[2:])
            y, state = self.forward(xs, ps, weights=ws, padding_mask=ms, initial_state=state, return_state=True)
            outs.append(y)
        return torch.cat(outs, 1), state

    def kernel_matrix(self, x: Tensor, pos: Tensor | None = None, **kwargs: Tensor | None) -> Tensor:
        """The kernel ``K_h(i,j)`` of every pair, ``[B, H, Nq, Ns]`` (materialized; for inspection)."""
        inp = self.kernel_inputs(x, pos, **kwargs)
        return kernel_matrix(inp, self.spec)

    def lowrank_kernel_matrix(self, x: Tensor, pos: Tensor | None = None, **kwargs: Tensor | None) -> Tensor:
        """The kernel the lowrank integrator applies, ``[B, H, Nq, Ns]`` (materialized; to fit and inspect
        the feature maps against :meth:`kernel_matrix`)."""
        if self.features is None:
            raise ValueError("this layer has no feature maps: build it with rank=R")
        self._check_lowrank_support()
        lr = self._lowrank_inputs(self.kernel_inputs(x, pos, **kwargs))
        return lowrank_kernel_matrix(lr, causal=self.spec.causal, normalize=self.spec.mode == "softmax")

    # -- argument checks -------------------------------------------------------------

    @staticmethod
    def _check_features(name: str, t: Tensor, channels: int) -> tuple[int, int]:
        if t.dim() != 3 or t.shape[-1] != channels:
            raise ValueError(f"{name} must be [batch, N, {channels}], got shape {tuple(t.shape)}")
        return t.shape[0], t.shape[1]

    def _check_source_masks(self, weights: Tensor | None, padding_mask: Tensor | None, B: int, Ns: int) -> None:
        if weights is not None and tuple(weights.shape) not in ((B, Ns), (B, Ns, self.heads)):
            raise ValueError(f"weights must be [batch={B}, sources={Ns}] or [batch, sources, heads={self.heads}], "
                             f"got {tuple(weights.shape)}")
        if padding_mask is not None and (padding_mask.dtype != torch.bool or tuple(padding_mask.shape) != (B, Ns)):
            raise ValueError(f"padding_mask must be bool [batch={B}, sources={Ns}] (True = padding), got "
                             f"{padding_mask.dtype} {tuple(padding_mask.shape)}")

    def _positions(self, name: str, pos: Tensor | None, B: int, N: int, like: Tensor) -> Tensor:
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


INTEGRATOR_SETTINGS = ("integrator", "samples", "proposal", "proposal_window", "sample_block", "generator", "backend",
                       "chunk_size", "block_size")


def configure_integrators(model: nn.Module, **settings: object) -> int:
    """Apply integrator settings to every :class:`IntegralTransform` in ``model``; returns how many.

    One call switches a trained model for evaluation, e.g. ``configure_integrators(model,
    integrator="exact")`` or ``configure_integrators(model, samples=4096)``. Unknown settings
    raise before any layer changes; each value is validated by the layer's own setter.
    """
    unknown = sorted(set(settings) - set(INTEGRATOR_SETTINGS))
    if unknown:
        raise ValueError(f"unknown integrator settings {unknown}; choose from {INTEGRATOR_SETTINGS}")
    layers = [m for m in model.modules() if isinstance(m, IntegralTransform)]
    for layer in layers:
        for name, value in settings.items():
            setattr(layer, name, value)
    return len(layers)
