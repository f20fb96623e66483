"""``torch.compile`` for the exact integrator's tile functions: when to compile, how kernels are keyed, failures.

The tile functions (:mod:`itnet_scale.ops.tiled`) are plain torch. Compiled, their ``r``-wide kernel-MLP loops
fuse into vectorized C++ on CPU (Triton on GPU) instead of materializing ``[B, H, r, nq, ns]`` tensors, which
is worth 2–3× of a training step. :class:`TileFunction` wraps one of them.

**Keying.** A compiled kernel is chosen by the tile's shape alone, never by the batch, the sequence length or
the shapes that ran before it:

- the batch dim of every tensor argument is dynamic from the first call, so a new batch size (a last short
  batch, an evaluation batch) reuses the kernels; so are the strides that follow from the whole sequence's
  length (the tiles are views of ``[B, N, H, c]`` projections);
- *whole* tiles — a full query block by a whole number of source blocks, the bulk of a long sequence — run
  kernels specialized to their exact extents; every other (*edge*) tile — a sequence's last block, a sequence
  shorter than a block — runs one kernel whose query and source extents are dynamic too. The two kinds compile
  from separate copies of the function (separate kernel caches);
- while dynamo compiles, it neither generalizes a kernel after a static size changed (automatic dynamic
  shapes) nor lets equal sizes share a symbol (duck shaping). With its defaults a run resumed mid-way ran other
  kernels than the uninterrupted run — other roundings, which Adam amplifies in weights whose exact gradient is
  zero (the key bias under softmax). Here a call's kernel depends on its own shapes, so resumption is bitwise.

Dynamo specializes sizes 0 and 1, so a batch (or an extent) of 1 gets a kernel of its own; that too is decided
by the call's shape alone.

**Failures.** When a function cannot compile (no C++ compiler, an unsupported platform), that function — and
only it — runs eagerly from then on in this process, and every rank says so once, naming the function.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.fx.experimental._config as fx_config  # use_duck_shape: read when dynamo makes a ShapeEnv
from torch import Tensor

#: ``ITNET_COMPILE``: ``0`` runs every tile function eagerly, ``1`` compiles even small tiles; unset: automatic.
ENV_VAR = "ITNET_COMPILE"
#: One tile function serves every layer, integrator and grad mode: its argument pattern (which terms exist,
#: requires_grad, dtypes) varies more than dynamo's default of 8 variants per function.
RECOMPILE_LIMIT = 64
#: The smallest tile (queries, sources) worth a compiled kernel in automatic mode.
MIN_COMPILED_TILE = (64, 16)


def compile_wanted(t: Tensor, tile: tuple[int, int]) -> bool:
    """Whether the tile functions of a call on ``t`` in tiles of ``tile`` run compiled.

    ``ITNET_COMPILE=0`` turns compilation off, ``=1`` forces it; by default it is on for 16/32-bit floats on tiles
    of at least :data:`MIN_COMPILED_TILE`, where it pays for itself (local supports merge a query block's source
    blocks into one tile); float64 is the tests' exactness check and stays eager.
    """
    setting = os.environ.get(ENV_VAR, "auto")
    if setting == "0" or torch.compiler.is_compiling():
        return False
    if setting == "1":
        return True
    return (t.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and tile[0] >= MIN_COMPILED_TILE[0] and tile[1] >= MIN_COMPILED_TILE[1])


@contextlib.contextmanager
def _only_marked_dims_dynamic() -> Iterator[None]:
    """While dynamo may compile: no automatic dynamic shapes, no duck shaping (read when it compiles; set and
    restored directly: ``config.patch`` costs 4x as much per call)."""
    saved = torch._dynamo.config.automatic_dynamic_shapes, fx_config.use_duck_shape
    torch._dynamo.config.automatic_dynamic_shapes = fx_config.use_duck_shape = False
    try:
        yield
    finally:
        torch._dynamo.config.automatic_dynamic_shapes, fx_config.use_duck_shape = saved


def _renamed_copy(fn: Callable, suffix: str) -> Callable:
    """``fn`` with a code object of its own: dynamo keeps its compiled kernels per code object, so the copies'
    kernel caches are apart."""
    name = f"{fn.__name__}_{suffix}"
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


class TileFunction:
    """A tile function, called compiled or eagerly: ``tile(*args, whole=..., compiled=...)``.

    Args:
        fn: the plain-torch function (positional arguments only).
        extent_dims: per parameter name, the dims holding the tile's query or source extent (negative indices;
            names ``fn`` lacks are ignored, so tile functions can share one table); they are dynamic in edge
            tiles. Every tensor argument's dim 0 is its batch dim, dynamic in every tile, unless the parameter is
            in ``unbatched`` (per-head parameters such as ``w2 [H, r]``).
        unbatched: parameters whose tensors have no batch dim.
    """

    def __init__(self, fn: Callable, extent_dims: Mapping[str, tuple[int, ...]], unbatched: tuple[str, ...]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.parameters = list(inspect.signature(fn).parameters)
        self.extent_dims = dict(extent_dims)
        self.unbatched = frozenset(unbatched)
        self._compiled: dict[bool, Callable] = {}
        self.failure: str | None = None

    def __call__(self, *args: Any, whole: bool, compiled: bool) -> Any:
        if compiled and self.failure is None:
            try:
                with _only_marked_dims_dynamic():
                    return self._compiled_copy(whole)(*self._marked(args, whole))
            except Exception as err:  # no C++ compiler, unsupported platform: this function runs eagerly
                self._report(err)
        return self.fn(*args)

    def _compiled_copy(self, whole: bool) -> Callable:
        if whole not in self._compiled:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            copy = _renamed_copy(self.fn, "whole" if whole else "edge")
            self._compiled[whole] = torch.compile(copy, fullgraph=True, dynamic=None)
        return self._compiled[whole]

    def _marked(self, args: tuple, whole: bool) -> tuple:
        """``args`` with the batch dims (and in edge tiles the extent dims) marked dynamic, on fresh detached views
        so the caller's tensors, which may go on to another tile, carry no mark (and no ``requires_grad`` for dynamo
        to key on: the tile functions compute gradients by hand). A dim of size 1 stays static.

        In an edge tile, a tensor that is a view into a larger one (a block of the whole sequence's projections) is
        copied to fresh contiguous memory: with dynamic extents, dynamo would otherwise specialize on where the view
        starts (offset 0, 1 or more) and on whether its strides happen to be contiguous — kernels chosen by the
        position of the tile, not its shape."""
        marked = []
        for name, value in zip(self.parameters, args):
            if isinstance(value, Tensor) and value.dim() > 0:
                dims = [] if name in self.unbatched else [0]
                if not whole:
                    dims += [value.dim() + d for d in self.extent_dims.get(name, ()) if value.dim() >= -d]
                dims = [d for d in dims if value.shape[d] > 1]
                if dims:
                    fresh = value.storage_offset() == 0 and value.is_contiguous()
                    value = value.detach() if whole or fresh else value.detach().clone(
                        memory_format=torch.contiguous_format)
                    for dim in dims:
                        torch._dynamo.maybe_mark_dynamic(value, dim)
            marked.append(value)
        return tuple(marked)

    def _report(self, err: Exception) -> None:
        self.failure = repr(err)
        rank = os.environ.get("RANK", "0")
        warnings.warn(f"rank {rank}: torch.compile of the tile function {self.name} failed ({err!r}); {self.name} "
                      f"runs eagerly in this process from now on (2-3x slower); the other tile functions stay "
                      f"compiled. {ENV_VAR}=0 runs every tile function eagerly.", RuntimeWarning, stacklevel=3)
