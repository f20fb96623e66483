"""The layer's lowrank integrator and its feature maps: exactness where the kernel is low rank,
streaming, segments, backends, and the errors for what it cannot integrate."""

from __future__ import annotations

import pytest
import torch

import itnet_scale.nn.integral_transform as integral_transform_module
from itnet_scale.nn import FeatureMap, IntegralTransform
from itnet_scale.ops import KernelInputs


def layer(**kw) -> IntegralTransform:
    torch.manual_seed(0)
    return IntegralTransform(24, 3, **kw).double()


def x_of(N: int = 37, B: int = 2) -> torch.Tensor:
    return torch.randn(B, N, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(N))


@pytest.mark.parametrize(("support", "decay"), [("all", False), ("causal", False), ("causal", True)])
def test_learned_linear_features_at_init_reproduce_a_bilinear_linear_kernel(support, decay):
    """``s = β q·k/√d`` is rank d = 8; the learned linear map starts as the identity on that block."""
    m = layer(mode="linear", support=support, decay=decay, kernel_width=0, rank=8, feature_map="learned")
    x = x_of()
    exact = m(x)
    m.integrator = "lowrank"
    torch.testing.assert_close(m(x), exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("feature_map", ["prf", "learned"])
def test_a_constant_softmax_kernel_is_rank_one_for_every_feature_map(feature_map):
    """No bilinear term, no kernel MLP, a zero offset table: ``s ≡ 0`` and φ·ψ is constant —
    the normalizer, decay, weights and padding paths must then match the exact layer."""
    m = layer(mode="softmax", support="causal", decay=True, bilinear=False, kernel_width=0, offset_range=3,
              rank=4, feature_map=feature_map)
    x = x_of()
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, -5:] = True
    w = torch.rand(2, 37, 3, dtype=torch.float64)
    exact = m(x, padding_mask=pad, weights=w)
    m.integrator = "lowrank"
    torch.testing.assert_close(m(x, padding_mask=pad, weights=w), exact, rtol=1e-10, atol=1e-10)


def test_prf_with_many_features_approximates_the_exponential_kernel():
    m = layer(mode="softmax", kernel_width=0, rank=4096, feature_map="prf")
    with torch.no_grad():
        m.q_proj.weight.mul_(0.3)
        m.k_proj.weight.mul_(0.3)
    x = x_of(20, B=1)
    inp = m.kernel_inputs(x)
    phi, psi = m.features(inp)
    approx = phi @ psi.transpose(-1, -2)
    approx = approx / approx.sum(-1, keepdim=True)
    exact = m.kernel_matrix(x)
    assert ((approx - exact).norm() / exact.norm()) < 0.1
    assert (phi > 0).all() and (psi > 0).all()


def test_feature_maps_refuse_what_they_cannot_represent():
    with pytest.raises(ValueError, match=r"prf.*softmax"):
        FeatureMap(2, 4, 4, 8, "prf", "linear")
    with pytest.raises(ValueError, match="feature_map must be one of"):
        FeatureMap(2, 4, 4, 8, "fourier", "softmax")
    with pytest.raises(ValueError, match="rank must be"):
        FeatureMap(2, 4, 4, 0, "learned", "softmax")


def test_feature_map_without_any_kernel_input_gives_constant_features():
    fm = FeatureMap(2, 0, 0, 3, "learned", "softmax")
    v = torch.randn(1, 2, 5, 4)
    pos = torch.arange(5.0)[None, :, None]
    phi, psi = fm(KernelInputs(v=v, pos_q=pos, pos_s=pos))
    assert phi.shape == (1, 2, 5, 3) and psi.shape == (1, 2, 5, 3)
    prod = phi @ psi.transpose(-1, -2)
    torch.testing.assert_close(prod / prod[..., :1, :1], torch.ones_like(prod))


def test_switching_integrators_keeps_the_exact_parameters_and_output():
    m = layer(support="causal", decay=True, rank=16)
    x = x_of()
    before = {n: p.clone() for n, p in m.named_parameters()}
    exact = m(x)
    m.integrator = "lowrank"
    m(x).sum().backward()
    m.integrator = "exact"
    torch.testing.assert_close(m(x), exact, rtol=0, atol=0)
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())
    with pytest.raises(ValueError, match="rank=R"):
        layer().integrator = "lowrank"


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_streaming_one_position_at_a_time_equals_the_whole_sequence(mode):
    m = layer(mode=mode, support="causal", decay=True, integrator="lowrank", rank=8, offset_range=2)
    x = x_of(30)
    pos = torch.arange(30, dtype=torch.float64)[:, None]
    whole, final = m(x, pos, return_state=True)
    state, outs = None, []
    for t in range(30):
        y, state = m(x[:, t:t + 1], pos[t:t + 1], initial_state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-10)


def test_long_sequences_in_segments_give_the_same_outputs_state_and_gradients(monkeypatch):
    m = layer(support="causal", decay=True, integrator="lowrank", rank=8, chunk_size=16)
    x = x_of(100).requires_grad_(True)
    pad = torch.zeros(2, 100, dtype=torch.bool)
    pad[1, -7:] = True

    def run():
        y, s = m(x, padding_mask=pad, weights=torch.linspace(0.1, 1, 100, dtype=torch.float64).expand(2, 100),
                 return_state=True)
        return y, s, torch.autograd.grad(y.square().sum() + s.sum(), [x, *m.parameters()], allow_unused=True)

    y1, s1, g1 = run()
    monkeypatch.setattr(integral_transform_module, "LOWRANK_SEGMENT", 33)
    y2, s2, g2 = run()
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("support", "decay"), [("all", False), ("causal", True)])
def test_reference_and_chunked_lowrank_agree_on_outputs_and_all_gradients(support, decay):
    m = layer(support=support, decay=decay, integrator="lowrank", rank=8, chunk_size=16, kernel_depth=2)
    x = x_of(45).requires_grad_(True)
    results = []
    for backend in ("reference", "tiled"):
        m.backend = backend
        y = m(x)
        results.append((y, torch.autograd.grad(y.square().sum(), [x, *m.parameters()], allow_unused=True)))
    (y_ref, g_ref), (y, g) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert sum(a is not None for a in g_ref) > 10
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_what_lowrank_cannot_integrate_is_refused_clearly():
    x = x_of(6)
    with pytest.raises(ValueError, match="support 'all' or 'causal'"):
        layer(support="window", support_size=2.0, integrator="lowrank")(x)
    with pytest.raises(ValueError, match="no attn_mask"):
        layer(integrator="lowrank")(x, attn_mask=torch.ones(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="increases strictly"):
        layer(support="causal", integrator="lowrank")(x, torch.tensor([[0.0], [1.0], [1.0], [2.0], [3.0], [4.0]]))
    with pytest.raises(ValueError, match="initial_state must be"):
        layer(support="causal", integrator="lowrank", rank=4)(x, initial_state=torch.zeros(2, 3, 5, 9))
    with pytest.raises(ValueError, match="initial_state/return_state need integrator='lowrank'"):
        layer(support="causal")(x, return_state=True)
