"""The compiled tile functions (``torch.compile``: C++ on CPU, Triton on GPU) ⇄ reference, fp32."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from itnet_scale.ops import Exact, KernelSpec, integrate


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_compiled_tiles_match_reference(make_inputs, monkeypatch, mode):
    monkeypatch.setenv("ITNET_COMPILE", "1")
    spec = KernelSpec(mode=mode, support="causal", offset_range=(5,))
    inp = make_inputs(130, 130, spec=spec, d=8, r=16, table=True, decay=True, weights="shared", padding=True,
                      dtype=torch.float32)
    results = {}
    for backend in ("reference", "torch"):
        out = integrate(inp, spec, Exact(backend, (64, 64))).out
        leaves = [(n, t) for n, t in zip(inp.names(), inp.tensors()) if t is not None and t.requires_grad]
        grads = torch.autograd.grad(out.square().sum(), [t for _, t in leaves])
        results[backend] = (out, dict(zip([n for n, _ in leaves], grads)))
    (ref, gref), (out, g) = results["reference"], results["torch"]
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    for name in gref:
        torch.testing.assert_close(g[name], gref[name], rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_kernels_are_keyed_by_tile_shape_alone(make_inputs, monkeypatch):
    """A new batch size or sequence length compiles nothing once a tile shape's kernels exist (a last short batch,
    an evaluation batch, ``pad_to="longest"``); and one input's output and gradients are bitwise the same whatever
    compiled before it: a run resumed mid-way computes exactly as the uninterrupted one (whole 64×64 tiles and edge
    tiles both)."""
    monkeypatch.setenv("ITNET_COMPILE", "1")
    spec = KernelSpec(mode="softmax", support="all")

    def run(n: int, batch: int = 2) -> list[torch.Tensor]:
        torch.manual_seed(n)
        inp = make_inputs(n, n, spec=spec, B=batch, d=8, r=16, dtype=torch.float32)
        out = integrate(inp, spec, Exact("torch", (64, 64))).out
        leaves = [t for t in inp.tensors() if t is not None and t.requires_grad]
        return [out, *torch.autograd.grad(out.square().sum(), leaves)]

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    torch._dynamo.reset()
    counters.clear()
    first = run(150)  # two whole query blocks and an edge block of 22
    # Inductor schedules small and large tiles differently (a guard on the tile's size, not its position): one more
    # batch size and one shorter sequence compile those variants, and then nothing new compiles.
    run(150, 5)
    run(37)
    compiled = graphs()
    assert compiled > 0
    for n, batch in ((150, 3), (150, 9), (140, 2), (100, 4), (45, 3), (128, 7), (200, 6)):
        run(n, batch)
    assert graphs() == compiled, "a new batch size or length recompiled a tile kernel"
    again = run(150)
    torch._dynamo.reset()
    for n in (37, 128, 100):
        run(n)
    other_order = run(150)
    for a, b, c in zip(first, again, other_order):
        assert torch.equal(a, b) and torch.equal(a, c)
