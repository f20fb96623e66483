"""The layer's montecarlo integrator: switching, seeding, evaluation settings, the proposal loss."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import IntegralTransform, KernelConfig, configure_integrators
from itnet_scale.ops import Exact, MonteCarlo


def layer(integrator=None, **kernel) -> IntegralTransform:
    torch.manual_seed(0)
    return IntegralTransform(24, 3, KernelConfig(**kernel), integrator).double()


def sampled(**settings) -> MonteCarlo:
    return MonteCarlo(sample_block=8, **settings)


@pytest.mark.parametrize(("proposal", "mode", "support"), [
    (p, mode, support) for p in ("uniform", "window", "learned")
    for mode, support in (("softmax", "all"), ("softmax", "causal"), ("linear", "causal"))
    if not (p == "learned" and mode == "linear")  # the learned proposal needs softmax mode
])
def test_enough_samples_reproduce_the_exact_layer_and_its_gradients(proposal, mode, support):
    m = layer(mode=mode, support=support, decay=support == "causal", offset_range=4,
              rank=8 if proposal == "learned" else None)
    x = torch.randn(2, 37, 24, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, -6:] = True

    def run():
        y = m(x, padding_mask=pad)
        params = [p for n, p in m.named_parameters() if not n.startswith("features.")]
        return y, torch.autograd.grad(y.square().sum(), [x, *params], allow_unused=True)

    y_exact, g_exact = run()
    m.integrator = sampled(samples=37, proposal=proposal, proposal_window=3)
    y_mc, g_mc = run()
    torch.testing.assert_close(y_mc, y_exact, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_mc, g_exact):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_torch_manual_seed_fixes_the_samples_and_each_step_draws_anew():
    m = layer(sampled(samples=5))
    x = torch.randn(2, 40, 24, dtype=torch.float64)
    torch.manual_seed(1)
    a, b = m(x), m(x)
    torch.manual_seed(1)
    c = m(x)
    assert torch.equal(a, c) and not torch.equal(a, b)
    m.generator = torch.Generator().manual_seed(3)
    d = m(x)
    m.generator = torch.Generator().manual_seed(3)
    assert torch.equal(d, m(x))


def test_evaluation_switches_to_exact_or_more_samples_with_one_setting():
    m = layer(sampled(samples=4), support="causal", decay=True)
    x = torch.randn(1, 50, 24, dtype=torch.float64)
    m.integrator = Exact()
    exact = m(x)
    m.integrator = sampled(samples=4)
    few = (m(x) - exact).norm()
    m.integrator = sampled(samples=48)
    more = (m(x) - exact).norm()
    m.integrator = sampled(samples=50)
    assert torch.allclose(m(x), exact, atol=1e-12)
    assert more < few


def test_learned_proposal_has_a_loss_that_only_trains_the_proposal():
    m = layer(sampled(samples=6, proposal="learned"), rank=8)
    x = torch.randn(2, 40, 24, dtype=torch.float64)
    m.train()
    m(x)
    assert m.proposal_loss is not None and m.proposal_loss.requires_grad
    names = [n for n, p in m.named_parameters()]
    grads = torch.autograd.grad(m.proposal_loss, list(m.parameters()), allow_unused=True)
    touched = {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
    assert touched and all(n.startswith("features.") for n in touched), touched
    m.eval()
    m(x)
    assert m.proposal_loss is None


def test_bad_settings_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="proposal must be one of"):
        sampled(proposal="importance")
    with pytest.raises(ValueError, match="needs mode='softmax'"):
        layer(sampled(proposal="learned"), mode="linear")
    m = layer(sampled())
    with pytest.raises(ValueError, match=r"feature maps \(rank=R\)"):
        m.integrator = sampled(proposal="learned")
    assert m.integrator == sampled()
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        sampled(samples=0)
    with pytest.raises(ValueError, match="sample_block must be an integer >= 1"):
        MonteCarlo(sample_block=0)
    with pytest.raises(ValueError, match=r"window.*self-transform"):
        cross = layer(sampled(proposal="window"))
        cross(torch.randn(1, 5, 24, dtype=torch.float64), source=torch.randn(1, 9, 24, dtype=torch.float64))
    causal = layer(sampled(), support="causal")
    with pytest.raises(ValueError, match="increases strictly"):
        causal(torch.randn(1, 5, 24, dtype=torch.float64), torch.tensor([[0.0], [2.0], [1.0], [3.0], [4.0]]))


def test_one_setting_switches_every_layer_of_a_model():
    model = torch.nn.Sequential(layer(sampled(samples=4)), torch.nn.GELU(), layer(sampled(samples=4), support="causal"))
    x = torch.randn(1, 30, 24, dtype=torch.float64)
    assert configure_integrators(model, integrator="exact") == 2
    assert all(m.integrator == Exact() for m in model if isinstance(m, IntegralTransform))
    exact = model(x)
    configure_integrators(model, integrator="montecarlo", samples=30, sample_block=8)
    torch.testing.assert_close(model(x), exact, rtol=1e-10, atol=1e-10)
    configure_integrators(model, samples=40)  # a setting of the current integrator, the others kept
    assert all(m.integrator == sampled(samples=40) for m in model if isinstance(m, IntegralTransform))
    configure_integrators(model, Exact("reference"))
    torch.testing.assert_close(model(x), exact, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"the exact integrator has no settings \['samples'\]"):
        configure_integrators(model, samples=8)
    with pytest.raises(ValueError, match=r"the montecarlo integrator has no settings \['sampels'\]"):
        configure_integrators(model, "montecarlo", sampels=8)
    with pytest.raises(ValueError, match="samples must be"):
        configure_integrators(model, "montecarlo", samples=-1)
    with pytest.raises(ValueError, match="integrator must be one of"):
        configure_integrators(model, "quadrature")
    assert all(m.integrator == Exact("reference") for m in model if isinstance(m, IntegralTransform))


def test_a_refused_setting_changes_no_layer():
    """Every layer's new setting is checked before any layer changes: here the second layer has no feature maps."""
    model = torch.nn.Sequential(layer(rank=4), layer())
    with pytest.raises(ValueError, match="feature maps"):
        configure_integrators(model, "lowrank")
    assert [m.integrator for m in model] == [Exact(), Exact()]
