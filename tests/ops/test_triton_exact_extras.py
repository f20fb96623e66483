"""The Triton exact kernels' extras ⇄ reference and tiled on the output and every gradient, under the interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py``): a bool ``attn_mask`` (2-D and per batch·head), a kernel MLP
with hidden layers, the offset table (lookup forward, scatter of its gradient backward), a float ``attn_mask``
without gradient; and the dispatch that now picks the kernels for them and still refuses what they do not compute."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.ops import Exact, KernelSpec, integral_transform_reference, integrate
from itnet_scale.ops.exact import exact_backend
from itnet_scale.ops.triton import exact_backward, exact_forward, integral_transform_triton, unsupported_features
from itnet_scale.ops.triton.exact_forward import kernel_launch

from .conftest import random_inputs
from .test_triton_exact_backward import assert_gradients_match, fp32_inputs, run

pytestmark = pytest.mark.usefixtures("eager_torch_backend")


def bool_mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.3


# --------------------------------------------------------------------------------------------------------------
# a bool attn_mask
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize(("support", "Nq", "Ns", "per_head"), [
    ("causal", 63, 63, False), ("window", 63, 130, True), ("all", 63, 130, False), ("radius", 63, 63, True)])
def test_bool_attn_mask(mode, support, Nq, Ns, per_head):
    """A random bool mask, ``[Nq, Ns]`` or ``[B, H, Nq, Ns]`` (non-contiguous: a transposed view), with padding,
    source weights and the decay where the support is causal."""
    spec = KernelSpec(mode=mode, support=support, support_size=9)
    inp = fp32_inputs(Nq, Ns, spec, decay=spec.causal, weights="shared", padding=True)
    inp.attn_mask = bool_mask((2, 2, Ns, Nq), 3).transpose(-1, -2) if per_head else bool_mask((Nq, Ns), 3)
    assert_gradients_match(inp, spec)
    unmasked = fp32_inputs(Nq, Ns, spec, decay=spec.causal, weights="shared", padding=True)
    _, plain = run(integral_transform_triton, unmasked, spec, torch.ones(2, 2, Nq, 3))
    _, masked = run(integral_transform_triton, inp, spec, torch.ones(2, 2, Nq, 3))
    assert not torch.allclose(masked["q"], plain["q"])


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_bool_attn_mask_hides_whole_blocks_and_rows(mode):
    """A block-diagonal mask with 16 × 16 blocks takes the hidden blocks off the block lists; rows the mask hides
    entirely get zeros and zero gradients."""
    spec = KernelSpec(mode=mode)
    inp = fp32_inputs(64, 64, spec, weights="per_head")
    block = torch.arange(64) // 16
    inp.attn_mask = block[:, None] == block[None, :]
    inp.attn_mask[5] = False
    launch = kernel_launch(inp, spec, (16, 16), None)
    assert torch.equal(launch.visible, torch.eye(4, dtype=torch.bool))
    out, grads = assert_gradients_match(inp, spec, block_size=(16, 16))
    assert torch.all(out[:, :, 5] == 0) and torch.all(grads["q"][:, :, 5] == 0)


# --------------------------------------------------------------------------------------------------------------
# a kernel MLP with hidden layers
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize(("support", "depth", "activation", "Nq", "Ns"), [
    ("causal", 2, "gelu", 63, 63), ("window", 3, "tanh", 63, 130), ("all", 2, "silu", 63, 130)])
def test_kernel_mlp_with_hidden_layers(mode, support, depth, activation, Nq, Ns):
    """Every gradient, the hidden layers' ``W`` and ``c`` included, with the position term, d = 5, e = 3, r = 4
    (the hidden layers' dots run on r padded to 16 lanes)."""
    spec = KernelSpec(mode=mode, support=support, support_size=9, activation=activation)
    inp = fp32_inputs(Nq, Ns, spec, depth=depth, decay=spec.causal, weights="shared", padding=True)
    _, grads = assert_gradients_match(inp, spec)
    assert grads["mlp_w"].shape == (depth - 1, 2, 4, 4) and grads["mlp_w"].abs().sum() > 0
    assert grads["mlp_c"].abs().sum() > 0


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_kernel_mlp_with_hidden_layers_two_dimensional_positions(mode):
    spec = KernelSpec(mode=mode, support="radius", support_size=2.5, activation="softplus")
    assert_gradients_match(fp32_inputs(37, 50, spec, depth=2, pos_dim=2, weights="per_head", r=6), spec,
                           block_size=(16, 16))


# --------------------------------------------------------------------------------------------------------------
# the offset table
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize(("support", "offset_range", "Nq", "Ns"), [
    ("causal", (7,), 63, 63), ("all", (20,), 63, 130), ("window", (4,), 63, 130)])
def test_offset_table(mode, support, offset_range, Nq, Ns):
    """Lookup and the table's gradient; offsets beyond the table (support ``all``) contribute nothing."""
    spec = KernelSpec(mode=mode, support=support, support_size=9, offset_range=offset_range)
    inp = fp32_inputs(Nq, Ns, spec, table=True, decay=spec.causal, weights="shared", padding=True)
    _, grads = assert_gradients_match(inp, spec)
    reachable = offset_range[0] + 1 if spec.causal else 2 * offset_range[0] + 1  # causal: offsets ≥ 0 only
    assert torch.all((grads["table"] != 0).sum(1) == reachable)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_offset_table_two_dimensional_with_ties_and_hidden_layers(mode):
    """A 2-D table (row-major index), query positions on half-integers (offsets round to even, as ``torch.round``),
    a bool mask and hidden layers together."""
    spec = KernelSpec(mode=mode, support="window", support_size=3.5, offset_range=(2, 3))
    inp = fp32_inputs(37, 50, spec, table=True, pos_dim=2, depth=2, weights="shared", attn_mask="bool")
    with torch.no_grad():
        inp.pos_q[..., 1] += 0.5
    assert_gradients_match(inp, spec, block_size=(16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_extras_two_runs_are_bitwise_equal(mode):
    """The table's and the hidden layers' gradients are per-program partial sums added by torch: no atomics."""
    spec = KernelSpec(mode=mode, support="causal", offset_range=(30,))
    inp = fp32_inputs(100, 100, spec, table=True, depth=2, decay=True, attn_mask="bool")
    dout = torch.randn(2, 2, 100, 3)
    first = run(lambda i, s: integral_transform_triton(i, s, block_size=(16, 32)), inp, spec, dout)
    second = run(lambda i, s: integral_transform_triton(i, s, block_size=(16, 32)), inp, spec, dout)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(first[1][name], second[1][name]) for name in first[1])


def test_exact_backward_names_the_extras_gradients():
    spec = KernelSpec(mode="softmax", support="causal", offset_range=(3,))
    inp = fp32_inputs(20, 20, spec, table=True, depth=3, attn_mask="bool", requires_grad=False)
    grads = exact_backward(inp, spec, exact_forward(inp, spec), torch.ones(2, 2, 20, 3))
    assert {"mlp_w", "mlp_c", "table"} <= grads.keys() and "attn_mask" not in grads
    for name in ("mlp_w", "mlp_c", "table"):
        assert grads[name].shape == getattr(inp, name).shape, name


# --------------------------------------------------------------------------------------------------------------
# a float attn_mask, without gradient
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_head", [False, True])
def test_float_attn_mask_without_gradient(per_head):
    """A score bias (``-inf`` entries hide pairs, a fully hidden row gives zeros); every other input's gradient."""
    spec = KernelSpec(mode="softmax", support="causal")
    inp = fp32_inputs(63, 63, spec, decay=True, weights="shared")
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(*((2, 2) if per_head else ()), 63, 63, generator=g)
    bias[..., 7, :] = float("-inf")
    bias[..., 20:, 3] = float("-inf")
    inp.attn_mask = bias
    out, _ = assert_gradients_match(inp, spec)
    assert torch.all(out[:, :, 7] == 0) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------------------


def test_dispatch_picks_triton_for_the_extras_and_refuses_the_rest(monkeypatch):
    """Forced ``triton`` on the CPU (the interpreter): the extras run the kernels, in training too; a float mask that
    needs its gradient and float64 fall back to ``torch`` by name."""
    monkeypatch.setenv("ITNET_BACKEND", "triton")
    spec = KernelSpec(mode="softmax", support="causal", offset_range=(4,))
    for terms in (dict(attn_mask="bool"), dict(depth=2), dict(table=True)):
        inp = fp32_inputs(24, 24, spec, **terms)
        assert unsupported_features(inp, spec) == [], terms
        assert exact_backend(inp, spec, "auto") == "triton", terms
        out = integrate(inp, spec, Exact()).out
        assert "Triton" in type(out.grad_fn).__name__, terms
        out.sum().backward()
        assert inp.q.grad is not None
    with_bias = fp32_inputs(24, 24, spec, attn_mask="float")
    assert unsupported_features(with_bias, spec) == ["the gradient of a float attn_mask"]
    assert exact_backend(with_bias, spec, "auto") == "torch"
    out = integrate(with_bias, spec, Exact()).out
    assert "Tiled" in type(out.grad_fn).__name__
    out.sum().backward()
    assert with_bias.attn_mask.grad is not None
    with_bias.attn_mask = with_bias.attn_mask.detach()
    assert exact_backend(with_bias, spec, "auto") == "triton"
    double = random_inputs(24, 24, spec=spec, table=True, dtype=torch.float64)
    assert unsupported_features(double, spec) == ["float64"]
    assert exact_backend(double, spec, "auto") == "torch"
    ref = integral_transform_reference(double, spec)
    torch.testing.assert_close(integrate(double, spec, Exact()).out, ref)
