"""Monte Carlo integrator: enumeration is exact, naive ⇄ tiled, and the statistics of the estimate.

Trials run side by side: a batch of ``T`` copies of one problem draws ``T`` independent
sample sets in one call (every batch element draws its own).
"""

from __future__ import annotations

import math

import pytest
import torch

from itnet_scale.ops import KernelInputs, KernelSpec, integral_transform_reference
from itnet_scale.ops.montecarlo import (
    BlockLayout,
    integral_transform_montecarlo,
    learned,
    proposal_loss,
    sampled_inputs,
    uniform,
    window,
)

from .conftest import random_inputs

CPU = torch.device("cpu")

CASES = [
    dict(mode="softmax", support="all", kw=dict(weights="per_head", padding=True, attn_mask="float", table=True)),
    dict(mode="softmax", support="causal", kw=dict(decay=True, weights="shared", attn_mask="bool", depth=2)),
    dict(mode="linear", support="all", kw=dict(weights="shared", padding=True)),
    dict(mode="linear", support="causal", kw=dict(decay=True, table=True, attn_mask="bool")),
    dict(mode="softmax", support="window", size=5.0, kw=dict(pos_dim=2, table=True)),
    dict(mode="linear", support="radius", size=3.0, kw=dict(pos_dim=2, weights="per_head")),
    dict(mode="softmax", support="causal_window", size=9.0, kw=dict(decay=True, padding=True)),
]


def spec_of(case: dict) -> KernelSpec:
    offset = None
    if case["kw"].get("table"):
        offset = (3,) * case["kw"].get("pos_dim", 1)
    return KernelSpec(case["mode"], case["support"], case.get("size", math.inf), "relu", offset)


def case_id(case: dict) -> str:
    return f"{case['mode']}-{case['support']}-" + "-".join(f"{k}={v}" for k, v in case["kw"].items())


def grads(out: torch.Tensor, inp: KernelInputs) -> list[torch.Tensor | None]:
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = [t for t in inp.tensors() if t is not None and t.requires_grad]
    return list(torch.autograd.grad((out * probe).sum(), leaves, allow_unused=True))


def assert_all_close(a, b, tol=1e-10):
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_enumeration_reproduces_exact_outputs_and_gradients(case, backend):
    spec = spec_of(case)
    N = 29
    inp = random_inputs(N, N, spec=spec, **case["kw"])
    causal = spec.causal and case["kw"].get("pos_dim", 1) == 1
    draw = uniform(BlockLayout(N, N, 8, causal), inp.v.shape[0], N, device=CPU)
    assert draw.enumerated.all()
    out = integral_transform_montecarlo(inp, spec, draw, 8, backend=backend)
    ref = integral_transform_reference(inp, spec)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert_all_close(grads(out, inp), grads(ref, inp))


SHAPES = [(1, 1, 1, 3), (63, 63, 16, 21), (45, 257, 7, 50)]  # (Nq, Ns, queries per block, M)


@pytest.mark.parametrize(("case", "shape"), [(c, s) for c in CASES for s in SHAPES
                                             if not (spec_of(c).causal and s[0] != s[1])],  # causal: self only
                         ids=lambda p: case_id(p) if isinstance(p, dict) else "x".join(map(str, p)))
def test_naive_and_tiled_agree_on_the_same_draw(case, shape):
    Nq, Ns, bq, M = shape
    spec = spec_of(case)
    inp = random_inputs(Nq, Ns, spec=spec, **case["kw"])
    causal = spec.causal and case["kw"].get("pos_dim", 1) == 1
    g = torch.Generator().manual_seed(5)
    draw = uniform(BlockLayout(Nq, Ns, bq, causal), inp.v.shape[0], M, device=CPU, generator=g)
    naive = integral_transform_montecarlo(inp, spec, draw, bq, backend="reference")
    tiled = integral_transform_montecarlo(inp, spec, draw, bq, backend="torch")
    torch.testing.assert_close(tiled, naive, rtol=1e-10, atol=1e-10)
    assert_all_close(grads(tiled, inp), grads(naive, inp))


# -- proposals ----------------------------------------------------------------------------


def test_uniform_draws_stay_in_the_causal_prefix_and_weigh_the_candidate_count():
    layout = BlockLayout(100, 100, 10, causal=True)
    draw = uniform(layout, 3, 16, device=CPU, generator=torch.Generator().manual_seed(0))
    last = torch.arange(10) * 10 + 9
    assert (draw.index <= last[None, :, None]).all() and (draw.index >= 0).all()
    # Σ_m c_m = number of candidates, exactly, in every block (enumerated ones included)
    torch.testing.assert_close(draw.scale.sum(-1), (last + 1).double().expand(3, -1))
    assert draw.enumerated[:, 0].all() and not draw.enumerated[:, 1:].any()  # 10 candidates ≤ 16 slots


def test_window_proposal_enumerates_the_window_and_samples_outside_it():
    layout = BlockLayout(200, 200, 8, causal=False)
    draw = window(layout, 2, 64, 10, device=CPU, generator=torch.Generator().manual_seed(0))
    first = torch.arange(25) * 8
    lo, hi = (first - 10).clamp(min=0), (first + 17).clamp(max=199)
    W = 8 + 20
    used = draw.scale[..., :W] > 0
    inside = (draw.index[..., :W] >= lo[None, :, None]) & (draw.index[..., :W] <= hi[None, :, None])
    assert (inside | ~used).all()
    torch.testing.assert_close(used.sum(-1), (hi - lo + 1).expand(2, -1))  # every window source once
    rest = draw.index[..., W:]
    outside = (rest < lo[None, :, None]) | (rest > hi[None, :, None])
    assert outside.all(), "the sampled stratum must avoid the enumerated window"
    torch.testing.assert_close(draw.scale.sum(-1), torch.full((2, 25), 200.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="window of a block"):
        window(layout, 2, 20, 10, device=CPU)


def test_learned_proposal_probabilities_are_the_mixture_it_samples_from():
    """Empirical frequencies of the drawn sources match exp(log_prob) (the q that weighs them)."""
    g = torch.Generator().manual_seed(3)
    T, H, N, R, M = 2000, 2, 40, 3, 10
    phi = torch.rand(1, H, N, R, generator=g, dtype=torch.float64).expand(T, -1, -1, -1)
    psi = (torch.rand(1, H, N, R, generator=g, dtype=torch.float64) ** 4).expand(T, -1, -1, -1)
    layout = BlockLayout(N, N, N, causal=True)  # one block: its last query sees every source
    draw = learned(layout, phi, psi, M, uniform_share=0.2, generator=g)
    assert not draw.enumerated.any()
    index, q_drawn = draw.index.flatten(), draw.log_prob.exp().detach().flatten()
    q = torch.zeros(N, dtype=torch.float64).index_put_((index,), q_drawn)
    freq = torch.bincount(index, minlength=N).double() / index.numel()
    assert abs(q.sum().item() - 1.0) < 1e-12
    assert (freq - q).abs().max() < 4 * math.sqrt(q.max().item() / index.numel())
    torch.testing.assert_close(draw.scale.flatten(), 1.0 / (M * q_drawn))


# -- statistics ---------------------------------------------------------------------------


def trials(inp: KernelInputs, T: int) -> KernelInputs:
    """``T`` copies of a one-element batch, so one call draws ``T`` independent sample sets."""
    fields = {}
    for n, t in zip(inp.names(), inp.tensors()):
        if t is None or n in KernelInputs.PARAMETERS or (n == "attn_mask" and t.dim() == 2):
            fields[n] = t
        else:
            fields[n] = t[:1].expand(T, *t.shape[1:])
    return KernelInputs(**fields)


def problem(mode: str, support: str = "all", N: int = 24, **kw) -> tuple[KernelInputs, KernelSpec]:
    spec = KernelSpec(mode, support)
    return random_inputs(N, N, spec=spec, B=1, requires_grad=False, **kw), spec


def estimates(inp, spec, M, T, draw_fn=uniform, bq=4, causal=False, seed=0, **kw) -> torch.Tensor:
    many = trials(inp, T)
    layout = BlockLayout(inp.shape[2], inp.shape[3], bq, causal)
    draw = draw_fn(layout, T, M, device=CPU, generator=torch.Generator().manual_seed(seed), **kw)
    return integral_transform_montecarlo(many, spec, draw, bq, backend="reference")


@pytest.mark.parametrize("support", ["all", "causal"])
def test_linear_mode_is_unbiased_in_outputs(support):
    inp, spec = problem("linear", support, decay=support == "causal", weights="shared")
    exact = integral_transform_reference(inp, spec)[0]
    T = 4000
    est = estimates(inp, spec, M=6, T=T, causal=support == "causal")
    mean, sd = est.mean(0), est.std(0)
    assert (sd > 0).any()
    assert ((mean - exact).abs() <= 4 * sd / math.sqrt(T) + 1e-12).all()


def test_linear_mode_is_unbiased_in_gradients():
    inp, spec = problem("linear", weights="shared")
    params = [inp.q, inp.k, inp.a, inp.b, inp.w2, inp.v]
    for p in params:
        p.requires_grad_(True)

    def grad_of(out):
        probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        return torch.cat([g.flatten() for g in torch.autograd.grad((out * probe).sum(), params)])

    exact = grad_of(integral_transform_reference(inp, spec))
    T, g = 400, torch.Generator().manual_seed(11)
    layout = BlockLayout(24, 24, 4, causal=False)
    per_trial = torch.stack([
        grad_of(integral_transform_montecarlo(inp, spec, uniform(layout, 1, 6, device=CPU, generator=g), 4,
                                              backend="reference"))
        for _ in range(T)])
    mean, sd = per_trial.mean(0), per_trial.std(0)
    assert ((mean - exact).abs() <= 4 * sd / math.sqrt(T) + 1e-10).all()


def test_variance_falls_like_one_over_m():
    inp, spec = problem("linear")
    var = {M: estimates(inp, spec, M=M, T=3000, seed=M).var(0).mean().item() for M in (4, 16)}
    ratio = var[4] / var[16]
    assert 3.0 < ratio < 5.3, f"variance ratio between M=4 and M=16 should be ~4, got {ratio:.2f}"


def test_self_normalized_bias_shrinks_with_m():
    inp, spec = problem("softmax", N=40, r=0)
    exact = integral_transform_reference(inp, spec)[0]
    T = 6000
    bias = [(estimates(inp, spec, M=M, T=T, bq=8, seed=M).mean(0) - exact).norm().item() for M in (3, 6, 12, 24)]
    assert all(b > a for a, b in zip(bias[1:], bias[:-1])), f"bias must fall as M grows: {bias}"
    assert bias[-1] < 0.6 * bias[0], f"bias at M=24 vs M=3: {bias}"


def test_window_proposal_beats_uniform_on_a_local_kernel():
    inp, spec = problem("softmax", "causal", N=96, decay=True)
    inp.tau_q = inp.tau_s = inp.tau_q * 8  # strong decay: the kernel lives near the diagonal
    exact = integral_transform_reference(inp, spec)[0]
    kw = dict(M=24, T=400, bq=4, causal=True)
    err_uniform = (estimates(inp, spec, **kw) - exact).square().mean().item()
    err_window = (estimates(inp, spec, draw_fn=window, half_width=6, **kw) - exact).square().mean().item()
    assert err_window < 0.1 * err_uniform


def low_rank_problem(N: int = 64, R: int = 3, seed: int = 0):
    """A softmax kernel that is exactly ``φ_i·ψ_j``: its only score term is ``log(φ ψᵀ)``."""
    g = torch.Generator().manual_seed(seed)
    B, H = 1, 1
    phi = torch.rand(B, H, N, R, generator=g, dtype=torch.float64)
    psi = torch.rand(B, H, N, R, generator=g, dtype=torch.float64) ** 16  # a few sources dominate
    spec = KernelSpec("softmax", "all")
    inp = KernelInputs(v=torch.randn(B, H, N, 3, generator=g, dtype=torch.float64),
                       pos_q=torch.arange(N, dtype=torch.float64)[None, :, None],
                       pos_s=torch.arange(N, dtype=torch.float64)[None, :, None],
                       attn_mask=(phi @ psi.transpose(-1, -2)).log())
    return inp, spec, phi, psi


def test_a_proposal_matched_to_the_kernel_beats_uniform():
    inp, spec, phi, psi = low_rank_problem()
    exact = integral_transform_reference(inp, spec)[0]
    T, M, bq = 300, 8, 1
    many = trials(inp, T)
    layout = BlockLayout(64, 64, bq, causal=False)
    g = torch.Generator().manual_seed(0)
    matched = learned(layout, phi.expand(T, -1, -1, -1), psi.expand(T, -1, -1, -1), M, generator=g)
    flat = uniform(layout, T, M, device=CPU, generator=g)
    err = {name: (integral_transform_montecarlo(many, spec, d, bq, backend="reference") - exact).square().mean()
           for name, d in (("matched", matched), ("uniform", flat))}
    assert err["matched"] < 0.5 * err["uniform"], err


def test_proposal_loss_trains_the_proposal_toward_the_kernel():
    inp, spec, phi_true, _ = low_rank_problem(N=48, R=2, seed=1)
    exact = integral_transform_reference(inp, spec)[0]
    layout = BlockLayout(48, 48, 4, causal=False)
    logits = torch.zeros(1, 1, 48, 2, dtype=torch.float64, requires_grad=True)  # ψ to learn, φ kept
    opt = torch.optim.Adam([logits], lr=0.1)
    g = torch.Generator().manual_seed(0)

    def error() -> float:
        with torch.no_grad():
            many, T = trials(inp, 200), 200
            d = learned(layout, phi_true.expand(T, -1, -1, -1), logits.exp().expand(T, -1, -1, -1), 6, generator=g)
            return (integral_transform_montecarlo(many, spec, d, 4, backend="reference") - exact).square().mean().item()

    before = error()
    for _ in range(150):
        draw = learned(layout, phi_true, logits.exp(), 6, generator=g)
        loss = proposal_loss(sampled_inputs(inp, draw, 4), spec, draw, torch.arange(12))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < 0.5 * before


def test_a_seeded_generator_fixes_the_draw_and_the_global_seed_does_too():
    layout = BlockLayout(50, 50, 5, causal=False)
    a = uniform(layout, 2, 7, device=CPU, generator=torch.Generator().manual_seed(9))
    b = uniform(layout, 2, 7, device=CPU, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.index, b.index)
    torch.manual_seed(4)
    c = uniform(layout, 2, 7, device=CPU)
    d = uniform(layout, 2, 7, device=CPU)
    torch.manual_seed(4)
    e = uniform(layout, 2, 7, device=CPU)
    assert torch.equal(c.index, e.index) and not torch.equal(c.index, d.index)


def test_samples_for_the_wrong_number_of_blocks_are_refused():
    inp, spec = problem("linear")
    draw = uniform(BlockLayout(24, 24, 8, False), 1, 5, device=CPU)
    with pytest.raises(ValueError, match="blocks"):
        integral_transform_montecarlo(inp, spec, draw, 4)


def test_blocks_split_over_several_backend_calls_give_the_same_outputs_and_gradients(monkeypatch):
    import itnet_scale.ops.montecarlo.estimator as estimator

    spec = spec_of(CASES[0])
    inp = random_inputs(40, 40, spec=spec, **CASES[0]["kw"])
    draw = uniform(BlockLayout(40, 40, 6, False), 2, 9, device=CPU, generator=torch.Generator().manual_seed(2))
    whole = integral_transform_montecarlo(inp, spec, draw, 6, backend="torch")
    g_whole = grads(whole, inp)
    monkeypatch.setattr(estimator, "PAIRS_PER_CALL", 6 * 9 * 3)  # 3 of the 14 blocks per call
    parts = integral_transform_montecarlo(inp, spec, draw, 6, backend="torch")
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)
    assert_all_close(grads(parts, inp), g_whole, tol=1e-12)
