"""The Triton causal low-rank scan ⇄ naive, chunk and recurrent on the output, the final state and every gradient
(the initial state's too), under the interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``); its
determinism, its refusals and the dispatch that chooses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itnet_scale.ops import KernelSpec, LowRank, integrate
from itnet_scale.ops.lowrank import (
    LowRankInputs,
    lowrank_backend,
    lowrank_chunk,
    lowrank_naive,
    lowrank_recurrent,
)
from itnet_scale.ops.lowrank.spec import sources
from itnet_scale.ops.triton import causal_scan_triton, kernel_chunk

from .conftest import random_inputs
from .triton_cases import NO_INTERPRETER_ERROR, needs_gpu, run_without_interpreter

B, H, R, E = 2, 2, 5, 3  # R and E run padded to 16 lanes
OUT_TOL, GRAD_TOL = 2e-5, 1e-4  # float32, relative to the expected tensor's scale
NAMES = ("phi", "psi", "v", "weights", "tau", "initial_state")


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("ITNET_BACKEND", raising=False)


def make(N: int, *, decay: bool, state: bool, normalize: bool, e: int = E, rank: int = R, rate: float = 0.3,
         batch: int = B, heads: int = H) -> tuple[LowRankInputs, torch.Tensor | None]:
    """float32 leaves: positive features, values, weights (every 5th zero: padding; position 0 among them, so a
    first query without initial state sees nothing), ``τ`` a float64 cumsum of U(0, rate), a positive initial
    state."""
    g = torch.Generator().manual_seed(N + 100 * decay + 10 * state)

    def rnd(*shape: int, positive: bool = False) -> torch.Tensor:
        t = torch.rand(*shape, generator=g) if positive else torch.randn(*shape, generator=g)
        return t.requires_grad_(True)

    w = torch.rand(batch, heads, N, generator=g) + 0.1
    w[:, :, ::5] = 0.0
    tau = None
    if decay:
        tau = torch.cumsum(torch.rand(batch, heads, N, generator=g, dtype=torch.float64) * rate, -1)
        tau.requires_grad_(True)
    inp = LowRankInputs(rnd(batch, heads, N, rank, positive=True), rnd(batch, heads, N, rank, positive=True),
                        rnd(batch, heads, N, e), w.requires_grad_(True), tau)
    s0 = rnd(batch, heads, rank, e + normalize, positive=True) if state else None
    return inp, s0


def in_float64(inp: LowRankInputs, s0: torch.Tensor | None) -> tuple[LowRankInputs, torch.Tensor | None]:
    """The same numbers in float64, fresh leaves (the references run there: their error is not compared)."""
    def up(t):
        return None if t is None else t.detach().double().requires_grad_(True)
    return LowRankInputs(up(inp.phi), up(inp.psi), up(inp.v), up(inp.weights), up(inp.tau)), up(s0)


def probe_like(t: torch.Tensor) -> torch.Tensor:
    """A fixed, non-constant cotangent (a plain ``sum`` would hide errors that cancel)."""
    return torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)


def run(fn, inp: LowRankInputs, s0: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Output, final state and the gradient of every present leaf, by name."""
    out, final = fn(inp, s0)
    loss = (out * probe_like(out)).sum() + (final * probe_like(final)).sum()
    leaves = {n: t for n, t in zip(NAMES, (inp.phi, inp.psi, inp.v, inp.weights, inp.tau, s0)) if t is not None}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"out": out.detach(), "final": final.detach(), **{f"d{n}": g for n, g in zip(leaves, grads)}}


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * max(scale, 1e-6),
                               msg=lambda m: f"{what}: {m}")


def assert_matches(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    assert got.keys() == expected.keys()
    for name, value in got.items():
        close(value, expected[name], OUT_TOL if name in ("out", "final") else GRAD_TOL, f"{name} against {label}")


def triton_form(chunk_size: int = 16, normalize: bool = True):
    return lambda inp, s0: lowrank_chunk(inp, causal=True, normalize=normalize, initial_state=s0,
                                         chunk_size=chunk_size, scan="triton")


REFERENCES = {
    "naive": lambda n: lambda inp, s0: lowrank_naive(inp, causal=True, normalize=n, initial_state=s0),
    "chunk": lambda n: lambda inp, s0: lowrank_chunk(inp, causal=True, normalize=n, initial_state=s0, chunk_size=16),
    "recurrent": lambda n: lambda inp, s0: lowrank_recurrent(inp, normalize=n, initial_state=s0),
}


def check_against_references(N: int, *, decay: bool, state: bool, normalize: bool) -> dict[str, torch.Tensor]:
    inp, s0 = make(N, decay=decay, state=state, normalize=normalize)
    got = run(triton_form(16, normalize), inp, s0)
    assert got["out"].dtype == torch.float32 and got["out"].shape == (B, H, N, E)
    assert got["final"].shape == (B, H, R, E + normalize)
    assert ("dtau" in got) == decay and ("dinitial_state" in got) == state
    if decay:
        assert got["dtau"].dtype == torch.float64
    for label, form in REFERENCES.items():
        assert_matches(got, run(form(normalize), *in_float64(inp, s0)), label)
    return got


CASES = [dict(decay=d, state=s) for d in (False, True) for s in (False, True)]


@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(k for k, v in c.items() if v) or "plain")
@pytest.mark.parametrize("N", [1, 7, 63, 65, 257])
def test_against_naive_chunk_and_recurrent(N, case, normalize):
    """Chunks of 16: one partial chunk (1, 7), four with the last one short (63) or five, the last of one position
    (65), seventeen (257)."""
    got = check_against_references(N, normalize=normalize, **case)
    if case["state"]:
        assert got["dinitial_state"].abs().sum() > 0
    if case["decay"] and N > 1:
        assert got["dtau"][:, :, :-1].abs().sum() > 0


def test_value_blocks_wide_rank_and_default_chunk():
    """``E = 41`` (the sources of softmax mode at e = 40) in value blocks of 16 — three programs per chunk whose
    partial ``dφ, dψ, dg`` torch adds up — and in one block of 64; ``R = 20`` padded to 32; the default chunk
    of 64 over 100 positions. The reference is the torch scan on the same sources (linear mode: no readout)."""
    inp, s0 = make(100, decay=True, state=True, normalize=True, e=40, rank=20, batch=1, heads=2)
    scan_inp = LowRankInputs(inp.phi, inp.psi, sources(inp, True).detach().requires_grad_(), None, inp.tau)
    expected = run(lambda i, s: lowrank_chunk(i, causal=True, normalize=False, initial_state=s),
                   *in_float64(scan_inp, s0))
    for block_e in (16, None):
        got = run(lambda i, s, b=block_e: causal_scan_triton(i.phi, i.psi, i.v, i.tau, s, block_e=b), scan_inp, s0)
        assert_matches(got, expected, f"block_e={block_e}")


def test_fp32_long_sequence_with_fast_decay():
    """``τ`` reaches the hundreds (``exp(±τ)`` overflows float32 past 88): chunk-local decay keeps every exponent
    small, and the outputs and gradients stay finite and close to float64's."""
    inp, s0 = make(1024, decay=True, state=True, normalize=True, rate=1.0, batch=1, heads=1)
    assert inp.tau.max() > 400
    got = run(triton_form(64), inp, s0)
    expected = run(REFERENCES["chunk"](True), *in_float64(inp, s0))
    for name, value in got.items():
        assert torch.isfinite(value).all(), name
        assert (value.double() - expected[name]).norm() / expected[name].norm() < 1e-4, name


def test_two_runs_are_bitwise_equal():
    """No atomics: the value blocks' partial sums are added by torch in a fixed order."""
    inp, s0 = make(65, decay=True, state=True, normalize=True, e=20)

    def form(i, s):
        return causal_scan_triton(i.phi, i.psi, sources(i, True), i.tau, s, block_e=16)

    first, second = run(form, inp, s0), run(form, inp, s0)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_kernel_chunk_rounds_the_setting():
    assert [kernel_chunk(c) for c in (1, 16, 17, 33, 64, 100)] == [16, 16, 32, 64, 64, 64]
    inp, s0 = make(40, decay=True, state=True, normalize=True)
    with torch.no_grad():  # chunk_size=5 runs as 16, 100 as 64: the same numbers
        a, _ = lowrank_chunk(inp, causal=True, normalize=True, initial_state=s0, chunk_size=5, scan="triton")
        b, _ = lowrank_chunk(inp, causal=True, normalize=True, initial_state=s0, chunk_size=16, scan="triton")
        c, _ = lowrank_chunk(inp, causal=True, normalize=True, initial_state=s0, chunk_size=100, scan="triton")
    assert torch.equal(a, b)
    close(c, b, OUT_TOL, "chunk 64 against chunk 16")


# -- refusals --------------------------------------------------------------------------------------------------


def test_refusals_name_the_problem():
    inp, s0 = make(20, decay=True, state=True, normalize=True)
    phi, psi, tau = inp.phi.detach(), inp.psi.detach(), inp.tau.detach()
    x = sources(inp, True).detach()
    s0 = s0.detach()
    with pytest.raises(NotImplementedError, match="the triton lowrank scan does not compute float64"):
        causal_scan_triton(phi.double(), psi.double(), x.double(), tau)
    with pytest.raises(ValueError, match="bfloat16 inputs under Triton's interpreter"):
        causal_scan_triton(phi, psi, x.bfloat16(), tau)
    with pytest.raises(ValueError, match=r"psi must be \[2, 2, 20, 5\] like phi, got \(2, 2, 20, 4\)"):
        causal_scan_triton(phi, psi[..., :4], x, tau)
    with pytest.raises(ValueError, match=r"x must be \[2, 2, 20, sources width\], got \(2, 2, 19, 4\)"):
        causal_scan_triton(phi, psi, x[:, :, 1:], tau)
    with pytest.raises(ValueError, match=r"tau must be \[2, 2, 20\], got \(2, 2, 19\)"):
        causal_scan_triton(phi, psi, x, tau[..., 1:])
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 2, 5, 4\], got \(2, 2, 5, 3\)"):
        causal_scan_triton(phi, psi, x, tau, s0[..., 1:])
    with pytest.raises(ValueError, match="chunk_size must be a power of two >= 16, got 24"):
        causal_scan_triton(phi, psi, x, tau, chunk_size=24)
    with pytest.raises(ValueError, match="chunk_size must be at most 64, got 128"):
        causal_scan_triton(phi, psi, x, tau, chunk_size=128)
    with pytest.raises(ValueError, match="block_e must be a power of two >= 16, got 8"):
        causal_scan_triton(phi, psi, x, tau, block_e=8)
    with pytest.raises(ValueError, match=r"scan must be one of \('torch', 'triton'\), got 'cuda'"):
        lowrank_chunk(inp, causal=True, normalize=True, scan="cuda")


# -- dispatch --------------------------------------------------------------------------------------------------


def softplus_features(inp, detach_inputs: bool = False):
    """Positive features from the bilinear term's inputs (a stand-in for the layer's feature maps)."""
    return F.softplus(inp.q), F.softplus(inp.k)


def test_dispatch(monkeypatch):
    """``auto`` keeps CPU tensors on ``torch`` even under the interpreter; ``triton`` (asked for or forced by
    ``ITNET_BACKEND``) runs the scan kernels for a causal pass they compute and ``torch`` for the rest."""
    spec = KernelSpec(mode="softmax", support="causal")
    kernel_inp = random_inputs(40, 40, spec=spec, r=0, decay=True, weights="per_head", padding=True,
                               dtype=torch.float32)
    kernel_inp.tau_q = kernel_inp.tau_s = kernel_inp.tau_q.detach().double().requires_grad_()
    s0 = torch.rand(2, 2, 5, 4, requires_grad=True)
    inp, _ = make(40, decay=True, state=False, normalize=True)
    assert lowrank_backend(inp, True, None, "auto") == "torch"
    assert lowrank_backend(inp, True, None, "triton") == "triton"
    assert lowrank_backend(inp, False, None, "triton") == "torch"  # non-causal: two matmuls
    assert lowrank_backend(inp, True, s0.double(), "triton") == "torch"  # float64: torch's
    assert lowrank_backend(inp, True, None, "reference") == "reference"

    state = torch.rand(2, 2, 5, 4, requires_grad=True)  # R = d = 5, E = e + 1 = 4
    torch_run = integrate(kernel_inp, spec, LowRank(chunk_size=16, backend="torch"), feature_map=softplus_features,
                          initial_state=state)
    triton_run = integrate(kernel_inp, spec, LowRank(chunk_size=16, backend="triton"), feature_map=softplus_features,
                           initial_state=state)
    assert "TritonChunkScan" in type(triton_run.state.grad_fn).__name__
    assert "TritonChunkScan" not in type(torch_run.state.grad_fn).__name__
    close(triton_run.out, torch_run.out, OUT_TOL, "LowRank('triton') against LowRank('torch')")
    close(triton_run.state, torch_run.state, OUT_TOL, "its final state")
    leaves = [kernel_inp.q, kernel_inp.k, kernel_inp.v, kernel_inp.weights, kernel_inp.tau_q, state]
    expected = torch.autograd.grad((torch_run.out * probe_like(torch_run.out)).sum(), leaves)
    got = torch.autograd.grad((triton_run.out * probe_like(triton_run.out)).sum(), leaves)
    for name, a, b in zip(("q", "k", "v", "weights", "tau", "initial_state"), got, expected):
        close(a, b, GRAD_TOL, f"d{name} through integrate")

    monkeypatch.setenv("ITNET_BACKEND", "triton")
    assert lowrank_backend(inp, True, None, "torch") == "triton"
    forced = integrate(kernel_inp, spec, LowRank(chunk_size=16), feature_map=softplus_features)
    assert "TritonChunkScan" in type(forced.state.grad_fn).__name__
    monkeypatch.setenv("ITNET_BACKEND", "reference")
    assert lowrank_backend(inp, True, None, "triton") == "reference"
    monkeypatch.setenv("ITNET_BACKEND", "auto")
    assert lowrank_backend(inp, True, None, "triton") == "torch"
    monkeypatch.delenv("ITNET_BACKEND")
    kernel_inp.v = kernel_inp.v.detach().bfloat16()
    with pytest.raises(ValueError, match="bfloat16 inputs under Triton's interpreter"):
        integrate(kernel_inp, spec, LowRank(backend="triton"), feature_map=lambda i, **_: (
            softplus_features(i)[0].bfloat16(), softplus_features(i)[1].bfloat16()))


def test_triton_on_cpu_without_the_interpreter_is_an_error():
    """A fresh interpreter with TRITON_INTERPRET=0: ``auto`` and ``torch`` run, a forced ``triton`` names the cause."""
    script = (
        "import torch\n"
        "from itnet_scale.ops import KernelInputs, KernelSpec, LowRank, integrate\n"
        "pos = torch.arange(4.0)[None, :, None]\n"
        "inp = KernelInputs(v=torch.randn(1, 1, 4, 2), pos_q=pos, pos_s=pos, q=torch.randn(1, 1, 4, 3),\n"
        "                   k=torch.randn(1, 1, 4, 3), beta=torch.ones(1))\n"
        "features = lambda i, **_: (i.q.exp(), i.k.exp())\n"
        "spec = KernelSpec(mode='softmax', support='causal')\n"
        "for backend in ('auto', 'torch'):\n"
        "    integrate(inp, spec, LowRank(backend=backend), feature_map=features)\n"
        "integrate(inp, spec, LowRank(backend='triton'), feature_map=features)\n"
    )
    done = run_without_interpreter(script)
    assert done.returncode != 0 and NO_INTERPRETER_ERROR in done.stderr


# -- on a GPU --------------------------------------------------------------------------------------------------



@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("normalize", [False, True], ids=["linear", "softmax"])
def test_gpu_bf16_against_fp32_and_deterministic(normalize):
    """On a GPU, at N = 4000, R = 64, e = 64 (E = 65: two value blocks): float32 against the torch scan in
    float64; bfloat16 features and values (the same rounded numbers) within 5e-3 relative RMS of float32 on the
    output, the final state and every gradient; two runs bitwise equal; ``auto`` picks the kernels."""
    inp, s0 = make(4000, decay=True, state=True, normalize=normalize, e=64, rank=64, heads=4)
    cuda = LowRankInputs(*(t.detach().cuda().bfloat16().float().requires_grad_() for t in
                           (inp.phi * 0.2, inp.psi * 0.2, inp.v, inp.weights)),
                         inp.tau.detach().cuda().requires_grad_())
    s0 = s0.detach().cuda().bfloat16().float().requires_grad_()
    assert lowrank_backend(cuda, True, s0, "auto") == "triton"
    fp32 = run(triton_form(64, normalize), cuda, s0)
    ref = run(REFERENCES["chunk"](normalize), *in_float64(cuda, s0))
    for name in fp32:
        close(fp32[name], ref[name], 1e-3, f"float32 {name} on the GPU")
    half = LowRankInputs(*(t.detach().bfloat16().requires_grad_() for t in (cuda.phi, cuda.psi, cuda.v,
                                                                             cuda.weights)),
                         cuda.tau.detach().requires_grad_())
    s0_half = s0.detach().bfloat16().requires_grad_()
    bf16 = run(triton_form(64, normalize), half, s0_half)
    for name, value in bf16.items():
        rms = ((value.float() - fp32[name].float()).square().mean() / fp32[name].float().square().mean()).sqrt()
        assert rms.item() < 5e-3, (name, rms.item())
    again = run(triton_form(64, normalize), half, s0_half)
    assert all(torch.equal(bf16[name], again[name]) for name in bf16)
