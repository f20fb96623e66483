"""The Triton exact backward kernels ⇄ reference and tiled on every gradient, under the interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py``), and their determinism."""

from __future__ import annotations

import functools

import pytest
import torch

from itnet_scale.ops import KernelSpec, integral_transform_reference
from itnet_scale.ops.tiled import integral_transform_tiled
from itnet_scale.ops.triton import exact_backward, exact_forward, integral_transform_triton

from . import triton_cases
from .triton_cases import SIZES, SUPPORTS, needs_gpu

OUT_TOL, GRAD_TOL = 2e-5, 1e-4  # float32, relative to the expected tensor's scale


pytestmark = pytest.mark.usefixtures("eager_torch_backend")


#: float32 inputs that require grad, ``τ`` one float64 tensor for queries and sources (as the layer passes it).
fp32_inputs = functools.partial(triton_cases.fp32_inputs, requires_grad=True)


def leaves(inp) -> dict[str, torch.Tensor]:
    """The distinct tensors that require grad, by name (``τ`` once, as ``tau_s``)."""
    found: dict[str, torch.Tensor] = {}
    for name, t in zip(inp.names(), inp.tensors()):
        if t is not None and t.requires_grad and all(t is not seen for seen in found.values()):
            found[name] = t
    if "tau_q" in found:
        found["tau_s"] = found.pop("tau_q")
    return found


def run(fn, inp, spec, dout: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = fn(inp, spec)
    wrt = leaves(inp)
    grads = torch.autograd.grad(out, list(wrt.values()), dout, allow_unused=True)
    return out.detach(), {name: torch.zeros_like(t) if g is None else g for (name, t), g in zip(wrt.items(), grads)}


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Relative to the expected tensor's scale; a gradient that vanishes (a softmax over one source has none in
    the score) is held to ``tol × 1e-2`` absolute: float32 noise of its O(1) terms."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-2), msg=lambda m: f"{what}: {m}")


def assert_gradients_match(inp, spec, *, skip_reference: tuple[str, ...] = (), vanishing: tuple[str, ...] = (),
                           **kernel_settings):
    """Output and every gradient of the Triton kernels against the reference and the tiled form; returns the
    kernels' ``(out, grads)``. ``vanishing`` gradients are zero in exact arithmetic and only float32 noise in every
    backend (compared as small, not against each other)."""
    g = torch.Generator().manual_seed(7)
    B, H, Nq, _, e = inp.shape
    dout = torch.randn(B, H, Nq, e, generator=g)
    out, grads = run(lambda i, s: integral_transform_triton(i, s, **kernel_settings), inp, spec, dout)
    for label, fn in (("reference", integral_transform_reference),
                      ("tiled", lambda i, s: integral_transform_tiled(i, s, block_size=(16, 32)))):
        expected_out, expected = run(fn, inp, spec, dout)
        close(out, expected_out, OUT_TOL, f"output against {label}")
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            if name in vanishing:
                assert grad.abs().max() < 1e-5, name
                continue
            if label == "reference" and name in skip_reference:
                continue
            assert grad.dtype == expected[name].dtype and grad.shape == expected[name].shape, name
            close(grad, expected[name], GRAD_TOL, f"d{name} against {label}")
    return out, grads


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize(("Nq", "Ns"), SIZES[:2])
def test_every_mode_support_small(mode, support, Nq, Ns):
    """Every gradient: bilinear term, kernel MLP with its position term, shared source weights, padding, and the
    decay for causal supports at Nq = Ns. d = 5, e = 3, r = 4: every feature dim runs padded and masked. (A softmax
    over one source is 1 whatever its weight: ``dw`` vanishes, as ``(1/w)·`` float32 noise.)"""
    spec = KernelSpec(mode=mode, support=support, support_size=9)
    inp = fp32_inputs(Nq, Ns, spec, decay=spec.causal, weights="shared", padding=Ns > 1)
    assert_gradients_match(inp, spec, vanishing=("weights",) if Ns == 1 and mode == "softmax" else ())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize(("Nq", "Ns"), SIZES[2:])
def test_every_mode_support_large(mode, support, Nq, Ns):
    """As above on several blocks per side (130 = 2 × 64 + 2) and Nq ≠ Ns (decay off there: one sequence)."""
    spec = KernelSpec(mode=mode, support=support, support_size=9)
    inp = fp32_inputs(Nq, Ns, spec, decay=spec.causal and Nq == Ns, weights="shared", padding=True)
    assert_gradients_match(inp, spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_decay_off_and_on(mode):
    spec = KernelSpec(mode=mode, support="causal_window", support_size=20)
    _, plain = assert_gradients_match(fp32_inputs(63, 63, spec, weights="per_head"), spec)
    _, decayed = assert_gradients_match(fp32_inputs(63, 63, spec, weights="per_head", decay=True), spec)
    assert "tau_s" in decayed and "tau_s" not in plain
    assert decayed["tau_s"].dtype == torch.float64 and decayed["tau_s"].abs().sum() > 0
    assert not torch.allclose(plain["v"], decayed["v"])


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu", "relu", "sigmoid", "softplus", "tanh"])
def test_activations_in_r_chunks(activation):
    """Each activation's slope, the kernel MLP in R_CHUNK slices narrower than r (r = 6 in chunks of 4, the last
    one partial), 16 × 16 blocks."""
    spec = KernelSpec(mode="softmax", support="causal", activation=activation)
    inp = fp32_inputs(33, 41, spec, r=6)
    with torch.no_grad():
        inp.a.mul_(2.0)  # pre-activations over ±6: softplus, sigmoid and tanh leave their linear range
        inp.b.mul_(2.0)
    assert_gradients_match(inp, spec, r_chunk=4, block_size=(16, 16))


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", ["window", "radius"])
def test_two_dimensional_positions_and_per_head_weights(mode, support):
    """``dUa`` over two position dims and both positions' gradients; weights per head."""
    spec = KernelSpec(mode=mode, support=support, support_size=2.5)
    assert_gradients_match(fp32_inputs(37, 50, spec, pos_dim=2, weights="per_head"), spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("terms", ["bilinear only", "kernel MLP only", "no position term", "none"])
def test_each_score_term_alone(mode, terms):
    spec = KernelSpec(mode=mode, support="causal")
    inp = fp32_inputs(45, 45, spec, r=0 if terms == "bilinear only" else 4, bilinear=terms != "kernel MLP only"
                      and terms != "none")
    if terms == "no position term":
        inp.pos_weight = None
    if terms == "none":
        inp.a = inp.b = inp.w2 = inp.pos_weight = None
    _, grads = assert_gradients_match(inp, spec)
    assert (grads["pos_q"].abs().sum() > 0) == (inp.pos_weight is not None)  # positions reach s only through Ua


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_fully_masked_rows_and_unseen_sources(mode):
    """Queries far from every source, a batch whose sources are all padding, and sources no query reaches
    (whole source blocks with an empty list): zero gradients there, no NaN, the rest as the reference."""
    spec = KernelSpec(mode=mode, support="window", support_size=3)
    inp = fp32_inputs(63, 130, spec, weights="shared")
    with torch.no_grad():
        inp.pos_q[:, 40:] += 1000.0  # queries 0..39 sit at positions < 90: sources past 93 are out of reach
    inp.padding = torch.zeros(2, 130, dtype=torch.bool)
    inp.padding[1] = True
    _, grads = assert_gradients_match(inp, spec, block_size=(16, 16))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert torch.all(grads["q"][:, :, 40:] == 0) and torch.all(grads["a"][:, :, 40:] == 0)
    assert torch.all(grads["q"][1] == 0) and torch.all(grads["v"][1] == 0)
    assert torch.all(grads["k"][:, :, 100:] == 0) and torch.all(grads["v"][:, :, 100:] == 0)
    assert grads["k"][0, :, :80].abs().sum() > 0


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_zero_weights(mode):
    """Zero weights hide their sources (their ``dw`` still counts); a batch whose every weight is zero sees nothing:
    softmax gives it zero gradients, as the tiled form does (the reference's ``dw`` there is the derivative of its
    0/0 guard, not of the transform, so it is not compared)."""
    spec = KernelSpec(mode=mode, support="causal")
    inp = fp32_inputs(63, 63, spec, weights="shared", decay=True)
    with torch.no_grad():
        inp.weights[:, 1::3] = 0.0
        inp.weights[1] = 0.0
    _, grads = assert_gradients_match(inp, spec, skip_reference=("weights",) if mode == "softmax" else ())
    assert grads["weights"][0, 1::3].abs().sum() > 0
    assert torch.all(grads["q"][1] == 0) and torch.all(grads["v"][1] == 0)
    if mode == "softmax":
        assert torch.all(grads["weights"][1] == 0)
        _, ref_grads = run(integral_transform_reference, inp, spec, torch.ones(2, 2, 63, 3))
        _, got = run(integral_transform_triton, inp, spec, torch.ones(2, 2, 63, 3))
        close(got["weights"][0], ref_grads["weights"][0], GRAD_TOL, "dw of the batch that sees something")


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_two_runs_are_bitwise_equal(mode):
    """No atomics: the partial sums of dβ, dw2, dUa are added by torch in a fixed order."""
    spec = KernelSpec(mode=mode, support="causal", support_size=9)
    inp = fp32_inputs(130, 130, spec, decay=True, weights="per_head", padding=True)
    dout = torch.randn(2, 2, 130, 3)
    first = run(integral_transform_triton, inp, spec, dout)
    second = run(integral_transform_triton, inp, spec, dout)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(first[1][name], second[1][name]) for name in first[1])


def test_exact_backward_names_every_gradient():
    """The function under the autograd one: every differentiable input's gradient, in its dtype and shape."""
    spec = KernelSpec(mode="softmax", support="causal")
    inp = fp32_inputs(20, 20, spec, decay=True, weights="shared", pos_dim=2, requires_grad=False)
    grads = exact_backward(inp, spec, exact_forward(inp, spec), torch.ones(2, 2, 20, 3))
    assert sorted(grads) == sorted(["q", "k", "beta", "v", "a", "b", "pos_weight", "w2", "pos_q", "pos_s", "tau_q",
                                    "tau_s", "weights"])
    for name, g in grads.items():
        t = getattr(inp, name)
        assert g.shape == t.shape and g.dtype == t.dtype, name




def _on_cuda(inp, dtype=None):
    features = ("q", "k", "beta", "v", "a", "b", "pos_weight", "w2", "weights")
    moved = {}
    for name, t in zip(inp.names(), inp.tensors()):
        if t is not None:
            t = t.detach().cuda()
            if dtype is not None and name in features:
                t = t.to(dtype)
            if t.is_floating_point():
                t.requires_grad_()
        moved[name] = t
    if moved["tau_q"] is not None:
        moved["tau_q"] = moved["tau_s"]
    return type(inp)(**moved)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", SUPPORTS)
def test_gpu_gradients_bf16_against_fp32_and_deterministic(mode, support):
    """On a GPU: float32 gradients against the reference's; bfloat16 inputs' gradients within 5e-3 relative RMS
    of float32 on the same (bf16-rounded) numbers; two runs bitwise equal."""
    spec = KernelSpec(mode=mode, support=support, support_size=40)
    base = fp32_inputs(1000, 1000, spec, B=2, H=4, d=64, e=64, r=16, decay=spec.causal, weights="shared",
                       padding=True, requires_grad=False)
    if mode == "linear":  # keep the raw sums O(1)
        with torch.no_grad():
            base.v.mul_(0.05)
    half = _on_cuda(base, torch.bfloat16)
    rounded = _on_cuda(half, torch.float32)
    dout = torch.randn(2, 4, 1000, 64, device="cuda").bfloat16().float()  # the same numbers in both dtypes
    _, fp32 = run(integral_transform_triton, rounded, spec, dout)
    _, ref = run(integral_transform_reference, rounded, spec, dout)
    for name in fp32:  # float32 dots are IEEE in the kernels and in torch (TF32 off by default)
        close(fp32[name], ref[name], 1e-3, f"float32 d{name} on the GPU")
    bf16_out, bf16 = run(integral_transform_triton, half, spec, dout.bfloat16())
    for name, g in bf16.items():
        assert g.dtype == getattr(half, name).dtype
        rms = ((g.float() - fp32[name].float()).square().mean() / fp32[name].float().square().mean()).sqrt().item()
        assert rms < 5e-3, (name, rms)
    again_out, again = run(integral_transform_triton, half, spec, dout.bfloat16())
    assert torch.equal(bf16_out, again_out)
    assert all(torch.equal(bf16[name], again[name]) for name in bf16)
