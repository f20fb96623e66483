"""The layer's lowrank integrator: switching, streaming, segments, backends, padding and weights, exactness
where the kernel is constant, and the errors for what it cannot integrate. (The feature maps themselves:
``test_feature_map.py``.)"""

from __future__ import annotations

import pytest
import torch

import itnet_scale.ops.lowrank.integrator as lowrank_integrator
from itnet_scale.nn import FeatureMap, IntegralTransform, KernelConfig
from itnet_scale.nn.integral_transform import DEFAULT_RANK
from itnet_scale.ops import Exact, LowRank

DIM, HEADS = 24, 3


def layer(integrator=None, *, source_dim=None, **kernel) -> IntegralTransform:
    torch.manual_seed(0)
    return IntegralTransform(DIM, HEADS, KernelConfig(**kernel), integrator, source_dim=source_dim).double()


def x_of(N: int = 37, B: int = 2) -> torch.Tensor:
    return torch.randn(B, N, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(N))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_switching_integrators_keeps_the_exact_parameters_and_output():
    m = layer(support="causal", decay=True, rank=16)
    x = x_of()
    before = {n: p.clone() for n, p in m.named_parameters()}
    exact = m(x)
    m.integrator = LowRank()
    approx = m(x)
    approx.sum().backward()  # a lowrank training step's backward must not touch the parameters
    assert (approx - exact).abs().max() > 1e-3  # the two integrators really differ here
    m.integrator = Exact()
    close(m(x), exact, 0)
    m.integrator = LowRank()
    close(m(x), approx, 0)
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())
    assert {n for n, _ in m.named_parameters()} == set(before)


def test_lowrank_needs_feature_maps():
    m = layer()
    assert m.features is None
    with pytest.raises(ValueError, match=r"the lowrank integrator needs feature maps.*KernelConfig\(rank=R\)"):
        m.integrator = LowRank()
    assert m.integrator == Exact()
    # documented: a LowRank integrator at construction without a rank builds R = DEFAULT_RANK features
    built = layer(LowRank())
    assert built.features.rank == built.kernel.rank == DEFAULT_RANK  # the kernel setting says what the layer holds


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_streaming_one_position_at_a_time_equals_the_whole_sequence(mode):
    """Each step gets its absolute position (the kernel MLP reads ``Ua p``) and the state of the last."""
    m = layer(LowRank(), mode=mode, support="causal", decay=True, rank=8, offset_range=2)
    N = 30
    x = x_of(N)
    pos = torch.arange(N, dtype=torch.float64)[:, None] * 1.5 + 3
    w = torch.rand(2, N, dtype=torch.float64) + 0.1
    whole, final = m(x, pos, weights=w, return_state=True)
    assert final.shape == (2, HEADS, 8, 8 + (mode == "softmax"))
    state, outs = None, []
    for t in range(N):
        y, state = m(x[:, t:t + 1], pos[t:t + 1], weights=w[:, t:t + 1], initial_state=state, return_state=True)
        outs.append(y)
    close(torch.cat(outs, 1), whole)
    close(state, final)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_a_prompt_then_uneven_pieces_equal_the_whole_sequence(mode):
    """Pieces of 17, 1, 9 and 13 positions (the chunked scan, the one-step path) with padding carried per piece."""
    m = layer(LowRank(chunk_size=8), mode=mode, support="causal", decay=True, rank=8)
    N = 40
    x = x_of(N)
    pos = torch.arange(N, dtype=torch.float64)[:, None]
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[0, 5:9] = True
    whole, final = m(x, pos, padding_mask=pad, return_state=True)
    state, outs, start = None, [], 0
    for size in (17, 1, 9, 13):
        sl = slice(start, start + size)
        y, state = m(x[:, sl], pos[sl], padding_mask=pad[:, sl], initial_state=state, return_state=True)
        outs.append(y)
        start += size
    close(torch.cat(outs, 1), whole)
    close(state, final)


@pytest.mark.parametrize("per_head", [False, True], ids=["shared-weights", "per-head-weights"])
def test_long_sequences_in_segments_give_the_same_outputs_state_and_gradients(monkeypatch, per_head):
    """A causal pass longer than ``SEGMENT`` runs in segments (features computed per segment), with padding,
    weights, explicit positions, ``τ`` and an initial state cut along with it."""
    m = layer(LowRank(chunk_size=16), support="causal", decay=True, rank=8)
    N = 100
    x = x_of(N).requires_grad_(True)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, -7:] = True
    pos = torch.arange(N, dtype=torch.float64)[:, None] * 0.5
    w = torch.rand(2, N, HEADS, dtype=torch.float64) + 0.1 if per_head else torch.linspace(0.1, 1, N).expand(2, N)
    s0 = torch.rand(2, HEADS, 8, DIM // HEADS + 1, dtype=torch.float64)

    def run():
        y, s = m(x, pos, padding_mask=pad, weights=w, initial_state=s0, return_state=True)
        return y, s, torch.autograd.grad(y.square().sum() + s.sum(), [x, *m.parameters()], allow_unused=True)

    y1, s1, g1 = run()
    monkeypatch.setattr(lowrank_integrator, "SEGMENT", 33)
    calls = []
    monkeypatch.setattr(m.features, "forward", lambda inp, **k: calls.append(inp.v.shape[2]) or
                        FeatureMap.forward(m.features, inp, **k))
    y2, s2, g2 = run()
    assert calls == [33, 33, 33, 1]  # really in segments, the features too
    close(y2, y1)
    close(s2, s1)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            close(b, a, 1e-9)


def test_long_sequences_check_their_inputs_whole(monkeypatch):
    """Errors name the whole sequence's sizes, and an order break at a piece boundary is caught."""
    monkeypatch.setattr(lowrank_integrator, "SEGMENT", 8)
    m = layer(LowRank(), support="causal", decay=True, rank=8)
    x = x_of(20)
    with pytest.raises(ValueError, match=r"weights must be \[batch=2, sources=20\]"):
        m(x, weights=torch.ones(2, 21, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"padding_mask must be bool \[batch=2, sources=20\]"):
        m(x, padding_mask=torch.zeros(2, 19, dtype=torch.bool))
    pos = torch.arange(20, dtype=torch.float64)[:, None]
    pos[8] = 3.0  # falls back exactly where the second piece starts
    with pytest.raises(ValueError, match="sequence order"):
        m(x, pos)


@pytest.mark.parametrize(("mode", "support", "decay"), [("softmax", "all", False), ("softmax", "causal", True),
                                                        ("linear", "causal", True)])
def test_reference_and_default_lowrank_backends_agree_on_outputs_and_all_gradients(mode, support, decay):
    """``backend='reference'`` (φψᵀ materialized) against the default chunked scan, with padding, per-head
    weights, a deep kernel MLP and (causal) an initial state; every parameter's gradient."""
    m = layer(LowRank(chunk_size=16), mode=mode, support=support, decay=decay, rank=8, depth=2)
    assert m.integrator.backend == "auto"
    N = 45
    x = x_of(N).requires_grad_(True)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, 30:] = True
    w = torch.rand(2, N, HEADS, dtype=torch.float64) + 0.1
    causal = support == "causal"
    s0 = torch.rand(2, HEADS, 8, 8 + (mode == "softmax"), dtype=torch.float64, requires_grad=True) if causal else None
    results = []
    for backend in ("reference", "auto"):
        m.integrator = LowRank(chunk_size=16, backend=backend)
        y, state = m(x, padding_mask=pad, weights=w, initial_state=s0, return_state=True)
        loss = y.square().sum() + (state.sum() if causal else 0)
        wrt = [x, *m.parameters()] + ([s0] if causal else [])
        results.append((y, state, torch.autograd.grad(loss, wrt, allow_unused=True)))
    (y_ref, s_ref, g_ref), (y, s, g) = results
    close(y, y_ref)
    if causal:
        close(s, s_ref)
    assert sum(a is not None for a in g_ref) > 10  # features, projections, kernel MLP, decay: all reached
    assert g_ref[0].abs().sum() > 0
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b, 1e-9)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_padded_sources_are_the_same_as_absent_sources(mode):
    """A cross-transform over all sources: padding sources (and giving them zero weight) equals dropping them."""
    m = layer(LowRank(), mode=mode, source_dim=16, rank=8)
    x = x_of(7)
    src = torch.randn(2, 12, 16, dtype=torch.float64)
    src_pos = torch.arange(12, dtype=torch.float64)[:, None] * 0.7
    keep = torch.tensor([0, 1, 3, 4, 5, 8, 9, 11])
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[:, keep] = False
    w = torch.rand(2, 12, dtype=torch.float64) + 0.5
    dropped = m(x, source=src[:, keep], source_pos=src_pos[keep], weights=w[:, keep])
    close(m(x, source=src, source_pos=src_pos, weights=w, padding_mask=pad), dropped)
    close(m(x, source=src, source_pos=src_pos, weights=w * (~pad)), dropped)
    assert (m(x, source=src, source_pos=src_pos, weights=w) - dropped).abs().max() > 1e-3


def test_weights_per_head_and_shared_weights_agree():
    m = layer(LowRank(), support="causal", decay=True, rank=8)
    x = x_of(20)
    w = torch.rand(2, 20, dtype=torch.float64)
    close(m(x, weights=w[..., None].expand(2, 20, HEADS)), m(x, weights=w))
    per_head = w[..., None].repeat(1, 1, HEADS)
    per_head[..., 1] = 1.0  # head 1 unweighted: its output channels differ, the other heads' do not
    y_w, y_h = m(x, weights=w), m(x, weights=per_head)
    assert (y_w - y_h).abs().max() > 1e-4
    inner = {}

    def grab(_mod, args, _out):
        inner["o"] = args[0]

    hook = m.o_proj.register_forward_hook(grab)
    m(x, weights=w)
    a = inner["o"].unflatten(-1, (HEADS, -1))
    m(x, weights=per_head)
    b = inner["o"].unflatten(-1, (HEADS, -1))
    hook.remove()
    close(a[:, :, [0, 2]], b[:, :, [0, 2]])
    assert (a[:, :, 1] - b[:, :, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("feature_map", ["prf", "learned"])
def test_a_constant_softmax_kernel_is_rank_one_for_every_feature_map(feature_map):
    """No bilinear term, no kernel MLP, a zero offset table: ``s ≡ 0`` and φ·ψ is constant — the normalizer,
    decay, weights and padding paths must then match the exact layer, also when streamed."""
    m = layer(mode="softmax", support="causal", decay=True, bilinear=False, width=0, offset_range=3,
              rank=4, feature_map=feature_map)
    N = 37
    x = x_of(N)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, -5:] = True
    pad[0, :2] = True  # rows 0-1 of batch 0 see nothing: both integrators give 0 there
    w = torch.rand(2, N, HEADS, dtype=torch.float64)
    exact = m(x, padding_mask=pad, weights=w)
    m.integrator = LowRank()
    close(m(x, padding_mask=pad, weights=w), exact)
    state, outs = None, []
    for t in range(N):
        y, state = m(x[:, t:t + 1], torch.tensor([[float(t)]], dtype=torch.float64), weights=w[:, t:t + 1],
                     padding_mask=pad[:, t:t + 1], initial_state=state, return_state=True)
        outs.append(y)
    close(torch.cat(outs, 1), exact)


def test_what_lowrank_cannot_integrate_is_refused_clearly():
    x = x_of(6)
    for support in ("window", "radius", "causal_window"):
        with pytest.raises(ValueError, match=rf"support 'all' or 'causal', got '{support}'"):
            layer(LowRank(), support=support, support_size=2.0)(x)
    with pytest.raises(ValueError, match="takes no attn_mask"):
        layer(LowRank())(x, attn_mask=torch.ones(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="takes no attn_mask"):
        layer(LowRank())(x, attn_mask=torch.zeros(6, 6, dtype=torch.float64))
    unsorted = torch.tensor([[0.0], [1.0], [3.0], [2.0], [4.0], [5.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="first coordinate increases strictly"):
        layer(LowRank(), support="causal")(x, unsorted)
    layer(LowRank())(x, unsorted)  # without causality the order does not matter
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 3, 4, 9\]"):
        layer(LowRank(), support="causal", rank=4)(x, initial_state=torch.zeros(2, 3, 5, 9))
    with pytest.raises(ValueError, match="initial_state needs the lowrank integrator with a causal support, not "
                                         "lowrank with support 'all'"):
        layer(LowRank(), rank=4)(x, initial_state=torch.zeros(2, 3, 4, 9))
    with pytest.raises(ValueError, match="return_state needs the lowrank integrator"):
        layer(support="causal")(x, return_state=True)
    with pytest.raises(ValueError, match="initial_state needs the lowrank integrator with a causal support"):
        layer(support="causal")(x, initial_state=torch.zeros(2, 3, 4, 9))
