"""The one door, ``ops.integrate``: every integrator behind it, its settings checked in one place."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import FeatureMap
from itnet_scale.ops import (
    BACKENDS,
    Exact,
    KernelSpec,
    LowRank,
    MonteCarlo,
    integral_transform_reference,
    integrate,
    make_integrator,
    with_settings,
)
from itnet_scale.ops.lowrank import lowrank_chunk, lowrank_inputs

from .conftest import random_inputs


def features(inp, rank: int = 6) -> FeatureMap:
    torch.manual_seed(0)
    d, r = inp.q.shape[-1], inp.a.shape[-1]
    return FeatureMap(inp.v.shape[1], d, r, rank, "learned", "softmax").double()


def test_one_vocabulary_of_backends_checked_in_one_place():
    assert BACKENDS == ("auto", "reference", "torch", "triton")
    for cls in (Exact, LowRank, MonteCarlo):
        assert cls(backend="reference").backend == "reference"
        with pytest.raises(ValueError,
                           match=r"backend must be one of \('auto', 'reference', 'torch', 'triton'\), got 'fused'"):
            cls(backend="fused")
        with pytest.raises(ValueError, match=r"backend='tiled' is now called 'torch'"):
            cls(backend="tiled")


def test_settings_are_checked_values():
    assert Exact(block_size=[32, 16]).block_size == (32, 16)
    for bad in ((0, 16), (16,), (16.5, 16)):
        with pytest.raises(ValueError, match="block_size"):
            Exact(block_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        LowRank(chunk_size=0)
    with pytest.raises(ValueError, match="proposal_window must be an integer >= 0, got -1"):
        MonteCarlo(proposal_window=-1)
    with pytest.raises(ValueError, match="samples must be an integer >= 1, got True"):
        MonteCarlo(samples=True)
    assert make_integrator("montecarlo", samples=8) == MonteCarlo(samples=8)
    assert with_settings(LowRank(), chunk_size=8) == LowRank(chunk_size=8)
    with pytest.raises(ValueError, match=r"the lowrank integrator has no settings \['samples'\]"):
        with_settings(LowRank(), samples=8)
    with pytest.raises(ValueError, match="integrator must be one of"):
        make_integrator("fft")


def test_every_integrator_comes_through_the_door():
    spec = KernelSpec(mode="softmax", support="causal")
    inp = random_inputs(40, 40, spec=spec, requires_grad=False)
    inp.pos_s = inp.pos_q  # a self-transform
    fmap = features(inp)
    exact = integrate(inp, spec, Exact("reference"))
    assert exact.state is None and exact.proposal_loss is None
    torch.testing.assert_close(exact.out, integral_transform_reference(inp, spec))
    torch.testing.assert_close(integrate(inp, spec).out, exact.out, rtol=1e-10, atol=1e-10)  # default: Exact()
    lowrank = integrate(inp, spec, LowRank(chunk_size=8), feature_map=fmap)
    direct = lowrank_chunk(lowrank_inputs(inp, fmap), causal=True, normalize=True, chunk_size=8)
    torch.testing.assert_close(lowrank.out, direct[0])
    torch.testing.assert_close(lowrank.state, direct[1])
    enumerated = integrate(inp, spec, MonteCarlo(samples=40, sample_block=8))  # M ≥ N: every source, exact
    torch.testing.assert_close(enumerated.out, exact.out, rtol=1e-10, atol=1e-10)
    learned = integrate(inp, spec, MonteCarlo(samples=6, proposal="learned", sample_block=8), feature_map=fmap,
                        train_proposal=True)
    assert learned.proposal_loss is not None and learned.out.shape == exact.out.shape
    assert integrate(inp, spec, MonteCarlo(samples=6, proposal="learned", sample_block=8),
                     feature_map=fmap).proposal_loss is None  # not asked for


def test_the_door_refuses_what_an_integrator_cannot_do():
    spec = KernelSpec(mode="softmax", support="all")
    inp = random_inputs(12, 12, spec=spec, requires_grad=False)
    state = torch.zeros(2, 2, 6, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"integrator must be Exact\(...\), LowRank\(...\) or MonteCarlo\(...\)"):
        integrate(inp, spec, "exact")
    with pytest.raises(ValueError, match="initial_state needs the lowrank integrator with a causal support, not exact"):
        integrate(inp, spec, Exact(), initial_state=state)
    with pytest.raises(ValueError, match="initial_state needs the lowrank integrator with a causal support, not "
                                         "lowrank with support 'all'"):
        integrate(inp, spec, LowRank(), feature_map=features(inp), initial_state=state)
    with pytest.raises(ValueError, match=r"the lowrank integrator needs the layer's feature maps \(feature_map\)"):
        integrate(inp, spec, LowRank())
    with pytest.raises(ValueError, match=r"proposal='learned' .* needs mode='softmax' and the layer's feature maps"):
        integrate(inp, spec, MonteCarlo(proposal="learned"))
    window = KernelSpec(mode="softmax", support="window", support_size=2.0)
    with pytest.raises(ValueError, match="the lowrank integrator integrates support 'all' or 'causal'"):
        integrate(inp, window, LowRank(), feature_map=features(inp))
    inp.pos_q = inp.pos_q[:, :, :0]  # malformed inputs are refused whatever the integrator
    for integrator in (Exact(), LowRank(), MonteCarlo()):
        with pytest.raises(ValueError, match="pos_q has pos_dim 0 but pos_s has 1"):
            integrate(inp, spec, integrator, feature_map=features(inp))
