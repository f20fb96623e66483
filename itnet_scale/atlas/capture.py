"""Kernel capture: the dense kernel ``K_h(i,j)`` of every :class:`~itnet_scale.nn.IntegralTransform` call of a
forward, with the positions and padding it was evaluated at.

The kernel is computed *inside* a forward hook of each layer call: there the layer's parameters are what the
forward used — under DeepSpeed ZeRO-3 they are gathered only within the forward of the module that reads them,
and under :func:`torch.func.functional_call` (the state-space scans of :mod:`itnet_scale.nn.special.recurrence`)
only for the duration of the call. The hook is a global module forward hook, which runs before a module's own
forward hooks (ZeRO-3 releases the parameters in one of those), filtered to the layers asked for.

The kernel is materialized one sample at a time with the reference definition
(:func:`itnet_scale.ops.kernel_matrix`, the same numbers every integrator approximates): ``O(H·N²·r)`` memory per
sample, meant for inspection batches (a few samples, sequences up to a few thousand tokens).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.ops import kernel_matrix
from itnet_scale.parallel.ulysses import SequenceParallelIntegralTransform

#: The forward arguments that describe the kernel (the others, the low-rank recurrent state, do not change it).
KERNEL_ARGUMENTS = ("x", "pos", "source", "source_pos", "weights", "padding_mask", "attn_mask")
_FORWARD = inspect.signature(IntegralTransform.forward)


@dataclass
class LayerKernel:
    """The kernel of one layer call.

    name: the layer's module name in the model (``itnet.backbone.blocks.0.mixer``), or ``IntegralTransform[k]``
        for layers outside a named model (the ``k``-th layer seen).
    call: how many times this layer had run before in the forward (0 for its first call).
    kernel: ``[B, H, Nq, Ns]`` float32, ``K_h(i,j)``.
    pos_q, pos_s: ``[B, Nq, P]``, ``[B, Ns, P]`` query and source positions (float32).
    query_valid, source_valid: ``[B, Nq]``, ``[B, Ns]`` bool, False at padding (a self-transform's padded tokens
        are padded queries too).
    """

    name: str
    call: int
    kernel: Tensor
    pos_q: Tensor
    pos_s: Tensor
    query_valid: Tensor
    source_valid: Tensor

    @property
    def heads(self) -> int:
        return self.kernel.shape[1]

    def head(self, h: int) -> Tensor:
        """``K_h(i,j)`` of head ``h``: ``[B, Nq, Ns]``."""
        return self.kernel[:, h]

    @property
    def label(self) -> str:
        """The layer name, with the call number when the layer ran more than once (``…mixer@1``)."""
        return self.name if self.call == 0 else f"{self.name}@{self.call}"


def layer_kernel(layer: IntegralTransform, name: str, call: int, args: tuple, kwargs: dict) -> LayerKernel:
    """The :class:`LayerKernel` of ``layer`` called with ``args`` / ``kwargs`` (its forward's arguments)."""
    if isinstance(layer, SequenceParallelIntegralTransform):
        raise ValueError(f"{name} runs sequence-parallel (each rank holds a shard of the sequence): the kernel atlas "
                         "needs whole sequences (sequence_parallel_size 1)")
    bound = _FORWARD.bind(layer, *args, **kwargs).arguments
    with torch.no_grad():
        inputs = layer.kernel_inputs(**{key: bound[key] for key in KERNEL_ARGUMENTS if key in bound})
        kernel = torch.cat([kernel_matrix(piece, layer.spec).float() for piece in inputs.split(1)])
    B, _, Nq, Ns = kernel.shape
    padding = inputs.padding
    source_valid = torch.ones(B, Ns, dtype=torch.bool, device=kernel.device) if padding is None else ~padding
    self_transform = inputs.pos_q is inputs.pos_s
    query_valid = source_valid if self_transform else torch.ones(B, Nq, dtype=torch.bool, device=kernel.device)
    return LayerKernel(name, call, kernel.cpu(), inputs.pos_q.detach().float().cpu(),
                       inputs.pos_s.detach().float().cpu(), query_valid.cpu(), source_valid.cpu())


@contextlib.contextmanager
def capture_kernels(model: nn.Module | Iterable[IntegralTransform] | None = None) -> Iterator[list[LayerKernel]]:
    """Within the block, every forward call of the integral transforms of ``model`` (a module: the
    :class:`IntegralTransform` layers it contains, named as in it; an iterable of layers; None: any
    ``IntegralTransform``, e.g. the ones :func:`~itnet_scale.nn.special.ssd` builds per call) appends its
    :class:`LayerKernel` to the yielded list, in call order.

    Example::

        with capture_kernels(model) as kernels:
            model(batch)
        kernels[0].head(0)  # [B, N, N]
    """
    if model is None:
        names: dict[int, str] | None = None
    elif isinstance(model, nn.Module):
        names = {id(m): name for name, m in model.named_modules() if isinstance(m, IntegralTransform)}
        if not names:
            raise ValueError(f"{type(model).__name__} contains no IntegralTransform layer: nothing to capture")
    else:
        names = {id(m): f"IntegralTransform[{k}]" for k, m in enumerate(model)}
    captured: list[LayerKernel] = []
    calls: dict[int, int] = {}
    seen: dict[int, str] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not isinstance(module, IntegralTransform) or (names is not None and id(module) not in names):
            return
        key = id(module)
        name = names[key] if names is not None else seen.setdefault(key, f"IntegralTransform[{len(seen)}]")
        call = calls.get(key, 0)
        calls[key] = call + 1
        captured.append(layer_kernel(module, name, call, args, kwargs))

    handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
