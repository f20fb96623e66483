"""The compile machinery of the tile functions: when they compile, and what a failure does."""

from __future__ import annotations

import warnings

import pytest
import torch

from itnet_scale.ops import compile as tile_compile
from itnet_scale.ops.compile import TileFunction, compile_wanted


def _add(a, b, scale):
    return a + b * scale


def test_compile_wanted_follows_the_environment_and_the_tile(monkeypatch):
    fp32, fp64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    monkeypatch.delenv("ITNET_COMPILE", raising=False)
    assert compile_wanted(fp32, (64, 16)) and not compile_wanted(fp32, (32, 16)) and not compile_wanted(fp32, (64, 8))
    assert not compile_wanted(fp64, (256, 256))  # the exactness checks stay eager
    monkeypatch.setenv("ITNET_COMPILE", "0")
    assert not compile_wanted(fp32, (256, 256))
    monkeypatch.setenv("ITNET_COMPILE", "1")
    assert compile_wanted(fp64, (1, 1))


def test_a_failed_compile_is_reported_once_by_name_and_only_that_function_runs_eagerly(monkeypatch):
    """No C++ compiler, an unsupported platform: the failing function falls back to eager with one warning naming it
    and the rank; the result is still right, and another tile function is not switched off."""
    real_compile = torch.compile
    compiled_names = []

    def flaky_compile(fn, **kwargs):
        compiled_names.append(fn.__name__)
        if fn.__name__.startswith("_broken"):
            def fail(*args):
                raise RuntimeError("no C++ compiler found")
            return fail
        return real_compile(fn, backend="eager", **{k: v for k, v in kwargs.items() if k != "backend"})

    def _broken(a, b, scale):
        return a * scale + b

    monkeypatch.setattr(tile_compile.torch, "compile", flaky_compile)
    monkeypatch.setenv("RANK", "3")
    broken, working = TileFunction(_broken, {}, ()), TileFunction(_add, {}, ())
    a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    with pytest.warns(RuntimeWarning, match=r"rank 3: torch\.compile of the tile function _broken failed "
                                            r"\(RuntimeError\('no C\+\+ compiler found'\)\); _broken runs eagerly"):
        out = broken(a, b, 3.0, whole=True, compiled=True)
    torch.testing.assert_close(out, a * 3.0 + b)
    assert broken.failure is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: no second warning
        torch.testing.assert_close(broken(a, b, 3.0, whole=False, compiled=True), a * 3.0 + b)
        torch.testing.assert_close(working(a, b, 3.0, whole=True, compiled=True), a + b * 3.0)
    assert working.failure is None
    assert compiled_names == ["_broken_whole", "_add_whole"]  # the broken one is not compiled again


def test_whole_and_edge_tiles_compile_from_separate_copies(monkeypatch):
    names = []

    def recording_compile(fn, **kwargs):
        names.append(fn.__name__)
        return fn

    monkeypatch.setattr(tile_compile.torch, "compile", recording_compile)
    tile = TileFunction(_add, {"a": (-1,), "b": (-1,)}, ())
    a = torch.ones(2, 5)
    tile(a, a, 1.0, whole=True, compiled=True)
    tile(a, a, 1.0, whole=False, compiled=True)
    tile(a, a, 1.0, whole=True, compiled=True)
    assert names == ["_add_whole", "_add_edge"]
    assert tile(a, a, 2.0, whole=False, compiled=False).equal(a * 3)  # eager: the plain function
