"""The layer's montecarlo integrator: switching, seeding, evaluation settings, the proposal loss."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import IntegralTransform, configure_integrators


def layer(**kw) -> IntegralTransform:
    torch.manual_seed(0)
    return IntegralTransform(24, 3, sample_block=8, **kw).double()


@pytest.mark.parametrize(("proposal", "mode", "support"), [
    (p, mode, support) for p in ("uniform", "window", "learned")
    for mode, support in (("softmax", "all"), ("softmax", "causal"), ("linear", "causal"))
    if not (p == "learned" and mode == "linear")  # the learned proposal needs softmax mode
])
def test_enough_samples_reproduce_the_exact_layer_and_its_gradients(proposal, mode, support):
    m = layer(mode=mode, support=support, decay=support == "causal", proposal=proposal, proposal_window=3,
              offset_range=4)
    x = torch.randn(2, 37, 24, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, -6:] = True

    def run():
        y = m(x, padding_mask=pad)
        params = [p for n, p in m.named_parameters() if not n.startswith("features.")]
        return y, torch.autograd.grad(y.square().sum(), [x, *params], allow_unused=True)

    y_exact, g_exact = run()
    m.integrator, m.samples = "montecarlo", 37
    y_mc, g_mc = run()
    torch.testing.assert_close(y_mc, y_exact, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_mc, g_exact):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_torch_manual_seed_fixes_the_samples_and_each_step_draws_anew():
    m = layer(integrator="montecarlo", samples=5)
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
    m = layer(integrator="montecarlo", samples=4, support="causal", decay=True)
    x = torch.randn(1, 50, 24, dtype=torch.float64)
    m.integrator = "exact"
    exact = m(x)
    m.integrator = "montecarlo"
    few = (m(x) - exact).norm()
    m.samples = 48
    more = (m(x) - exact).norm()
    m.samples = 50
    assert torch.allclose(m(x), exact, atol=1e-12)
    assert more < few


def test_learned_proposal_has_a_loss_that_only_trains_the_proposal():
    m = layer(integrator="montecarlo", samples=6, proposal="learned", rank=8)
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
        layer(proposal="importance")
    with pytest.raises(ValueError, match="needs mode='softmax'"):
        layer(proposal="learned", mode="linear")
    m = layer(integrator="montecarlo")
    with pytest.raises(ValueError, match="proposal must be one of"):
        m.proposal = "windw"
    with pytest.raises(ValueError, match=r"feature maps \(rank=R\)"):
        m.proposal = "learned"
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        m.samples = 0
    with pytest.raises(ValueError, match=r"window.*self-transform"):
        cross = layer(integrator="montecarlo", proposal="window")
        cross(torch.randn(1, 5, 24, dtype=torch.float64), source=torch.randn(1, 9, 24, dtype=torch.float64))
    causal = layer(integrator="montecarlo", support="causal")
    with pytest.raises(ValueError, match="increases strictly"):
        causal(torch.randn(1, 5, 24, dtype=torch.float64), torch.tensor([[0.0], [2.0], [1.0], [3.0], [4.0]]))


def test_one_setting_switches_every_layer_of_a_model():
    model = torch.nn.Sequential(layer(integrator="montecarlo", samples=4), torch.nn.GELU(),
                                layer(integrator="montecarlo", samples=4, support="causal"))
    x = torch.randn(1, 30, 24, dtype=torch.float64)
    assert configure_integrators(model, integrator="exact") == 2
    exact = model(x)
    configure_integrators(model, integrator="montecarlo", samples=30)
    torch.testing.assert_close(model(x), exact, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="unknown integrator settings"):
        configure_integrators(model, sampels=8)
    with pytest.raises(ValueError, match="samples must be"):
        configure_integrators(model, samples=-1)
