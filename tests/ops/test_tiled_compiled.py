"""The compiled tile functions (``torch.compile``: C++ on CPU, Triton on GPU) ⇄ reference, fp32."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.ops import KernelSpec, integral_transform


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_compiled_tiles_match_reference(make_inputs, monkeypatch, mode):
    monkeypatch.setenv("ITNET_COMPILE", "1")
    spec = KernelSpec(mode=mode, support="causal", offset_range=(5,))
    inp = make_inputs(130, 130, spec=spec, d=8, r=16, table=True, decay=True, weights="shared", padding=True,
                      dtype=torch.float32)
    results = {}
    for backend in ("reference", "tiled"):
        out = integral_transform(inp, spec, backend=backend, block_size=(64, 64))
        leaves = [(n, t) for n, t in zip(inp.names(), inp.tensors()) if t is not None and t.requires_grad]
        grads = torch.autograd.grad(out.square().sum(), [t for _, t in leaves])
        results[backend] = (out, dict(zip([n for n, _ in leaves], grads)))
    (ref, gref), (out, g) = results["reference"], results["tiled"]
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    for name in gref:
        torch.testing.assert_close(g[name], gref[name], rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_a_tile_runs_the_same_kernel_whatever_ran_before(make_inputs, monkeypatch):
    """Bitwise the same output and gradients for one input whether other lengths compiled first or not: a run
    resumed mid-way must compute exactly as the uninterrupted one (whole 64×64 tiles and edge tiles both)."""
    monkeypatch.setenv("ITNET_COMPILE", "1")
    spec = KernelSpec(mode="softmax", support="all")

    def run(n: int) -> list[torch.Tensor]:
        torch.manual_seed(n)
        inp = make_inputs(n, n, spec=spec, d=8, r=16, dtype=torch.float32)
        out = integral_transform(inp, spec, backend="tiled", block_size=(64, 64))
        leaves = [t for t in inp.tensors() if t is not None and t.requires_grad]
        return [out, *torch.autograd.grad(out.square().sum(), leaves)]

    torch._dynamo.reset()
    first = run(150)  # two whole query blocks and an edge block of 22
    for n in (100, 37, 128):
        run(n)
    again = run(150)
    torch._dynamo.reset()
    for n in (37, 128, 100):
        run(n)
    other_order = run(150)
    for a, b, c in zip(first, again, other_order):
        assert torch.equal(a, b) and torch.equal(a, c)
