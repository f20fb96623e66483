"""The kernel MLP ``w2ᵀσ(… σ(a_i + b_j))`` on a tile of pairs: forward and hand-written backward.

This is the one term of the score that costs ``O(Nq·Ns·r)``; everything else is a matmul or
``O(Nq·Ns)``. The tiled backend recomputes it in backward and applies the closed-form
derivative of ``σ`` instead of taping autograd over ``[B, H, r, nq, ns]`` tensors::

    g_ijr = ds_ij · w2_r · σ'(a_ir + b_jr)                      (single layer)
    da_ir = Σ_j g_ijr      db_jr = Σ_i g_ijr      dw2_r = Σ_ij ds_ij · σ(a_ir + b_jr)

These are loop nests over ``(r, i, j)`` that ``torch.compile`` fuses into vectorized C++ on
CPU (Triton on GPU) without materializing ``z``; in float64 (the tests' exactness checks) or
without a compiler they run eagerly. :func:`itnet_scale.ops.spec.kernel_mlp` is the plain
autograd definition they are tested against.

Layout: ``r`` comes *before* the pair axes (``a`` as ``[B, H, r, nq]``, ``b`` as ``[B, H, r, ns]``), so the
innermost loop runs along the sources and vectorizes fully; with ``r`` innermost (``r = 8`` or 16 is half a
vector or less) the same loops ran 3–7× slower on CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import types
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.fx.experimental._config as fx_config  # use_duck_shape: read when dynamo makes a ShapeEnv
import torch.nn.functional as F
from torch import Tensor

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def activation_and_derivative(name: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ(z), σ'(z))`` for each activation of :data:`itnet_scale.ops.spec.ACTIVATIONS`."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * _SQRT_HALF))
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if name == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)
        return 0.5 * z * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    if name == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1.0 + z * (1.0 - s))
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s, s * (1.0 - s)
    if name == "softplus":
        return F.softplus(z), torch.sigmoid(z)
    if name == "tanh":
        t = torch.tanh(z)
        return t, 1.0 - t * t
    raise ValueError(f"no closed-form derivative for activation {name!r}")


def _hidden_layers(mlp_w: Tensor | None, mlp_c: Tensor | None) -> list[tuple[Tensor, Tensor]]:
    return [] if mlp_w is None else list(zip(mlp_w, mlp_c))


def _hidden(h: Tensor, W: Tensor, c: Tensor) -> Tensor:
    """Pre-activation of a hidden layer: ``W h + c`` per head, ``[B, H, r, nq, ns]``."""
    return torch.einsum("bhrqs,hor->bhoqs", h, W) + c[None, :, :, None, None]


def mlp_layers(
    a: Tensor,
    b: Tensor,
    mlp_w: Tensor | None,
    mlp_c: Tensor | None,
    activation: str,
) -> tuple[list[Tensor], list[Tensor]]:
    """Each layer's activations ``σ(pre)`` and slopes ``σ'(pre)``, ``[B, H, r, nq, ns]`` each.

    The first layer's pre-activation is ``z = a_i + b_j`` (``a`` ``[B, H, r, nq]``, ``b`` ``[B, H, r, ns]``: ``r``
    first, see the module doc; the position term ``Ua (p_i − p_j)`` is already folded into them, see
    :mod:`itnet_scale.ops.tiled`); hidden layers follow (``mlp_w`` ``[L, H, r, r]``, ``mlp_c`` ``[L, H, r]``).
    """
    z = a[..., :, None] + b[..., None, :]
    h, slope = activation_and_derivative(activation, z)
    acts, slopes = [h], [slope]
    for W, c in _hidden_layers(mlp_w, mlp_c):
        h, slope = activation_and_derivative(activation, _hidden(h, W, c))
        acts.append(h)
        slopes.append(slope)
    return acts, slopes


def mlp_scores(acts: list[Tensor], w2: Tensor) -> Tensor:
    """The read-out ``w2ᵀ h_L``: ``[B, H, nq, ns]``."""
    return (acts[-1] * w2[None, :, :, None, None]).sum(2)


def mlp_backward(
    acts: list[Tensor],
    slopes: list[Tensor],
    w2: Tensor,
    mlp_w: Tensor | None,
    ds: Tensor,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``Σ_ij ds_ij · mlp_scores(acts, w2)_ij``, by hand-written backprop.

    ``acts``/``slopes`` come from :func:`mlp_layers` (the forward's recomputation, reused).
    Returns ``(da [B, H, r, nq], db [B, H, r, ns], dw2, dmlp_w, dmlp_c)`` (``a``'s and ``b``'s layout); the last
    two are None without hidden layers.
    """
    dsr = ds[:, :, None]
    dw2 = (dsr * acts[-1]).sum((0, 3, 4))
    grad_h = dsr * w2[None, :, :, None, None]
    dWs, dcs = [], []
    Ws = [] if mlp_w is None else list(mlp_w)
    for W, h_in, slope in zip(reversed(Ws), reversed(acts[:-1]), reversed(slopes[1:])):
        grad_pre = grad_h * slope
        dWs.append(torch.einsum("bhoqs,bhrqs->hor", grad_pre, h_in))
        dcs.append(grad_pre.sum((0, 3, 4)))
        grad_h = torch.einsum("bhoqs,hor->bhrqs", grad_pre, W)
    grad_z = grad_h * slopes[0]
    dmlp_w, dmlp_c = (torch.stack(dWs[::-1]), torch.stack(dcs[::-1])) if Ws else (None, None)
    return grad_z.sum(4), grad_z.sum(3), dw2, dmlp_w, dmlp_c


# -- compilation -------------------------------------------------------------------------

RECOMPILE_LIMIT = 64
_compiled: dict[tuple[Callable, bool], Callable] = {}
_compile_failed = False


def compile_wanted(t: Tensor, tile: tuple[int, int]) -> bool:
    """Whether to use the compiled loop nests for this dtype and tile.

    ``ITNET_COMPILE=0`` turns compilation off, ``=1`` forces it; by default it is on for 16/32-bit floats on
    blocks of at least 64 queries × 16 sources, where it pays for itself (local supports merge a query block's
    source blocks into one tile); float64 is the tests' exactness check and stays eager.
    """
    setting = os.environ.get("ITNET_COMPILE", "auto")
    if setting == "0" or _compile_failed or torch.compiler.is_compiling():
        return False
    if setting == "1":
        return True
    return t.dtype in (torch.float32, torch.bfloat16, torch.float16) and tile[0] >= 64 and tile[1] >= 16


_parameters: dict[Callable, list[str]] = {}


def _lengths_marked_dynamic(fn: Callable, args: tuple, length_dims: Mapping[str, tuple[int, ...]]) -> tuple:
    """``args`` with the dims ``length_dims`` names per parameter of ``fn`` (the tile's query/source extents) marked
    dynamic, on fresh views so the caller's tensors — which may go on to a whole tile — carry no mark; an extent of
    1 (a broadcast dim, or a one-row tile) stays static."""
    names = _parameters.setdefault(fn, list(inspect.signature(fn).parameters))
    marked = []
    for name, value in zip(names, args):
        dims = length_dims.get(name, ()) if isinstance(value, Tensor) else ()
        dims = [value.dim() + d for d in dims if value.dim() >= -d and value.shape[d] > 1]
        if dims:
            value = value.view(value.shape)
            for dim in dims:
                torch._dynamo.maybe_mark_dynamic(value, dim)
        marked.append(value)
    return tuple(marked)


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


def run_maybe_compiled(fn: Callable, use_compile: bool, *args, whole: bool = False,
                       length_dims: Mapping[str, tuple[int, ...]] | None = None):
    """Call ``fn`` (a tile function) compiled or eagerly. ``whole``: the tile is a full query block by a whole
    number of source blocks; ``length_dims``: per parameter of ``fn``, the dims holding the tile's query/source
    extents.

    The kernel a tile runs depends on that tile's own shapes alone, never on the shapes seen before it. Whole
    tiles — the bulk of a long sequence, a few shapes per layer — run kernels specialized to their exact shape
    (``dynamic=False``); every other tile (a sequence's last block, a sequence shorter than a block) one kernel
    whose ``length_dims`` are dynamic from the first call. The two kinds compile from separate copies of ``fn``
    (separate caches), and dynamo neither generalizes a kernel once a static size changes
    (``automatic_dynamic_shapes``) nor lets equal sizes share a symbol (duck shaping). With dynamo's defaults a
    run resumed mid-way ran other kernels than the uninterrupted run — other roundings, which Adam amplifies in
    weights whose exact gradient is zero (the key bias under softmax).
    """
    global _compile_failed
    if use_compile:
        key = (fn, whole)
        if key not in _compiled:
            # One tile function serves every layer, integrator and grad mode: its argument pattern
            # (which terms exist, requires_grad, dtypes) varies more than dynamo's default 8 variants.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            _compiled[key] = torch.compile(_renamed_copy(fn, "whole" if whole else "edge"), fullgraph=True,
                                           dynamic=False if whole else None)
        try:
            if whole:
                return _compiled[key](*args)
            with _only_marked_dims_dynamic():
                return _compiled[key](*_lengths_marked_dynamic(fn, args, length_dims or {}))
        except Exception as err:  # no C++ compiler, unsupported platform: fall back, once, loudly
            _compile_failed = True
            warnings.warn(f"torch.compile of {fn.__name__} failed ({err!r}); running it eagerly", stacklevel=2)
    return fn(*args)
