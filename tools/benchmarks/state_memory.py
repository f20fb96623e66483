"""Exact accounting of the model and optimizer state a DeepSpeed engine holds on this rank.

:func:`engine_state_bytes` walks every object reachable from the engine (attributes, containers, each tensor's
``.grad`` and Python attributes such as ZeRO-3's ``ds_tensor``) and collects every tensor it meets. Tensors are
deduplicated by **storage**: a storage is counted once, in full (``untyped_storage().nbytes()``), however many
views of it exist — so ZeRO's flat buffers and the parameter views into them count once, and a tied weight once.
Empty storages (ZeRO-3's placeholders for partitioned parameters) count nothing.

Each storage goes to the first category that claims it, in this order:

1. ``parameters`` — the module's parameters as this rank holds them: ``p`` itself (whole under ZeRO 0–2, a
   persistent or gathered ZeRO-3 parameter) and its ZeRO-3 partition ``p.ds_tensor``;
2. ``master`` — the tensors the inner ``torch.optim.Optimizer`` updates (its groups' parameters and its state's
   keys), where they are other storages than the parameters: fp32 master copies (ZeRO-0 in fp32 has none: it
   updates the parameters themselves; DeepSpeed 0.19.8's ZeRO-3 keeps one of its partition, even in fp32);
3. ``optimizer`` — the inner optimizer's ``state`` (AdamW: ``exp_avg``, ``exp_avg_sq`` and the ``step`` counters);
4. ``gradients`` — any reachable tensor's ``.grad`` and tensors (not 0-dim statistics such as the global grad
   norm) reached through an attribute whose name holds ``grad`` (ZeRO's gradient partitions, e.g. stage 3's
   ``grad_partitions_flat_buffer``);
5. ``buffers`` — communication buckets (attribute names holding ``bucket`` or ``ipg``: ZeRO-3's reduce bucket is
   allocated at ``reduce_bucket_size`` elements, untouched pages and all);
6. ``other`` — everything else reachable (the module's registered buffers, DeepSpeed's bookkeeping).

``state`` = parameters + master + optimizer + gradients: the model + optimizer state of the ZeRO papers. Count at
the moment all of it exists — after a backward, before the step that consumes the gradients, once the optimizer
has taken a step (so its moments exist).
"""

from __future__ import annotations

import gc
import types
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

CATEGORIES = ("parameters", "master", "optimizer", "gradients", "buffers", "other")
STATE_CATEGORIES = ("parameters", "master", "optimizer", "gradients")
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), type, types.ModuleType, types.FunctionType,
          types.BuiltinFunctionType, types.MethodType, types.CodeType, types.FrameType, types.GeneratorType,
          torch.dtype, torch.device, torch.Size)

StorageKey = tuple[str, int, int]


def storage_key(t: Tensor) -> tuple[StorageKey, int] | None:
    """``((device type, device index, data pointer), nbytes)`` of ``t``'s storage; None for an empty storage or
    one without memory (the meta device, torch.compile's fake tensors)."""
    if t.device.type == "meta":
        return None
    try:
        storage = t.untyped_storage()
        nbytes, pointer = storage.nbytes(), storage.data_ptr()
    except (RuntimeError, NotImplementedError):  # fake/functional tensors (torch.compile's caches): no memory
        return None
    if nbytes == 0:
        return None
    return (t.device.type, -1 if t.device.index is None else t.device.index, pointer), nbytes


def reachable_tensors(root: object) -> Iterator[tuple[str, Tensor]]:
    """``(path, tensor)`` for every tensor reachable from ``root``: through instance attributes (``__dict__`` and
    ``__slots__``), dict keys and values, list/tuple/set items, and each tensor's ``.grad`` and Python attributes.
    Functions, methods, classes, modules and frames are not entered. Each object is visited once."""
    seen: set[int] = set()
    queue: deque[tuple[str, Any]] = deque([("engine", root)])
    while queue:
        path, obj = queue.popleft()
        if isinstance(obj, _ATOMS) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            yield path, obj
            if obj.grad is not None:
                queue.append((f"{path}.grad", obj.grad))
            queue.extend((f"{path}.{k}", v) for k, v in getattr(obj, "__dict__", {}).items())
            continue
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                if isinstance(k, Tensor):
                    queue.append((f"{path}[key]", k))
                queue.append((f"{path}[{k!r}]" if isinstance(k, str | int) else f"{path}[…]", v))
            continue
        if isinstance(obj, list | tuple | set | frozenset | deque):
            queue.extend((f"{path}[{i}]", v) for i, v in enumerate(list(obj)))
            continue
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            queue.extend((f"{path}.{k}", v) for k, v in list(attributes.items()))
        for slot in getattr(type(obj), "__slots__", ()):
            if isinstance(slot, str) and hasattr(obj, slot):
                queue.append((f"{path}.{slot}", getattr(obj, slot)))


def inner_optimizer(engine: object) -> torch.optim.Optimizer | None:
    """The ``torch.optim.Optimizer`` that updates the weights: ``engine.optimizer`` (ZeRO 0) or the one a ZeRO
    optimizer wraps (``.optimizer``, followed down)."""
    opt = getattr(engine, "optimizer", None)
    for _ in range(8):
        if opt is None or isinstance(opt, torch.optim.Optimizer):
            return opt
        opt = getattr(opt, "optimizer", None)
    return None


def module_of(engine: object) -> nn.Module:
    """``engine.module`` (a DeepSpeed engine), or the module itself."""
    module = getattr(engine, "module", engine)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a DeepSpeed engine or an nn.Module, got {type(engine).__name__}")
    return module


@dataclass
class StateBytes:
    """Bytes per category (see the module doc) and the largest storages with a path that reaches each."""

    parameters: int = 0
    master: int = 0
    optimizer: int = 0
    gradients: int = 0
    buffers: int = 0
    other: int = 0
    storages: int = 0
    largest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> int:
        """Model + optimizer state: parameters + master + optimizer + gradients."""
        return sum(getattr(self, c) for c in STATE_CATEGORIES)

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in CATEGORIES)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state, "total": self.total}


def _claim(owner: dict[StorageKey, str], sizes: dict[StorageKey, int], paths: dict[StorageKey, str],
           named: list[tuple[str, Tensor]], category: str) -> None:
    for path, t in named:
        key = storage_key(t)
        if key is not None and key[0] not in owner:
            owner[key[0]], sizes[key[0]], paths[key[0]] = category, key[1], path


def engine_state_bytes(engine: object, largest: int = 8) -> StateBytes:
    """Count, exactly, the storages reachable from ``engine`` (a DeepSpeed engine or a plain module with its
    optimizer reached through ``engine.optimizer``), by category; see the module doc."""
    module = module_of(engine)
    params = dict(module.named_parameters())  # tied weights once
    names = {id(p): name for name, p in params.items()}
    inner = inner_optimizer(engine)
    owner: dict[StorageKey, str] = {}
    sizes: dict[StorageKey, int] = {}
    paths: dict[StorageKey, str] = {}
    held = [(f"module.{name}", p) for name, p in params.items()]
    held += [(f"module.{name}.ds_tensor", p.ds_tensor) for name, p in params.items()
             if isinstance(getattr(p, "ds_tensor", None), Tensor)]
    _claim(owner, sizes, paths, held, "parameters")
    if inner is not None:
        # What the optimizer updates: its groups' parameters, and the keys of its state (ZeRO-3 empties the groups
        # between steps and keeps its flat fp32 partitions as the state's keys).
        _claim(owner, sizes, paths, [(f"optimizer.param_groups[{g}][{i}]", p) for g, group in
                                     enumerate(inner.param_groups) for i, p in enumerate(group["params"])], "master")
        _claim(owner, sizes, paths, [(f"optimizer.state[{names.get(id(p), 'key')}]", p) for p in inner.state
                                     if isinstance(p, Tensor)], "master")
        _claim(owner, sizes, paths, [(f"optimizer.state[{names.get(id(p), '…')}][{k!r}]", v)
                                     for p, s in inner.state.items() for k, v in s.items() if isinstance(v, Tensor)],
               "optimizer")
    _claim(owner, sizes, paths, [(f"module.{name}.grad", p.grad) for name, p in params.items() if p.grad is not None],
           "gradients")
    marks: dict[StorageKey, set[str]] = {}
    for path, t in reachable_tensors(engine):
        key = storage_key(t)
        if key is None:
            continue
        paths.setdefault(key[0], path)
        sizes.setdefault(key[0], key[1])
        leaf = path.lower()
        mark = marks.setdefault(key[0], set())
        if "grad" in leaf and t.dim() > 0:  # 0-dim ones are statistics (the global grad norm), not gradients
            mark.add("gradients")
        if "bucket" in leaf or "ipg" in leaf:
            mark.add("buffers")
    for key, mark in marks.items():  # any path through a gradient attribute decides, then a bucket's
        if key not in owner:
            owner[key] = "gradients" if "gradients" in mark else "buffers" if "buffers" in mark else "other"
    result = StateBytes(storages=len(owner))
    for key, category in owner.items():
        setattr(result, category, getattr(result, category) + sizes[key])
    ranked = sorted(owner, key=lambda k: -sizes[k])[:largest]
    result.largest = [{"bytes": sizes[k], "category": owner[k], "path": paths.get(k, "(not reached by the walk)")}
                      for k in ranked]
    return result


def live_tensor_bytes() -> int:
    """Bytes of every storage of every tensor the garbage collector tracks in this process, each storage once
    (a cross-check: what the engine walk finds is part of it)."""
    seen: dict[StorageKey, int] = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), Tensor):  # type(), not isinstance: no __class__ lookup on proxies
            continue
        key = storage_key(obj)
        if key is not None:
            seen[key[0]] = key[1]
    return sum(seen.values())
