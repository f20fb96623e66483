"""The Triton exact forward kernel ⇄ reference and tiled, under the interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` before anything imports the kernels), and the dispatch that chooses it."""

from __future__ import annotations

import functools

import pytest
import torch

from itnet_scale.ops import Exact, KernelSpec, integral_transform_reference, integrate
from itnet_scale.ops.exact import exact_backend
from itnet_scale.ops.spec import decay_log, pair_scores, source_weights, support_mask
from itnet_scale.ops.tiled import integral_transform_tiled
from itnet_scale.ops.triton import exact_forward, interpreting, unsupported_features
from itnet_scale.ops.triton.exact_forward import padded_extent

from . import triton_cases
from .conftest import random_inputs
from .triton_cases import NO_INTERPRETER_ERROR, SIZES, SUPPORTS, needs_gpu, run_without_interpreter

TOL = 2e-5  # float32, relative to the output's scale


pytestmark = pytest.mark.usefixtures("eager_torch_backend")


#: float32 inputs without gradients (what the forward kernel computes), ``τ`` in float64 as the layer keeps it.
fp32_inputs = functools.partial(triton_cases.fp32_inputs, requires_grad=False)


def reference_lse(inp, spec) -> torch.Tensor:
    """``log Σ_j w_j m(i,j) exp(s(i,j))·D(i,j)`` from the spec's terms (−inf where a query sees nothing)."""
    logits = pair_scores(inp, spec).double()
    log_d = decay_log(inp)
    if log_d is not None:
        logits = logits + log_d
    w = source_weights(inp)
    if w is not None:
        logits = logits + w.double().log()
    m = support_mask(inp, spec)
    if m is not None:
        logits = logits.masked_fill(~m, float("-inf"))
    return torch.logsumexp(logits, -1)


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL * max(scale, 1e-6), msg=lambda m: f"{what}: {m}")


def assert_matches(inp, spec, **kernel_settings) -> torch.Tensor:
    """The kernel's output against the reference and the tiled form, and its log-normalizer against the spec's."""
    got = exact_forward(inp, spec, **kernel_settings)
    ref = integral_transform_reference(inp, spec)
    assert got.out.dtype == ref.dtype and got.out.shape == ref.shape
    close(got.out, ref, "against reference")
    close(got.out, integral_transform_tiled(inp, spec, block_size=(16, 32)), "against tiled")
    if spec.mode == "linear":
        assert got.lse is None
        return got.out
    lse = reference_lse(inp, spec).float()
    seen = torch.isfinite(lse)
    assert torch.equal(torch.isinf(got.lse), ~seen), "lse is +inf exactly where a query sees nothing"
    close(got.lse[seen], lse[seen], "log-normalizer")
    return got.out


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize(("Nq", "Ns"), SIZES)
def test_every_mode_support_and_size(mode, support, Nq, Ns):
    """Bilinear term, kernel MLP with its position term, shared source weights, padding, and the decay wherever a
    causal support allows it (queries and sources one sequence: decay on for causal supports at Nq = Ns, off at
    Nq ≠ Ns). d = 5, e = 3, r = 4: every feature dim runs padded and masked."""
    spec = KernelSpec(mode=mode, support=support, support_size=9)
    decay = spec.causal and Nq == Ns
    inp = fp32_inputs(Nq, Ns, spec, decay=decay, weights="shared", padding=Ns > 1)
    assert_matches(inp, spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", ["causal", "causal_window"])
def test_decay_off_and_on(mode, support):
    spec = KernelSpec(mode=mode, support=support, support_size=20)
    plain = assert_matches(fp32_inputs(63, 63, spec, weights="per_head"), spec)
    decayed = assert_matches(fp32_inputs(63, 63, spec, weights="per_head", decay=True), spec)
    assert not torch.allclose(plain, decayed)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("support", ["window", "radius"])
def test_two_dimensional_positions_and_per_head_weights(mode, support):
    spec = KernelSpec(mode=mode, support=support, support_size=2.5)
    assert_matches(fp32_inputs(37, 50, spec, pos_dim=2, weights="per_head"), spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_small_blocks_skip_invisible_tiles(mode):
    """16 × 16 blocks: most source blocks of a causal window are off a query block's list, the rest partly masked."""
    spec = KernelSpec(mode=mode, support="causal_window", support_size=5)
    assert_matches(fp32_inputs(130, 130, spec, decay=True, padding=True), spec, block_size=(16, 16))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu", "relu", "sigmoid", "softplus", "tanh"])
def test_activations_in_r_chunks(activation):
    """The kernel MLP in R_CHUNK slices narrower than r: r = 6 in chunks of 4 (the last one partial)."""
    spec = KernelSpec(mode="softmax", support="causal", activation=activation)
    inp = fp32_inputs(33, 41, spec, r=6)
    inp.a.mul_(2.0)  # pre-activations over ±6: softplus, sigmoid and tanh leave their linear range
    inp.b.mul_(2.0)
    assert_matches(inp, spec, r_chunk=4)


def test_r_chunk_does_not_change_the_result():
    spec = KernelSpec(mode="linear", support="window", support_size=7)
    inp = fp32_inputs(63, 63, spec)
    outs = [assert_matches(inp, spec, r_chunk=chunk) for chunk in (1, 2, 4, 8)]
    for out in outs[1:]:
        close(out, outs[0], "another r_chunk")


@pytest.mark.parametrize(("d", "e", "r"), [(5, 3, 4), (16, 16, 16), (17, 20, 3)])
def test_feature_dims_padded_to_dot_size(d, e, r):
    """d and e are tl.dot dims: padded to a power of two of at least 16 lanes, the extra lanes masked (the
    interpreter would accept smaller dots; a GPU does not)."""
    assert padded_extent(d) == max(16, 1 << (d - 1).bit_length())
    assert padded_extent(e) >= 16 and padded_extent(e) >= e
    spec = KernelSpec(mode="softmax", support="window", support_size=6)
    assert_matches(fp32_inputs(40, 45, spec, d=d, e=e, r=r, weights="shared"), spec)


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
    assert_matches(inp, spec)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_queries_that_see_nothing_get_zeros(mode):
    """Queries far from every source (window support) and a batch whose sources are all padding: zero output,
    ``lse = +inf``; the other queries are untouched."""
    spec = KernelSpec(mode=mode, support="window", support_size=3)
    inp = fp32_inputs(63, 63, spec, weights="shared")
    inp.pos_q = inp.pos_q.clone()
    inp.pos_q[:, 40:] += 1000.0
    inp.padding = torch.zeros(2, 63, dtype=torch.bool)
    inp.padding[1] = True
    out = assert_matches(inp, spec)
    assert torch.all(out[:, :, 40:] == 0) and torch.all(out[1] == 0)
    assert torch.all(out[0, :, :40].abs().sum(-1) > 0)


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_zero_weights(mode):
    """Zero source weights hide their sources; a batch whose every weight is zero sees nothing (softmax: zeros)."""
    spec = KernelSpec(mode=mode, support="causal")
    inp = fp32_inputs(63, 63, spec, weights="shared", decay=True)
    inp.weights[:, 1::3] = 0.0
    inp.weights[1] = 0.0
    out = assert_matches(inp, spec)
    assert torch.all(out[1] == 0)


def test_refuses_what_it_does_not_compute_yet():
    spec = KernelSpec(mode="softmax", support="causal", offset_range=(3,))
    inp = random_inputs(20, 20, spec=spec, depth=2, table=True, attn_mask="float", dtype=torch.float64)
    assert unsupported_features(inp, spec) == ["the gradient of a float attn_mask", "float64"]
    with pytest.raises(NotImplementedError, match=r"do not compute the gradient of a float attn_mask, float64 yet"):
        exact_forward(inp, spec)
    covered = random_inputs(20, 20, spec=spec, depth=2, table=True, attn_mask="bool", dtype=torch.float32)
    assert unsupported_features(covered, spec) == []  # gradients too


def test_refuses_bf16_under_the_interpreter():
    assert interpreting()
    spec = KernelSpec(mode="softmax")
    inp = fp32_inputs(8, 8, spec)
    inp.v = inp.v.bfloat16()
    with pytest.raises(ValueError, match="bfloat16 inputs under Triton's interpreter"):
        exact_forward(inp, spec)
    with pytest.raises(ValueError, match="bfloat16 inputs under Triton's interpreter"):
        integrate(inp, spec, Exact("triton"))


def test_block_sizes_are_powers_of_two():
    spec = KernelSpec(mode="softmax")
    inp = fp32_inputs(8, 8, spec)
    with pytest.raises(ValueError, match="block_size must be a power of two >= 16, got 24"):
        exact_forward(inp, spec, block_size=(24, 16))
    with pytest.raises(ValueError, match="block_size must be a power of two >= 16, got 8"):
        exact_forward(inp, spec, block_size=(16, 8))
    with pytest.raises(ValueError, match="r_chunk must be a power of two >= 1, got 3"):
        exact_forward(inp, spec, r_chunk=3)


def test_dispatch(monkeypatch):
    """``auto`` keeps CPU tensors on ``torch`` even under the interpreter; ``triton`` (asked for or forced by
    ``ITNET_BACKEND``) runs the kernel where it computes the call and ``torch`` where it does not yet."""
    spec = KernelSpec(mode="softmax", support="causal", offset_range=(3,))
    plain = fp32_inputs(30, 30, spec, decay=True)
    with_bias = fp32_inputs(30, 30, spec, attn_mask="float")  # not covered: the float mask's gradient
    with_bias.attn_mask.requires_grad_()
    with_grad = random_inputs(30, 30, spec=spec, dtype=torch.float32)
    assert exact_backend(plain, spec, "auto") == "torch"
    assert exact_backend(plain, spec, "triton") == exact_backend(with_grad, spec, "triton") == "triton"
    assert exact_backend(with_bias, spec, "triton") == "torch"
    assert exact_backend(plain, spec, "reference") == "reference"

    ref = integral_transform_reference(plain, spec)
    close(integrate(plain, spec, Exact("triton")).out, ref, "Exact('triton')")
    out = integrate(with_grad, spec, Exact("triton")).out  # the kernels, forward and backward
    assert out.grad_fn is not None and "Triton" in type(out.grad_fn).__name__
    out.sum().backward()
    assert with_grad.q.grad is not None
    with_bias.q = with_bias.q.clone().requires_grad_()
    out = integrate(with_bias, spec, Exact("triton")).out  # falls back to torch: gradients flow there too
    assert "Tiled" in type(out.grad_fn).__name__
    out.sum().backward()
    assert with_bias.q.grad is not None

    monkeypatch.setenv("ITNET_BACKEND", "triton")
    assert exact_backend(plain, spec, "reference") == "triton"
    close(integrate(plain, spec, Exact("torch")).out, ref, "ITNET_BACKEND=triton")
    monkeypatch.setenv("ITNET_BACKEND", "reference")
    assert exact_backend(plain, spec, "triton") == "reference"
    monkeypatch.setenv("ITNET_BACKEND", "auto")
    assert exact_backend(plain, spec, "triton") == "torch"
    monkeypatch.setenv("ITNET_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"ITNET_BACKEND='cuda': backend must be one of \('auto', 'reference', "
                                         r"'torch', 'triton'\)"):
        integrate(plain, spec, Exact())
    monkeypatch.setenv("ITNET_BACKEND", "tiled")
    with pytest.raises(ValueError, match=r"ITNET_BACKEND='tiled': backend='tiled' is now called 'torch'"):
        exact_backend(plain, spec, "auto")


def test_triton_on_cpu_without_the_interpreter_is_an_error():
    """A fresh interpreter with TRITON_INTERPRET=0: the kernels are compiled-only, and CPU tensors cannot run them."""
    script = (
        "import torch\n"
        "from itnet_scale.ops import Exact, KernelInputs, KernelSpec, integrate\n"
        "pos = torch.arange(4.0)[None, :, None]\n"
        "inp = KernelInputs(v=torch.randn(1, 1, 4, 2), pos_q=pos, pos_s=pos)\n"
        "for backend in ('auto', 'torch'):\n"
        "    integrate(inp, KernelSpec(), Exact(backend))\n"
        "integrate(inp, KernelSpec(), Exact('triton'))\n"
    )
    done = run_without_interpreter(script)
    assert done.returncode != 0 and NO_INTERPRETER_ERROR in done.stderr



@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("support", SUPPORTS)
def test_gpu_bf16_against_fp32(support):
    """On a GPU: bfloat16 inputs (upcast after loading) within 5e-3 relative RMS of float32; float32 against the
    reference; ``auto`` picks the kernels for CUDA tensors they cover (with gradients too), ``torch`` for the rest.
    (The backward's GPU checks: ``test_triton_exact_backward.py``.)"""
    spec = KernelSpec(mode="softmax", support=support, support_size=40)
    inp = fp32_inputs(1000, 1000, spec, B=2, H=4, d=64, e=64, r=16, decay=spec.causal, weights="shared",
                      padding=True)
    inp = type(inp)(**{n: None if t is None else t.cuda() for n, t in zip(inp.names(), inp.tensors())})
    assert exact_backend(inp, spec, "auto") == "triton"
    close(exact_forward(inp, spec).out, integral_transform_reference(inp, spec), "float32 on the GPU")
    features = ("q", "k", "beta", "v", "a", "b", "pos_weight", "w2", "weights")
    half = type(inp)(**{n: t.bfloat16() if n in features and t is not None else t
                        for n, t in zip(inp.names(), inp.tensors())})
    rounded = type(inp)(**{n: t.float() if n in features and t is not None else t
                           for n, t in zip(half.names(), half.tensors())})
    fp32 = exact_forward(rounded, spec).out  # the same (bf16-rounded) numbers in float32
    bf16 = exact_forward(half, spec).out
    assert bf16.dtype == torch.bfloat16
    rms = ((bf16.float() - fp32).square().mean() / fp32.square().mean()).sqrt().item()
    assert rms < 5e-3, rms
    inp.q.requires_grad_()
    assert exact_backend(inp, spec, "auto") == "triton"  # training too
    inp.attn_mask = torch.zeros(1000, 1000, device="cuda", requires_grad=True)  # a float mask's gradient: not covered
    assert exact_backend(inp, spec, "auto") == "torch"
