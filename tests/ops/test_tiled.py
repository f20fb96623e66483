"""Tiled ⇄ reference: outputs and every gradient, each mode, support and term, odd sizes."""

from __future__ import annotations

import math

import pytest
import torch

from itnet_scale.ops import Exact, KernelSpec, integrate
from itnet_scale.ops.tiled import default_block

BLOCK = (16, 32)  # small tiles, so odd sizes give partial, masked and skipped tiles


def run(inp, spec, backend, block=BLOCK):
    """Output and gradients of a fixed random projection of it w.r.t. every input that has one."""
    out = integrate(inp, spec, Exact(backend, block)).out
    probe = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = [(n, t) for n, t in zip(inp.names(), inp.tensors()) if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out * probe).sum(), [t for _, t in leaves], allow_unused=True)
    return out, {n: g for (n, _), g in zip(leaves, grads)}


def assert_same(inp, spec, block=BLOCK, tol=1e-10):
    ref, ref_grads = run(inp, spec, "reference")
    out, grads = run(inp, spec, "torch", block)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        g_ref, g = ref_grads[name], grads[name]
        if g_ref is None:
            assert g is None or g.abs().max() == 0, name
            continue
        assert g is not None, f"tiled gave no gradient for {name}"
        torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol, msg=lambda m, n=name: f"grad {n}: {m}")
    return ref


SIZES = [(1, 1), (63, 63), (257, 63), (63, 257)]


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", ["all", "causal", "window", "causal_window"])
@pytest.mark.parametrize(("Nq", "Ns"), SIZES)
def test_all_terms_every_mode_and_support(make_inputs, mode, support, Nq, Ns):
    spec = KernelSpec(mode=mode, support=support, support_size=9, offset_range=(6,))
    decay = spec.causal and Nq == Ns
    inp = make_inputs(Nq, Ns, spec=spec, table=True, decay=decay, weights="shared", padding=Ns > 1)
    assert_same(inp, spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", ["all", "window", "radius"])
def test_two_dimensional_positions(make_inputs, mode, support):
    spec = KernelSpec(mode=mode, support=support, support_size=2.5, offset_range=(3, 2))
    inp = make_inputs(37, 50, spec=spec, pos_dim=2, table=True, weights="per_head")
    assert_same(inp, spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("weights", [None, "shared", "per_head"])
def test_source_weights(make_inputs, mode, weights):
    spec = KernelSpec(mode=mode, support="causal")
    assert_same(make_inputs(45, 45, spec=spec, weights=weights, decay=True), spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_bool_attn_mask(make_inputs, mode):
    spec = KernelSpec(mode=mode)
    assert_same(make_inputs(33, 41, spec=spec, attn_mask="bool", padding=True), spec)


def test_float_attn_mask_is_a_score_bias(make_inputs):
    spec = KernelSpec(mode="softmax")
    assert_same(make_inputs(33, 41, spec=spec, attn_mask="float"), spec)


@pytest.mark.parametrize("activation", ["gelu", "silu", "relu", "sigmoid", "softplus", "tanh", "gelu_tanh"])
def test_kernel_mlp_depth_and_activation(make_inputs, activation):
    spec = KernelSpec(mode="softmax", activation=activation)
    assert_same(make_inputs(29, 35, spec=spec, depth=3, bilinear=False), spec)


@pytest.mark.parametrize("r", [0, 1, 16])
def test_kernel_width(make_inputs, r):
    spec = KernelSpec(mode="linear", support="causal")
    assert_same(make_inputs(40, 40, spec=spec, r=r, decay=True), spec)


def test_fp32_agrees_with_fp64_reference(make_inputs):
    spec = KernelSpec(mode="softmax", support="causal", offset_range=(4,))
    inp64 = make_inputs(129, 129, spec=spec, table=True, decay=True, weights="shared", requires_grad=False)
    ref = integrate(inp64, spec, Exact("reference")).out
    inp32 = type(inp64)(**{n: t.float() if t is not None and t.is_floating_point() else t
                           for n, t in zip(inp64.names(), inp64.tensors())})
    out = integrate(inp32, spec, Exact("torch", BLOCK)).out
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_block_size_does_not_change_the_result(make_inputs):
    spec = KernelSpec(mode="softmax", support="window", support_size=12)
    inp = make_inputs(70, 70, spec=spec, requires_grad=False)
    outs = [integrate(inp, spec, Exact("torch", b)).out for b in [(1, 1), (7, 64), (128, 5)]]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-12, atol=1e-12)


def test_default_tiles_follow_local_supports(make_inputs):
    """Local supports get query blocks of about four half-widths and source blocks of one (merged into one tile per
    query block), so most pairs are skipped, not masked; the result is that of any other tiling."""
    assert default_block(KernelSpec(support="all")) == default_block(KernelSpec(support="causal")) == (256, 256)
    assert default_block(KernelSpec(support="window", support_size=4)) == (64, 16)
    assert default_block(KernelSpec(support="radius", support_size=20)) == (128, 32)
    assert default_block(KernelSpec(support="causal_window", support_size=500)) == (256, 256)
    spec = KernelSpec(mode="softmax", support="window", support_size=3)
    inp = make_inputs(300, 300, spec=spec, requires_grad=False)
    torch.testing.assert_close(integrate(inp, spec, Exact("torch")).out,
                               integrate(inp, spec, Exact("torch", (256, 256))).out,
                               rtol=1e-12, atol=1e-12)


def test_fully_masked_query_gives_zero_and_finite_gradients(make_inputs):
    spec = KernelSpec(mode="softmax", support="causal")
    inp = make_inputs(20, 20, spec=spec)
    inp.pos_q = inp.pos_q - 5.0  # queries 0..4 now precede every source
    ref = assert_same(inp, spec, block=(4, 4))
    assert torch.all(ref[:, :, :5] == 0)
    assert torch.all(ref[:, :, 5:].abs().sum(-1) > 0)
    _, grads = run(inp, spec, "torch", (4, 4))
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


def test_zero_weights_hide_sources(make_inputs):
    spec = KernelSpec(mode="softmax")
    inp = make_inputs(10, 12, spec=spec, weights="shared", requires_grad=False)
    inp.weights[:, 6:] = 0
    full = integrate(inp, spec, Exact("torch", (4, 4))).out
    inp.weights, inp.v, inp.k, inp.b, inp.pos_s = (
        inp.weights[:, :6], inp.v[:, :, :6], inp.k[:, :, :6], inp.b[:, :, :6], inp.pos_s[:, :6])
    torch.testing.assert_close(full, integrate(inp, spec, Exact("torch")).out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_gradcheck_fp64(make_inputs, backend, mode):
    spec = KernelSpec(mode=mode, support="causal", offset_range=(3,))
    inp = make_inputs(6, 6, spec=spec, B=1, H=2, d=2, e=2, r=3, depth=2, table=True, decay=True,
                      weights="per_head")
    names = [n for n, t in zip(inp.names(), inp.tensors()) if t is not None and t.requires_grad]

    def f(*tensors):
        for n, t in zip(names, tensors):
            setattr(inp, n, t)
        inp.tau_q = inp.tau_s  # one decay coordinate, as the layer passes it
        return integrate(inp, spec, Exact(backend, (4, 4))).out

    names.remove("tau_q")
    for n in ("pos_q", "pos_s"):  # the causal mask and the table are steps in the positions: see below
        names.remove(n)
    assert torch.autograd.gradcheck(f, [getattr(inp, n) for n in names], eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gradcheck_positions_fp64(make_inputs, backend):
    """Positions reach the score smoothly only through the kernel MLP's ``Ua (p_i − p_j)``."""
    spec = KernelSpec(mode="softmax")
    inp = make_inputs(5, 7, spec=spec, B=1, H=2, d=2, e=2, r=3, pos_dim=2)

    def f(pos_q, pos_s):
        inp.pos_q, inp.pos_s = pos_q, pos_s
        return integrate(inp, spec, Exact(backend, (2, 3))).out

    pos = [(inp.pos_q + 0.25).detach().requires_grad_(), inp.pos_s.detach().requires_grad_()]
    assert torch.autograd.gradcheck(f, pos, eps=1e-6, atol=1e-7)


def test_softmax_with_bilinear_only_is_attention(make_inputs):
    """r = 0, no table or decay: exactly scaled dot-product attention (the floor)."""
    spec = KernelSpec(mode="softmax", support="causal")
    inp = make_inputs(50, 50, spec=spec, r=0, requires_grad=False)
    inp.beta = torch.ones_like(inp.beta)
    expect = torch.nn.functional.scaled_dot_product_attention(inp.q, inp.k, inp.v, is_causal=True)
    for backend in ("reference", "torch"):
        torch.testing.assert_close(integrate(inp, spec, Exact(backend)).out, expect, rtol=1e-10, atol=1e-10)


def test_linear_mode_is_the_raw_kernel_sum(make_inputs):
    spec = KernelSpec(mode="linear")
    inp = make_inputs(9, 11, spec=spec, r=0, requires_grad=False)
    s = inp.beta[None, :, None, None] * inp.q @ inp.k.transpose(-1, -2) / math.sqrt(inp.q.shape[-1])
    torch.testing.assert_close(integrate(inp, spec, Exact("torch")).out, s @ inp.v)
