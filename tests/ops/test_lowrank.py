"""Low-rank integrator, flash-linear-attention style: naive ⇄ chunk ⇄ recurrent, then exact rank = exact.

Outputs, final states and every gradient (φ, ψ, v, weights, τ, initial state) agree in fp64 across
the three forms, for odd lengths and every chunk size; a kernel that *is* rank R gives the exact
integrator's numbers.
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
    lowrank_naive,
    lowrank_recurrent,
)

B, H, R, E = 2, 3, 5, 4


def make(N: int, *, decay: bool, weights: bool, state: bool, normalize: bool, Ns: int | None = None,
         dtype=torch.float64, seed: int = 0, rate: float = 0.3):
    """Positive features (softmax needs them), values, optional per-head weights (some zero), τ, state."""
    g = torch.Generator().manual_seed(seed + N)
    Ns = N if Ns is None else Ns

    def rnd(*shape, positive=False):
        t = torch.rand(*shape, generator=g, dtype=dtype) if positive else torch.randn(*shape, generator=g, dtype=dtype)
        return t.requires_grad_(True)

    w = None
    if weights:
        w = torch.rand(B, H, Ns, generator=g, dtype=dtype)
        w[:, :, ::5] = 0.0  # padding enters as zero weight
        w.requires_grad_(True)
    tau = None
    if decay:
        tau = torch.cumsum(torch.rand(B, H, Ns, generator=g, dtype=torch.float64) * rate, -1).requires_grad_(True)
    inp = LowRankInputs(rnd(B, H, N, R, positive=True), rnd(B, H, Ns, R, positive=True), rnd(B, H, Ns, E), w, tau)
    s0 = rnd(B, H, R, E + normalize, positive=True) if state else None
    return inp, s0


def leaves(inp: LowRankInputs, s0):
    return [t for t in (inp.phi, inp.psi, inp.v, inp.weights, inp.tau, s0) if t is not None]


def outputs_and_grads(fn, inp, s0):
    out, final = fn()
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    loss = (out * probe).sum()
    if final is not None:
        loss = loss + (final * torch.linspace(-1, 1, final.numel(), dtype=final.dtype).reshape(final.shape)).sum()
    return out, final, torch.autograd.grad(loss, leaves(inp, s0))


def assert_same(a, b, tol=1e-10):
    out_a, final_a, grads_a = a
    out_b, final_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
    if final_a is not None or final_b is not None:
        torch.testing.assert_close(final_a, final_b, rtol=tol, atol=tol)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


FLAGS = [dict(decay=d, weights=w, state=s) for d in (False, True) for w in (False, True) for s in (False, True)]


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
@pytest.mark.parametrize("N", [1, 7, 63, 65])
def test_naive_chunk_and_recurrent_agree(N, flags, normalize):
    inp, s0 = make(N, normalize=normalize, **flags)
    naive = outputs_and_grads(lambda: lowrank_naive(inp, causal=True, normalize=normalize, initial_state=s0), inp, s0)
    rec = outputs_and_grads(lambda: lowrank_recurrent(inp, normalize=normalize, initial_state=s0), inp, s0)
    assert_same(rec, naive)
    for C in (16, 32, 64):
        chunk = outputs_and_grads(
            lambda C=C: lowrank_chunk(inp, causal=True, normalize=normalize, initial_state=s0, chunk_size=C), inp, s0)
        assert_same(chunk, naive)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
def test_a_long_sequence_with_odd_length_and_all_chunk_sizes(normalize):
    inp, s0 = make(257, normalize=normalize, decay=True, weights=True, state=True)
    naive = outputs_and_grads(lambda: lowrank_naive(inp, causal=True, normalize=normalize, initial_state=s0), inp, s0)
    for C in (16, 32, 64):
        chunk = outputs_and_grads(
            lambda C=C: lowrank_chunk(inp, causal=True, normalize=normalize, initial_state=s0, chunk_size=C), inp, s0)
        assert_same(chunk, naive)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize(("Nq", "Ns"), [(1, 1), (9, 40), (40, 9)])
def test_non_causal_chunk_matches_naive(Nq, Ns, normalize):
    inp, _ = make(Nq, Ns=Ns, normalize=normalize, decay=False, weights=True, state=False)
    naive = outputs_and_grads(lambda: lowrank_naive(inp, causal=False, normalize=normalize), inp, None)
    chunk = outputs_and_grads(lambda: lowrank_chunk(inp, causal=False, normalize=normalize), inp, None)
    assert_same(chunk, naive)


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
def test_a_sequence_in_two_calls_equals_one_call(normalize):
    """The state convention: τ of each call counts from the end of the previous one."""
    inp, _ = make(50, normalize=normalize, decay=True, weights=True, state=False)
    whole, final = lowrank_chunk(inp, causal=True, normalize=normalize, chunk_size=16)
    cut = 23

    def piece(sl, tau_base):
        return LowRankInputs(inp.phi[:, :, sl], inp.psi[:, :, sl], inp.v[:, :, sl], inp.weights[:, :, sl],
                             inp.tau[:, :, sl] - tau_base)

    first, state = lowrank_chunk(piece(slice(0, cut), 0.0), causal=True, normalize=normalize, chunk_size=16)
    second, final2 = lowrank_chunk(piece(slice(cut, None), inp.tau[:, :, cut - 1:cut]), causal=True,
                                   normalize=normalize, chunk_size=16, initial_state=state)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final2, final, rtol=1e-12, atol=1e-12)


def test_gradcheck_chunk_fp64():
    inp, s0 = make(11, normalize=True, decay=True, weights=True, state=True)

    def fn(phi, psi, v, w, tau, s):
        return lowrank_chunk(LowRankInputs(phi, psi, v, w, tau), causal=True, normalize=True, initial_state=s,
                             chunk_size=4)

    assert torch.autograd.gradcheck(fn, tuple(leaves(inp, s0)))


def test_fp32_long_sequence_stays_finite_and_accurate():
    """Chunk-local τ: with τ ~ N/2 at the end, exp(±τ) would overflow fp32; the chunked scan does not."""
    inp64, _ = make(4096, normalize=True, decay=True, weights=False, state=False, rate=1.0)
    assert inp64.tau.max() > 1000
    inp32 = LowRankInputs(inp64.phi.detach().float(), inp64.psi.detach().float(), inp64.v.detach().float(),
                          None, inp64.tau.detach())
    out32, final32 = lowrank_chunk(inp32, causal=True, normalize=True)
    out64, _ = lowrank_chunk(inp64, causal=True, normalize=True)
    assert torch.isfinite(out32).all() and torch.isfinite(final32).all()
    err = (out32.double() - out64.detach()).norm() / out64.detach().norm()
    assert err < 1e-5


# -- exact rank: the low-rank integrator equals the exact one ----------------------------------


def exact_problem(N: int, d: int, *, mode: str, support: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(N, dtype=torch.float64)[None, :, None].expand(B, N, 1)
    tau = torch.cumsum(torch.rand(B, H, N, generator=g, dtype=torch.float64) * 0.2, -1) if support == "causal" \
        else None
    weights = torch.rand(B, H, N, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, N, E, generator=g, dtype=torch.float64)
    return KernelInputs(v=v, pos_q=pos, pos_s=pos, tau_q=tau, tau_s=tau, weights=weights), KernelSpec(mode, support), g


@pytest.mark.parametrize("support", ["all", "causal"])
def test_linear_mode_with_features_equal_to_the_bilinear_term_is_exact(support):
    """``s = β q·k/√d`` is rank d: φ = β q/√d, ψ = k reproduce the exact linear integral."""
    d = 6
    inp, spec, g = exact_problem(33, d, mode="linear", support=support)
    inp.q, inp.k = torch.randn(B, H, 33, d, generator=g, dtype=torch.float64), torch.randn(B, H, 33, d, generator=g,
                                                                                         dtype=torch.float64)
    inp.beta = torch.rand(H, generator=g, dtype=torch.float64) + 0.5
    exact = integral_transform_reference(inp, spec)
    phi = inp.q * (inp.beta[None, :, None, None] / math.sqrt(d))
    lr = LowRankInputs(phi, inp.k, inp.v, inp.weights, inp.tau_q)
    for fn in (lowrank_naive, lowrank_chunk):
        out, _ = fn(lr, causal=spec.causal, normalize=False)
        torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("support", ["all", "causal"])
def test_softmax_mode_with_an_exactly_rank_r_kernel_is_exact(support):
    """The exact kernel's only score is a float mask ``log(φ_i·ψ_j)``: ``exp(s)`` is exactly rank R."""
    inp, spec, g = exact_problem(33, 0, mode="softmax", support=support)
    phi = torch.rand(B, H, 33, R, generator=g, dtype=torch.float64)
    psi = torch.rand(B, H, 33, R, generator=g, dtype=torch.float64)
    inp.attn_mask = (phi @ psi.transpose(-1, -2)).log()
    exact = integral_transform_reference(inp, spec)
    lr = LowRankInputs(phi, psi, inp.v, inp.weights, inp.tau_q)
    for fn in (lowrank_naive, lowrank_chunk):
        out, _ = fn(lr, causal=spec.causal, normalize=True)
        torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_shapes_are_named():
    inp, s0 = make(8, normalize=True, decay=True, weights=True, state=True)
    bad_psi = LowRankInputs(inp.phi, inp.psi[..., :-1], inp.v, inp.weights, inp.tau)
    with pytest.raises(ValueError, match="psi must be"):
        check_lowrank_inputs(bad_psi, True, True, None)
    with pytest.raises(ValueError, match="initial_state must be"):
        check_lowrank_inputs(inp, True, True, s0[..., :-1])
    with pytest.raises(ValueError, match=r"tau.*causal"):
        check_lowrank_inputs(inp, False, True, None)
    cross, _ = make(8, Ns=9, normalize=True, decay=False, weights=False, state=False)
    with pytest.raises(ValueError, match="as many queries as sources"):
        check_lowrank_inputs(cross, True, True, None)
    with pytest.raises(ValueError, match="weights must be"):
        check_lowrank_inputs(LowRankInputs(inp.phi, inp.psi, inp.v, inp.weights[:, :1], inp.tau), True, True, None)
