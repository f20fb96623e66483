"""Low-rank integrator, flash-linear-attention style: naive ⇄ chunk ⇄ recurrent, then exact rank = exact.

Outputs, final states and every gradient (φ, ψ, v, weights, τ, initial state) agree in fp64 across
the three forms, for odd lengths and every chunk size; a sequence cut into calls equals one call;
a kernel that *is* rank R gives the exact integrator's numbers (and gradients); fp32 survives
long sequences with fast decay; malformed inputs are named.
"""

from __future__ import annotations

import math

import pytest
import torch

from itnet_scale.ops import KernelInputs, KernelSpec, integral_transform_reference
from itnet_scale.ops.lowrank import (
    LowRankInputs,
    check_lowrank_inputs,
    lowrank_chunk,
    lowrank_kernel_matrix,
    lowrank_naive,
    lowrank_recurrent,
)

B, H, R, E = 2, 3, 5, 4
TOL = 1e-10


def make(N: int, *, decay: bool, weights: bool, state: bool, normalize: bool, Ns: int | None = None,
         dtype: torch.dtype = torch.float64, seed: int = 0, rate: float = 0.3) -> tuple[LowRankInputs, torch.Tensor]:
    """Positive features (softmax needs them), values, per-head weights (every 5th zero: padding),
    τ = float64 cumsum of U(0, rate) increments, and a positive initial state; all leaves need grad."""
    g = torch.Generator().manual_seed(seed + N)
    Ns = N if Ns is None else Ns

    def rnd(*shape: int, positive: bool = False) -> torch.Tensor:
        t = torch.rand(*shape, generator=g, dtype=dtype) if positive else torch.randn(*shape, generator=g, dtype=dtype)
        return t.requires_grad_(True)

    w = None
    if weights:
        w = torch.rand(B, H, Ns, generator=g, dtype=dtype) + 0.1
        w[:, :, ::5] = 0.0
        w.requires_grad_(True)
    tau = None
    if decay:
        tau = torch.cumsum(torch.rand(B, H, Ns, generator=g, dtype=torch.float64) * rate, -1).requires_grad_(True)
    inp = LowRankInputs(rnd(B, H, N, R, positive=True), rnd(B, H, Ns, R, positive=True), rnd(B, H, Ns, E), w, tau)
    s0 = rnd(B, H, R, E + normalize, positive=True) if state else None
    return inp, s0


def leaves(inp: LowRankInputs, s0: torch.Tensor | None) -> list[torch.Tensor]:
    return [t for t in (inp.phi, inp.psi, inp.v, inp.weights, inp.tau, s0) if t is not None]


def probe_like(t: torch.Tensor) -> torch.Tensor:
    """A fixed, non-constant cotangent (a plain ``sum`` would hide errors that cancel)."""
    return torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)


def outputs_and_grads(fn, inp: LowRankInputs, s0: torch.Tensor | None):
    """``(out, final state, grads of leaves)`` of one call of ``fn``."""
    out, final = fn()
    loss = (out * probe_like(out)).sum()
    if final is not None:
        loss = loss + (final * probe_like(final)).sum()
    return out, final, torch.autograd.grad(loss, leaves(inp, s0))


def assert_same(a, b, tol: float = TOL) -> None:
    out_a, final_a, grads_a = a
    out_b, final_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
    assert (final_a is None) == (final_b is None)
    if final_a is not None:
        torch.testing.assert_close(final_a, final_b, rtol=tol, atol=tol)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


FLAGS = [dict(decay=d, weights=w, state=s) for d in (False, True) for w in (False, True) for s in (False, True)]


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
@pytest.mark.parametrize("N", [1, 7, 63, 65, 257])
def test_naive_chunk_and_recurrent_agree(N, flags, normalize):
    inp, s0 = make(N, normalize=normalize, **flags)
    naive = outputs_and_grads(lambda: lowrank_naive(inp, causal=True, normalize=normalize, initial_state=s0), inp, s0)
    assert naive[0].shape == (B, H, N, E) and naive[1].shape == (B, H, R, E + normalize)
    rec = outputs_and_grads(lambda: lowrank_recurrent(inp, normalize=normalize, initial_state=s0), inp, s0)
    assert_same(rec, naive)
    for C in (16, 32, 64):
        chunk = outputs_and_grads(
            lambda C=C: lowrank_chunk(inp, causal=True, normalize=normalize, initial_state=s0, chunk_size=C), inp, s0)
        assert_same(chunk, naive)


def test_causal_naive_is_the_masked_decayed_sum():
    """The naive form against the formula of :mod:`itnet_scale.ops.lowrank.spec`, written as loops."""
    inp, s0 = make(9, normalize=True, decay=True, weights=True, state=True)
    out, final = lowrank_naive(inp, causal=True, normalize=True, initial_state=s0)
    phi, psi, v, w, tau = (t.detach() for t in (inp.phi, inp.psi, inp.v, inp.weights, inp.tau))
    for i in range(9):
        num = torch.exp(-tau[..., i])[..., None] * (phi[:, :, i, None, :] @ s0.detach())[:, :, 0]  # [B, H, E+1]
        for j in range(i + 1):
            c = (phi[:, :, i] * psi[:, :, j]).sum(-1) * torch.exp(tau[..., j] - tau[..., i]) * w[..., j]
            num = num + c[..., None] * torch.cat([v[:, :, j], torch.ones(B, H, 1, dtype=v.dtype)], -1)
        torch.testing.assert_close(out[:, :, i].detach(), num[..., :-1] / num[..., -1:], rtol=TOL, atol=TOL)
    want = torch.exp(-tau[..., -1])[..., None, None] * s0.detach()
    for j in range(9):
        x = torch.cat([v[:, :, j], torch.ones(B, H, 1, dtype=v.dtype)], -1) * w[..., j, None]
        want = want + torch.exp(tau[..., j] - tau[..., -1])[..., None, None] * psi[:, :, j, :, None] * x[..., None, :]
    torch.testing.assert_close(final.detach(), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize(("Nq", "Ns"), [(1, 1), (9, 40), (40, 9), (65, 257)])
def test_non_causal_chunk_matches_naive(Nq, Ns, normalize):
    inp, _ = make(Nq, Ns=Ns, normalize=normalize, decay=False, weights=True, state=False)
    naive = outputs_and_grads(lambda: lowrank_naive(inp, causal=False, normalize=normalize), inp, None)
    chunk = outputs_and_grads(lambda: lowrank_chunk(inp, causal=False, normalize=normalize), inp, None)
    assert naive[1] is None and naive[0].shape == (B, H, Nq, E)
    assert_same(chunk, naive)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("causal", [False, True], ids=["all", "causal"])
def test_the_materialized_lowrank_kernel_is_what_the_integrator_applies(causal, normalize):
    """``lowrank_kernel_matrix`` (what feature maps are fitted against) times v is the integrator's output."""
    inp, _ = make(23, normalize=normalize, decay=causal, weights=True, state=False)
    K = lowrank_kernel_matrix(inp, causal=causal, normalize=normalize)
    out, _ = lowrank_naive(inp, causal=causal, normalize=normalize)
    torch.testing.assert_close(K @ inp.v, out, rtol=TOL, atol=TOL)
    if normalize:  # rows sum to 1, except row 0 whose only visible source has weight 0
        sums = K.sum(-1)
        torch.testing.assert_close(sums[..., 1:], torch.ones_like(sums[..., 1:]), rtol=TOL, atol=TOL)
    if causal:
        assert K.triu(1).abs().max() == 0


FORMS = {
    "naive": lambda inp, s, n: lowrank_naive(inp, causal=True, normalize=n, initial_state=s),
    "chunk16": lambda inp, s, n: lowrank_chunk(inp, causal=True, normalize=n, initial_state=s, chunk_size=16),
    "recurrent": lambda inp, s, n: lowrank_recurrent(inp, normalize=n, initial_state=s),
}


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("cut", [1, 16, 23, 49])
@pytest.mark.parametrize(("first", "second"), [("chunk16", "chunk16"), ("recurrent", "chunk16"),
                                               ("chunk16", "naive"), ("naive", "recurrent")])
def test_a_sequence_in_two_calls_equals_one_call(cut, first, second, normalize):
    """The state convention: τ of each call counts from the end of the previous one. Holds across
    forms (a prompt through the chunked scan, then streaming) and for the gradients too."""
    inp, s0 = make(50, normalize=normalize, decay=True, weights=True, state=True)
    whole = outputs_and_grads(lambda: lowrank_chunk(inp, causal=True, normalize=normalize, initial_state=s0,
                                                    chunk_size=32), inp, s0)

    def piece(sl: slice, tau_base: torch.Tensor | float) -> LowRankInputs:
        return LowRankInputs(inp.phi[:, :, sl], inp.psi[:, :, sl], inp.v[:, :, sl], inp.weights[:, :, sl],
                             inp.tau[:, :, sl] - tau_base)

    def two_calls():
        out1, state = FORMS[first](piece(slice(0, cut), 0.0), s0, normalize)
        out2, final = FORMS[second](piece(slice(cut, None), inp.tau[:, :, cut - 1:cut]), state, normalize)
        return torch.cat([out1, out2], 2), final

    assert_same(outputs_and_grads(two_calls, inp, s0), whole)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
def test_gradcheck_chunk_fp64(normalize):
    inp, s0 = make(11, normalize=normalize, decay=True, weights=True, state=True)

    def fn(phi, psi, v, w, tau, s):
        return lowrank_chunk(LowRankInputs(phi, psi, v, w, tau), causal=True, normalize=normalize, initial_state=s,
                             chunk_size=4)

    assert torch.autograd.gradcheck(fn, tuple(leaves(inp, s0)))


def test_fp32_long_sequence_stays_finite_and_accurate():
    """Decay rates ~ U(0, 1) over N = 4096 put τ near 2000: ``exp(±τ)`` overflows fp32 beyond 88, so a
    scan that factored the decay as ``exp(τ_j)·exp(−τ_i)`` would give inf/NaN. The chunk-local τ keeps
    every exponent within one chunk and ≤ 0."""
    inp64, s0 = make(4096, normalize=True, decay=True, weights=True, state=True, rate=1.0)
    assert inp64.tau.max() > 1500 and inp64.tau.dtype == torch.float64
    inp64 = LowRankInputs(*(t.detach() for t in (inp64.phi, inp64.psi, inp64.v, inp64.weights)), inp64.tau.detach())
    s0 = s0.detach()
    inp32 = LowRankInputs(inp64.phi.float(), inp64.psi.float(), inp64.v.float(), inp64.weights.float(), inp64.tau)
    out32, final32 = lowrank_chunk(inp32, causal=True, normalize=True, initial_state=s0.float())
    out64, final64 = lowrank_chunk(inp64, causal=True, normalize=True, initial_state=s0)
    assert out32.dtype == torch.float32
    assert torch.isfinite(out32).all() and torch.isfinite(final32).all()
    assert (out32.double() - out64).norm() / out64.norm() < 1e-4
    assert (final32.double() - final64).norm() / final64.norm() < 1e-4
    # the linear (unnormalized) form too
    lin32, _ = lowrank_chunk(inp32, causal=True, normalize=False)
    lin64, _ = lowrank_chunk(inp64, causal=True, normalize=False)
    assert torch.isfinite(lin32).all() and (lin32.double() - lin64).norm() / lin64.norm() < 1e-4


def test_fp32_long_sequence_gradients_match_fp64():
    """The hand-written backward rebuilds the decay blocks from float64 τ: fp32 gradients (τ's included)
    stay finite and close to fp64 ones when τ reaches the thousands."""
    inp64, s0 = make(2048, normalize=True, decay=True, weights=True, state=True, rate=1.0)
    assert inp64.tau.max() > 700
    inp32 = LowRankInputs(*(t.detach().float().requires_grad_(True) for t in (inp64.phi, inp64.psi, inp64.v,
                                                                                inp64.weights)),
                          inp64.tau.detach().requires_grad_(True))
    s32 = s0.detach().float().requires_grad_(True)
    fn64 = lambda: lowrank_chunk(inp64, causal=True, normalize=True, initial_state=s0)  # noqa: E731
    fn32 = lambda: lowrank_chunk(inp32, causal=True, normalize=True, initial_state=s32)  # noqa: E731
    *_, grads64 = outputs_and_grads(fn64, inp64, s0)
    *_, grads32 = outputs_and_grads(fn32, inp32, s32)
    for name, g32, g64 in zip(("phi", "psi", "v", "weights", "tau", "initial_state"), grads32, grads64):
        assert torch.isfinite(g32).all(), name
        assert (g32.double() - g64).norm() / g64.norm() < 1e-3, name


# -- exact rank: the low-rank integrator equals the exact one ----------------------------------


def exact_problem(N: int, *, mode: str, support: str, seed: int = 0):
    """Values, per-head weights (the first 3 zero: a causal query there sees nothing) and decay (causal)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(N, dtype=torch.float64)[None, :, None].expand(B, N, 1)
    tau = None
    if support == "causal":
        tau = torch.cumsum(torch.rand(B, H, N, generator=g, dtype=torch.float64) * 0.2, -1).requires_grad_(True)
    weights = torch.rand(B, H, N, generator=g, dtype=torch.float64) + 0.1
    weights[:, :, :3] = 0.0
    weights.requires_grad_(True)
    v = torch.randn(B, H, N, E, generator=g, dtype=torch.float64, requires_grad=True)
    return KernelInputs(v=v, pos_q=pos, pos_s=pos, tau_q=tau, tau_s=tau, weights=weights), KernelSpec(mode, support), g


def grads_of(out: torch.Tensor, wrt: list[torch.Tensor], skip_rows: int = 0) -> tuple[torch.Tensor, ...]:
    """Gradients of a probe of ``out``; the first ``skip_rows`` query rows are left out of the probe."""
    probe = probe_like(out)
    probe[:, :, :skip_rows] = 0.0
    return torch.autograd.grad((out * probe).sum(), wrt, retain_graph=True)


@pytest.mark.parametrize("support", ["all", "causal"])
def test_linear_mode_with_features_equal_to_the_bilinear_term_is_exact(support):
    """``s = β q·k/√d`` is rank d: φ = β q/√d, ψ = k reproduce the exact linear integral and its gradients."""
    N, d = 33, 6
    inp, spec, g = exact_problem(N, mode="linear", support=support)
    inp.q = torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True)
    inp.k = torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True)
    inp.beta = (torch.rand(H, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    wrt = [t for t in (inp.q, inp.k, inp.beta, inp.v, inp.weights, inp.tau_q) if t is not None]
    exact = integral_transform_reference(inp, spec)
    exact_grads = grads_of(exact, wrt)
    for fn in (lowrank_naive, lowrank_chunk):
        phi = inp.q * (inp.beta[None, :, None, None] / math.sqrt(d))
        out, _ = fn(LowRankInputs(phi, inp.k, inp.v, inp.weights, inp.tau_q), causal=spec.causal, normalize=False)
        torch.testing.assert_close(out, exact, rtol=TOL, atol=TOL)
        for a, b in zip(grads_of(out, wrt), exact_grads):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("support", ["all", "causal"])
def test_softmax_mode_with_an_exactly_rank_r_kernel_is_exact(support):
    """The exact kernel's only score is a float ``[B, H, N, N]`` mask ``log(φ_i·ψ_j)``: ``exp(s)`` is rank R.
    Outputs and gradients (through the log into φ, ψ; into v, weights, τ) match, and the causal rows that
    see only zero-weight sources give 0, as the exact kernel defines."""
    N = 33
    inp, spec, g = exact_problem(N, mode="softmax", support=support)
    phi = (torch.rand(B, H, N, R, generator=g, dtype=torch.float64) + 0.05).requires_grad_(True)
    psi = (torch.rand(B, H, N, R, generator=g, dtype=torch.float64) + 0.05).requires_grad_(True)
    inp.attn_mask = (phi @ psi.transpose(-1, -2)).log()
    assert inp.attn_mask.shape == (B, H, N, N)
    wrt = [t for t in (phi, psi, inp.v, inp.weights, inp.tau_q) if t is not None]
    exact = integral_transform_reference(inp, spec)
    # A row that sees no weighted source is 0/0, defined as 0: its derivative w.r.t. the zero weights is
    # a convention (each form scales it differently), so those rows stay out of the gradient probe.
    blind = 3 if spec.causal else 0
    exact_grads = grads_of(exact, wrt, blind)
    if spec.causal:
        assert exact[:, :, :blind].abs().max() == 0
    for fn in (lowrank_naive, lowrank_chunk):
        out, _ = fn(LowRankInputs(phi, psi, inp.v, inp.weights, inp.tau_q), causal=spec.causal, normalize=True)
        torch.testing.assert_close(out, exact, rtol=TOL, atol=TOL)
        for a, b in zip(grads_of(out, wrt, blind), exact_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        assert all(torch.isfinite(t).all() for t in grads_of(out, wrt))
    if spec.causal:
        out, _ = lowrank_recurrent(LowRankInputs(phi, psi, inp.v, inp.weights, inp.tau_q), normalize=True)
        torch.testing.assert_close(out, exact, rtol=TOL, atol=TOL)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_shapes_are_named():
    inp, s0 = make(8, normalize=True, decay=True, weights=True, state=True)
    bad_psi = LowRankInputs(inp.phi, inp.psi[..., :-1], inp.v, inp.weights, inp.tau)
    with pytest.raises(ValueError, match=r"psi must be \[2, 3, 8, 5\]"):
        check_lowrank_inputs(bad_psi, True, True, None)
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 3, 5, 5\]"):
        check_lowrank_inputs(inp, True, True, s0[..., :-1])
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 3, 5, 4\]"):
        check_lowrank_inputs(inp, True, False, s0)  # linear mode has no normalizer column
    with pytest.raises(ValueError, match=r"decay \(tau\) needs a causal"):
        check_lowrank_inputs(inp, False, True, None)
    with pytest.raises(ValueError, match=r"tau must be \[2, 3, 8\]"):
        check_lowrank_inputs(LowRankInputs(inp.phi, inp.psi, inp.v, inp.weights, inp.tau[..., :-1]), True, True,
                             None)
    with pytest.raises(ValueError, match="initial_state is only defined for a causal"):
        check_lowrank_inputs(LowRankInputs(inp.phi, inp.psi, inp.v, inp.weights), False, True, s0)
    cross, _ = make(8, Ns=9, normalize=True, decay=False, weights=False, state=False)
    with pytest.raises(ValueError, match="as many queries as sources, got 8 and 9"):
        check_lowrank_inputs(cross, True, True, None)
    check_lowrank_inputs(cross, False, True, None)  # fine without causality
    with pytest.raises(ValueError, match=r"weights must be \[2, 3, 8\]"):
        check_lowrank_inputs(LowRankInputs(inp.phi, inp.psi, inp.v, inp.weights[:, :1], inp.tau), True, True, None)
    with pytest.raises(ValueError, match="v must be"):
        check_lowrank_inputs(LowRankInputs(inp.phi, inp.psi, inp.v[:1]), False, True, None)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        lowrank_chunk(inp, causal=True, normalize=True, chunk_size=0)
