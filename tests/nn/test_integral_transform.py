"""The IntegralTransform layer: options, backends agree, positions get gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.nn.integral_transform import locality_offsets
from itnet_scale.ops import Exact

OPTIONS = [
    dict(mode="softmax", support="all"),
    dict(mode="softmax", support="causal", decay=True, offset_range=8),
    dict(mode="linear", support="causal", decay=True, depth=2),
    dict(mode="softmax", support="window", support_size=4.0, width=0),
    dict(mode="linear", support="causal_window", support_size=6.0, bilinear=False, offset_range=6),
]
BACKENDS = {"reference": Exact("reference"), "torch": Exact("torch", block_size=(8, 16))}


def layer(**kernel) -> IntegralTransform:
    return IntegralTransform(24, 3, KernelConfig(**kernel), BACKENDS["torch"]).double()


def output_and_grads(m, x, pos, **kw):
    y = m(x, pos, **kw)
    probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    leaves = [x, pos, *m.parameters()]
    return y, torch.autograd.grad((y * probe).sum(), leaves, allow_unused=True)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_backends_agree_on_outputs_and_all_gradients(options):
    m = layer(**options)
    x = torch.randn(2, 37, 24, dtype=torch.float64, requires_grad=True)
    pos = (torch.arange(37, dtype=torch.float64)[:, None] * 1.0).requires_grad_()
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[0, -4:] = True
    results = {}
    for backend, integrator in BACKENDS.items():
        m.integrator = integrator
        results[backend] = output_and_grads(m, x, pos, padding_mask=pad)
    (y_ref, g_ref), (y, g) = results["reference"], results["torch"]
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if m.kernel.width:
        assert g_ref[1].abs().sum() > 0, "positions must receive gradients through the kernel MLP"


def test_cross_transform_with_per_head_weights_and_2d_positions():
    m = IntegralTransform(16, 2, KernelConfig(offset_range=(2, 2), support="radius", support_size=3.0),
                          source_dim=12, out_dim=10, pos_dim=2, value_dim=5).double()
    x, src = torch.randn(3, 9, 16, dtype=torch.float64), torch.randn(3, 20, 12, dtype=torch.float64)
    pq, ps = torch.rand(3, 9, 2, dtype=torch.float64) * 6, torch.rand(3, 20, 2, dtype=torch.float64) * 6
    w = torch.rand(3, 20, 2, dtype=torch.float64)
    outs = []
    for integrator in BACKENDS.values():
        m.integrator = integrator
        outs.append(m(x, pq, source=src, source_pos=ps, weights=w))
    assert outs[0].shape == (3, 9, 10)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)


def test_positions_default_to_indices_and_broadcast_over_batch():
    m = layer(support="causal")
    x = torch.randn(2, 11, 24, dtype=torch.float64)
    idx = torch.arange(11, dtype=torch.float64)[:, None]
    torch.testing.assert_close(m(x), m(x, idx))
    torch.testing.assert_close(m(x), m(x, idx.expand(2, 11, 1)))


def test_causal_output_ignores_the_future():
    m = layer(support="causal", decay=True)
    x = torch.randn(1, 20, 24, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(1, 8, 24, dtype=torch.float64)
    torch.testing.assert_close(m(x2)[:, :12], y[:, :12])


def test_fully_masked_query_returns_the_output_bias_only():
    m = layer()
    x = torch.randn(1, 6, 24, dtype=torch.float64)
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[2] = False
    for integrator in BACKENDS.values():
        m.integrator = integrator
        y = m(x, attn_mask=mask)
        torch.testing.assert_close(y[0, 2], m.o_proj.bias)


def test_kernel_matrix_rows_are_distributions_in_softmax_mode():
    m = layer(support="causal")
    K = m.kernel_matrix(torch.randn(2, 9, 24, dtype=torch.float64))
    assert K.shape == (2, 3, 9, 9)
    torch.testing.assert_close(K.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64))
    assert torch.all(K.triu(1) == 0)


def test_integrator_and_backend_are_switchable_and_checked():
    m = layer()
    m.integrator = Exact("reference")
    assert m.integrator.backend == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        Exact("cuda-magic")
    with pytest.raises(ValueError, match=r"backend='tiled' is now called 'torch'"):
        Exact("tiled")
    with pytest.raises(TypeError, match=r"integrator must be Exact\(...\), LowRank\(...\) or MonteCarlo"):
        m.integrator = "quadrature"
    assert m.integrator == Exact("reference")  # a refused assignment changes nothing


# -- bad input --------------------------------------------------------------------------

BAD_CALLS = [
    ("x must be", lambda m: m(torch.randn(2, 5, 23, dtype=torch.float64))),
    ("x must be", lambda m: m(torch.randn(5, 24, dtype=torch.float64))),
    ("pos must be", lambda m: m(torch.randn(2, 5, 24, dtype=torch.float64), torch.zeros(2, 4, 1))),
    ("pos must be", lambda m: m(torch.randn(2, 5, 24, dtype=torch.float64), torch.zeros(2, 5, 2))),
    ("pos contains NaN", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64),
                                     torch.tensor([[0.0], [float("nan")], [2.0]]))),
    ("source_pos must be", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64), None,
                                       source=torch.randn(1, 4, 24, dtype=torch.float64),
                                       source_pos=torch.zeros(1, 4, 3))),
    ("source has batch", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64), None,
                                     source=torch.randn(2, 4, 24, dtype=torch.float64))),
    ("source set is empty", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64), None,
                                        source=torch.randn(1, 0, 24, dtype=torch.float64),
                                        source_pos=torch.zeros(1, 0, 1))),
    ("source_pos was given without source", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64),
                                                        source_pos=torch.zeros(1, 3, 1))),
    ("weights must be", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64), weights=torch.ones(1, 4))),
    ("weights must be non-negative", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64),
                                                 weights=-torch.ones(1, 3))),
    ("padding_mask must be", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64),
                                         padding_mask=torch.zeros(1, 3))),
    ("attn_mask must be", lambda m: m(torch.randn(1, 3, 24, dtype=torch.float64),
                                      attn_mask=torch.ones(3, 4, dtype=torch.bool))),
]


@pytest.mark.parametrize(("message", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bad_input_names_the_argument(message, call, backend):
    m = layer()
    m.integrator = BACKENDS[backend]
    with pytest.raises(ValueError, match=message):
        call(m)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mode="cosine"), "mode"),
    (dict(support="everywhere"), "support"),
    (dict(support="window"), "support_size"),
    (dict(decay=True), "decay=True needs a causal support"),
    (dict(activation="swish"), "activation"),
    (dict(width=-1), "kernel width"),
    (dict(depth=0), "depth"),
    (dict(rank=0), "rank"),
    (dict(feature_map="random"), "feature_map"),
    (dict(decay=True, support="causal", decay_activation="exp"), "decay_activation"),
    (dict(locality=-1.0), "locality must be >= 0"),
    (dict(locality=1.0, activation="gelu"), "locality prior"),
    (dict(locality=1.0, width=0), "locality prior"),
])
def test_bad_configuration_names_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KernelConfig(**kwargs)


def test_locality_prior_starts_each_head_as_a_tent_around_its_own_neighbour():
    """With the prior on every unit (width = 2·pos_dim, no bilinear term) the kernel is exactly
    softmax_j(−α‖(p_i − p_j) − Δ_h‖₁), whatever the content; the four heads of a 2-D layer peak on the four
    grid neighbours, and extra units with random weights leave the peaks there."""
    torch.manual_seed(0)
    alpha, side = 3.0, 5
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([r, c], -1).flatten(0, 1).double()                                        # [25, 2]
    x = torch.randn(2, side * side, 16, dtype=torch.double)
    centers = locality_offsets(4, 2).double()
    e = pos[:, None, :] - pos[None, :, :]
    expected = torch.softmax(-alpha * (e[None] - centers[:, None, None, :]).abs().sum(-1), dim=-1)
    for depth in (1, 3):  # hidden layers carry the tent's units through unchanged
        exact = IntegralTransform(16, 4, KernelConfig(width=4, depth=depth, bilinear=False, locality=alpha),
                                  pos_dim=2).double()
        torch.testing.assert_close(exact.kernel_matrix(x, pos), expected.expand(2, -1, -1, -1))  # [2, 4, 25, 25]
    assert {tuple(v) for v in centers.tolist()} == {(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)}

    center = 2 * side + 2
    neighbours = [int(((pos == pos[center] - d).all(-1)).nonzero()) for d in centers]
    for depth in (1, 2):
        mixed = IntegralTransform(16, 4, KernelConfig(width=8, depth=depth, locality=alpha), pos_dim=2).double()
        peaks = mixed.kernel_matrix(x, pos)[:, :, center].argmax(-1)                            # [2, 4]
        assert peaks.tolist() == [neighbours, neighbours]


def test_locality_offsets_put_sequence_heads_on_the_previous_token_itself_and_the_next():
    assert locality_offsets(4, 3)[:, 0].tolist() == [1.0, 0.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="kernel width >= 6"):
        IntegralTransform(16, 4, KernelConfig(width=4, locality=1.0), pos_dim=3)


def test_offset_range_needs_one_entry_per_position_dim():
    with pytest.raises(ValueError, match=r"offset_range needs one entry per position dim \(1\)"):
        IntegralTransform(24, 3, KernelConfig(offset_range=(2, 2)))
    layer2d = IntegralTransform(24, 3, KernelConfig(offset_range=2), pos_dim=2)  # one int: every dim
    assert layer2d.spec.offset_range == (2, 2) and layer2d.table.shape == (3, 25)


def test_settings_are_typed_values():
    with pytest.raises(TypeError, match="kernel must be a KernelConfig"):
        IntegralTransform(24, 3, {"mode": "linear"})


def test_heads_must_divide_dim_unless_head_dim_given():
    with pytest.raises(ValueError, match="not divisible"):
        IntegralTransform(10, 3)
    assert IntegralTransform(10, 3, head_dim=4).q_proj.out_features == 12


def test_decay_refuses_cross_transforms():
    m = layer(support="causal", decay=True)
    with pytest.raises(ValueError, match="self-transforms"):
        m(torch.randn(1, 3, 24, dtype=torch.float64), source=torch.randn(1, 3, 24, dtype=torch.float64),
          source_pos=torch.zeros(1, 3, 1))


def test_linear_mode_refuses_float_masks():
    m = layer(mode="linear")
    with pytest.raises(ValueError, match="float attn_mask"):
        m(torch.randn(1, 3, 24, dtype=torch.float64), attn_mask=torch.zeros(3, 3, dtype=torch.float64))


def test_decay_stays_exact_in_fp32_when_tau_grows_large():
    """Long sequences in fp32: τ (a running sum, ~10³ here) and the positions (up to 2000) enter
    only through differences: τ_i − τ_j exactly (fp64 τ), positions relative to each tile's first
    query, so the rounding is that of offsets within a tile, not of positions far into the sequence
    (the error does not grow with N: ~4e-6 at N = 500, 2000 and 8000)."""
    m = IntegralTransform(8, 2, KernelConfig(mode="linear", support="causal", decay=True, width=4)).double()
    with torch.no_grad():
        m.decay_proj.bias.fill_(0.5)  # increments ~ softplus(0.5 + noise) ≈ 1: neighbours still matter
    x = torch.randn(1, 2000, 8, dtype=torch.float64) * 0.1
    ref = m(x)
    assert m.kernel_inputs(x).tau_s.max() > 1e3
    out = m.float()(x.float())
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5
