"""``FeatureMap``: what φ, ψ read from a layer, their positivity in softmax mode, the PRF estimate of
``exp(β q·k/√d)``, and the learned linear map's exact start on a bilinear kernel."""

from __future__ import annotations

import math

import pytest
import torch

from itnet_scale.nn import FeatureMap, IntegralTransform, KernelConfig
from itnet_scale.ops import KernelInputs, KernelSpec, LowRank
from itnet_scale.ops.spec import offsets, pair_scores, position_term

DIM, HEADS, HEAD_DIM = 24, 3, 8


def layer(**kernel) -> IntegralTransform:
    torch.manual_seed(0)
    return IntegralTransform(DIM, HEADS, KernelConfig(**kernel)).double()


def x_of(N: int = 37, B: int = 2, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(B, N, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(N)) * scale


def test_inputs_split_into_the_bilinear_score_and_the_kernel_mlp_argument():
    """``u_i·u'_j`` on the first d entries is ``β q·k/√d``; the rest add up to ``a_i + b_j + Ua (p_i − p_j)``."""
    m = layer(width=5, rank=4)
    x = x_of(11)
    pos = torch.cumsum(torch.rand(2, 11, 1, dtype=torch.float64) + 0.5, 1)
    inp = m.kernel_inputs(x, pos)
    uq, us = FeatureMap.inputs(inp)
    assert uq.shape == (2, HEADS, 11, HEAD_DIM + 5) and us.shape == (2, HEADS, 11, HEAD_DIM + 5)
    bilinear = KernelInputs(v=inp.v, pos_q=inp.pos_q, pos_s=inp.pos_s, q=inp.q, k=inp.k, beta=inp.beta)
    torch.testing.assert_close(uq[..., :HEAD_DIM] @ us[..., :HEAD_DIM].transpose(-1, -2),
                               pair_scores(bilinear, KernelSpec()), rtol=1e-12, atol=1e-12)
    z = inp.a[:, :, :, None] + inp.b[:, :, None] + position_term(inp.pos_weight, offsets(inp.pos_q, inp.pos_s))
    torch.testing.assert_close(uq[..., None, HEAD_DIM:] + us[..., None, :, HEAD_DIM:], z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["prf", "learned"])
def test_softmax_features_are_positive_and_stay_finite_for_large_inputs(kind):
    m = layer(support="causal", decay=True, width=16, rank=16, feature_map=kind)
    phi, psi = m.features(m.kernel_inputs(x_of()))
    assert (phi > 0).all() and (psi > 0).all()
    if kind == "learned":  # away from the PRF start: a trained map must stay non-negative as well
        with torch.no_grad():
            for p in m.features.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    phi, psi = m.features(m.kernel_inputs(x_of()))
    assert phi.shape == psi.shape == (2, HEADS, 37, 16)
    assert (psi > 0).all() and (phi >= 0).all()
    if kind == "prf":
        assert (phi > 0).all()
    # fp32, inputs ×20 and positions up to ~4000: exponents in the thousands. φ is scaled by its
    # largest entry (a per-query constant) and ψ's exponent is clamped: nothing overflows, nothing is negative.
    m = m.float()
    x = x_of(64).float() * 20
    pos = torch.arange(64, dtype=torch.float32)[:, None] * 63
    phi, psi = m.features(m.kernel_inputs(x, pos))
    assert torch.isfinite(phi).all() and torch.isfinite(psi).all()
    assert (phi >= 0).all() and (psi > 0).all()
    torch.testing.assert_close(phi.amax(-1), torch.full_like(phi[..., 0], 1 / math.sqrt(16)))
    m.integrator = LowRank()
    assert torch.isfinite(m(x, pos)).all()


@pytest.mark.parametrize("kind", ["prf", "learned"])
def test_many_random_features_approximate_the_exponential_kernel(kind):
    """``E[φ_i·ψ_j] ∝ exp(β q_i·k_j/√d)`` (up to a per-query constant); R = 4096 features get within a few
    percent (R = 1024 for ``learned``), far closer than R = 8 or than the best per-row constant (so the test
    is not vacuous). ``learned`` starts as ``prf``."""
    errors = {}
    big = 4096 if kind == "prf" else 1024  # learned holds an [H, R, R] MLP: R = 4096 would be 400 MB
    for rank in (8, big):
        m = layer(mode="softmax", width=0, rank=rank, feature_map=kind)
        with torch.no_grad():  # small inputs: |s| ≲ 1 (the PRF variance grows like exp(‖q‖² + ‖k‖²))
            m.q_proj.weight.mul_(0.6)
            m.k_proj.weight.mul_(0.6)
        x = x_of(20)
        inp = m.kernel_inputs(x)
        phi, psi = m.features(inp)
        approx = phi @ psi.transpose(-1, -2)
        target = (inp.beta[None, :, None, None] * (inp.q @ inp.k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)).exp()
        scale = (approx * target).sum(-1, keepdim=True) / target.square().sum(-1, keepdim=True)  # per query
        errors[rank] = ((approx - scale * target).norm() / (scale * target).norm()).item()
        if rank == big:
            constant = ((target - target.mean(-1, keepdim=True)).norm() / target.norm()).item()
            assert constant > 0.1  # the kernel does vary along rows
            assert errors[rank] < 0.5 * constant
            # the layer's exact softmax kernel, against the normalized feature products
            K = m.kernel_matrix(x)
            assert ((approx / approx.sum(-1, keepdim=True) - K).norm() / K.norm()) < 0.1
    assert errors[big] < 0.1
    assert errors[big] < errors[8] / 4


def test_prf_rejects_linear_mode():
    with pytest.raises(ValueError, match=r"prf.*needs mode='softmax'"):
        FeatureMap(2, 4, 4, 8, "prf", "linear")
    with pytest.raises(ValueError, match=r"prf.*needs mode='softmax'"):
        IntegralTransform(16, 2, KernelConfig(mode="linear", rank=8, feature_map="prf"))
    with pytest.raises(ValueError, match="feature_map must be one of"):
        FeatureMap(2, 4, 4, 8, "fourier", "softmax")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        FeatureMap(2, 4, 4, 0, "learned", "softmax")


@pytest.mark.parametrize("rank", [HEAD_DIM, HEAD_DIM + 5])
@pytest.mark.parametrize(("support", "decay"), [("all", False), ("causal", False), ("causal", True)])
def test_learned_linear_features_at_init_reproduce_a_bilinear_linear_kernel(support, decay, rank):
    """``s = β q·k/√d`` is rank d = 8; the learned linear map starts as the identity on that block, so
    with R ≥ d the lowrank layer is the exact layer — outputs and the exact parameters' gradients."""
    m = layer(mode="linear", support=support, decay=decay, width=0, rank=rank, feature_map="learned")
    x = x_of()
    exact = m(x)
    exact_grads = torch.autograd.grad(exact.square().sum(), [p for n, p in m.named_parameters()
                                                              if not n.startswith("features.")])
    m.integrator = LowRank()
    out = m(x)
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), [p for n, p in m.named_parameters()
                                                      if not n.startswith("features.")])
    for a, b in zip(grads, exact_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_learned_linear_features_below_the_bilinear_rank_are_not_exact():
    """The counterpart of the test above: R < d drops directions of ``q·k``, so the lowrank layer differs."""
    m = layer(mode="linear", support="causal", width=0, rank=HEAD_DIM - 4, feature_map="learned")
    x = x_of()
    exact = m(x)
    m.integrator = LowRank()
    assert (m(x) - exact).norm() / exact.norm() > 1e-2


def test_feature_map_without_any_kernel_input_gives_constant_features():
    fm = FeatureMap(2, 0, 0, 3, "learned", "softmax")
    v = torch.randn(1, 2, 5, 4)
    pos = torch.arange(5.0)[None, :, None]
    phi, psi = fm(KernelInputs(v=v, pos_q=pos, pos_s=pos))
    assert phi.shape == (1, 2, 5, 3) and psi.shape == (1, 2, 5, 3)
    prod = phi @ psi.transpose(-1, -2)
    torch.testing.assert_close(prod / prod[..., :1, :1], torch.ones_like(prod))


def test_detached_inputs_train_the_feature_maps_only():
    m = layer(width=4, rank=6)
    inp = m.kernel_inputs(x_of(9))
    phi, psi = m.features(inp, detach_inputs=True)
    (phi.sum() + psi.sum()).backward()
    assert m.q_proj.weight.grad is None and m.a_proj.weight.grad is None
    assert m.features.omega_q.grad is not None and m.features.omega_q.grad.abs().sum() > 0
    phi, psi = m.features(m.kernel_inputs(x_of(9)))
    (phi.sum() + psi.sum()).backward()
    assert m.q_proj.weight.grad.abs().sum() > 0
