"""An exponential moving average (EMA) of a model's weights, for evaluating and exporting the averaged model.

After every applied optimizer step, :meth:`WeightEMA.update` moves each average towards the weights:
``ema ← d · ema + (1 − d) · w``. ``d`` is ``ema.decay``, or with ``ema.warmup`` (timm's ``ModelEmaV3``)
``min(decay, 1 − (1 + n / warmup_gamma) ** −warmup_power)`` at the ``n``-th update (from 0): the first update
copies the weights and the average then lengthens, so early weights, far from the final ones, fade out instead of
dominating an average of 1 / (1 − decay) steps. The averages are fp32 whatever the training precision; they cover
the trainable parameters as the forward uses them (in bf16 training the bf16 weights, not the optimizer's fp32
master copy); buffers, such as normalization statistics, are the model's own at evaluation.

:meth:`WeightEMA.swapped_in` evaluates with the averages: inside the block the model's parameters hold them, on
exit the weights return bit for bit, so training goes on as if nothing had happened.

**Checkpoints.** :meth:`WeightEMA.save` writes ``ema.safetensors`` (:data:`EMA_FILE`) into a checkpoint's tag
folder: every average whole, fp32, by parameter name (the model's own ``state_dict`` names, so the file loads into
the model as its weights), and the update count in its metadata. Call it *before*
:func:`~itnet_scale.checkpoint.deepspeed_checkpoint.save_checkpoint` of the same tag: ``latest`` then only ever
names a checkpoint whose EMA file is complete (an interrupted save is discarded on resume with its tag folder).
:meth:`WeightEMA.load` restores it exactly, on any number of ranks and at any ZeRO stage. (A separate file rather
than the checkpoint's client state: DeepSpeed writes the client state once per rank at ZeRO-3, and the averages
would be copied that many times, or saved as partitions that only load on the same number of ranks.)

**ZeRO-3.** The parameters are partitioned: each rank holds a flat slice of every parameter (``ds_tensor``) and the
forward gathers them. Each rank averages its own slices — no communication in :meth:`~WeightEMA.update`;
:meth:`~WeightEMA.swapped_in` writes the averaged slices into the partitions (and re-gathers the parameters ZeRO-3
keeps whole on every rank, its persistent ones), so the forward gathers the averaged model; :meth:`~WeightEMA.save`
gathers the slices into whole tensors, :meth:`~WeightEMA.load` cuts each rank's slice back out. ZeRO-3's
hierarchical partitioning (``zero_hpz_partition_size`` > 1) and parameters offloaded to NVMe are refused. Under
ZeRO 0–2 every rank holds the whole weights and keeps the same averages. Build the EMA after
``deepspeed.initialize`` (from ``engine.module``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from itnet_scale.checkpoint.atomic_writes import write_bytes_atomically

#: The EMA's file in a checkpoint's tag folder.
EMA_FILE = "ema.safetensors"
_FORMAT = "itnet_scale.weight_ema"


@dataclass
class EMASettings:
    """The weights' EMA: ``decay`` per update (0 = no EMA kept; typical 0.999–0.9999), with ``warmup`` the decay
    of update ``n`` is ``min(decay, 1 − (1 + n / warmup_gamma) ** −warmup_power)`` (timm's ``ModelEmaV3``: power
    2/3 suits runs of a million steps, 3/4 of some hundred thousand)."""

    decay: float = 0.0
    warmup: bool = False
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1) (0 = no EMA), got {self.decay}")
        if not self.warmup_gamma > 0.0:
            raise ValueError(f"ema.warmup_gamma must be > 0, got {self.warmup_gamma}")
        if not self.warmup_power > 0.0:
            raise ValueError(f"ema.warmup_power must be > 0, got {self.warmup_power}")

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    def decay_at(self, update: int) -> float:
        """The decay of update number ``update`` (0 = the first)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + update / self.warmup_gamma) ** -self.warmup_power)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_partitioned(parameter: nn.Parameter) -> bool:
    return hasattr(parameter, "ds_tensor")


def _check_partition(name: str, parameter: nn.Parameter) -> None:
    if getattr(parameter, "ds_secondary_tensor", None) is not None:
        raise ValueError(f"parameter {name}: ZeRO-3 hierarchical partitioning (zero_hpz_partition_size > 1) is not "
                         "supported by the weights' EMA")
    if str(getattr(parameter.ds_tensor, "final_location", None)).endswith("nvme"):
        raise ValueError(f"parameter {name}: ZeRO-3 parameters offloaded to NVMe are not supported by the weights' "
                         "EMA (offload_param to cpu is)")


class WeightEMA:
    """The EMA of ``model``'s trainable parameters with ``settings`` (see the module doc); ``updates`` counts the
    updates so far. ``model``: the plain module (under DeepSpeed, ``engine.module``, after ``deepspeed.initialize``).
    """

    def __init__(self, model: nn.Module, settings: EMASettings) -> None:
        if not settings.enabled:
            raise ValueError("ema.decay is 0: no EMA is kept (set ema.decay, e.g. 0.9999)")
        self.settings = settings
        self.updates = 0
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not self.parameters:
            raise ValueError(f"{type(model).__name__} has no trainable parameter to average")
        partitioned = {_is_partitioned(p) for p in self.parameters.values()}
        if len(partitioned) != 1:
            raise ValueError("some parameters are ZeRO-3 partitions and some are not; build the EMA from the "
                             "module of a DeepSpeed engine after deepspeed.initialize")
        self.partitioned = partitioned.pop()
        if self.partitioned:
            for name, parameter in self.parameters.items():
                _check_partition(name, parameter)
        with torch.no_grad():
            self.averages = {name: self._held(p).to(torch.promote_types(p.dtype, torch.float32), copy=True)
                             for name, p in self.parameters.items()}

    # -- what this rank holds of each parameter ----------------------------------------------------------------

    def _held(self, parameter: nn.Parameter) -> Tensor:
        """The part of ``parameter`` this rank holds, as a live view: the whole weight, or under ZeRO-3 the real
        elements of this rank's flat partition (the last rank's padding left out)."""
        if not self.partitioned:
            return parameter.data
        if not _is_partitioned(parameter):
            raise RuntimeError("the model's parameters are ZeRO-3 partitions no longer; the EMA was built on "
                               "partitioned ones")
        size = parameter.ds_tensor.numel()
        start = parameter.ds_zero_partition_rank * size
        real = max(0, min(size, parameter.ds_numel - start))
        return parameter.ds_tensor.data.narrow(0, 0, real)

    def _check_layout(self) -> None:
        first = next(iter(self.parameters.values()))
        if _is_partitioned(first) != self.partitioned:
            raise RuntimeError("the model was partitioned by ZeRO-3 after the EMA was built; build the EMA after "
                               "deepspeed.initialize, from engine.module")

    # -- training ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self) -> float:
        """Move every average towards the current weights (call after each applied optimizer step, on every rank);
        returns the decay used."""
        self._check_layout()
        decay = self.settings.decay_at(self.updates)
        averages = list(self.averages.values())
        weights = [self._held(p).to(a.dtype) for p, a in zip(self.parameters.values(), averages)]
        torch._foreach_lerp_(averages, weights, 1.0 - decay)
        self.updates += 1
        return decay

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the model's parameters hold the averages (for evaluation); on exit, even on an error,
        the weights they held before, bit for bit. Every rank must enter it (ZeRO-3 re-gathers)."""
        self._check_layout()
        with torch.no_grad():
            saved = [self._held(p).clone() for p in self.parameters.values()]
            self._write(list(self.averages.values()))
        try:
            yield
        finally:
            with torch.no_grad():
                self._write(saved)

    def _write(self, values: list[Tensor]) -> None:
        """Put ``values`` (one per parameter, as :meth:`_held` shapes them) into the parameters; under ZeRO-3 the
        parameters it keeps gathered (its persistent ones) are re-gathered from the new partitions."""
        parameters = list(self.parameters.values())
        gathered = []
        if self.partitioned:
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            gathered = [p for p in parameters if p.ds_status == ZeroParamStatus.AVAILABLE]
            if any(p.ds_status == ZeroParamStatus.INFLIGHT for p in parameters):
                raise RuntimeError("a ZeRO-3 parameter is being gathered; swap the EMA in between forwards")
            if gathered:
                gathered[0].partition(gathered)  # drop the whole copies; their partitions are kept
        for parameter, value in zip(parameters, values):
            self._held(parameter).copy_(value)
        if gathered:
            gathered[0].all_gather(gathered)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"updates": int, "weights": {name: fp32 tensor}}`` with every average whole (under ZeRO-3 gathered
        from the ranks' slices: every rank must call it)."""
        return {"updates": self.updates, "weights": {name: self._whole(name) for name in self.averages}}

    def _whole(self, name: str) -> Tensor:
        average = self.averages[name]
        parameter = self.parameters[name]
        if not self.partitioned:
            return average.detach().clone().cpu()
        from deepspeed.accelerator import get_accelerator

        size = parameter.ds_tensor.numel()
        # gathered where DeepSpeed gathers (NCCL needs the GPU; an offloaded partition lives in CPU memory)
        padded = average.new_zeros(size, device=get_accelerator().current_device_name())
        padded[: average.numel()] = average
        pieces = [torch.empty_like(padded) for _ in range(parameter.ds_zero_partition_world_size)]
        dist.all_gather(pieces, padded, group=parameter.ds_process_group)
        return torch.cat(pieces)[: parameter.ds_numel].view(parameter.ds_shape).cpu()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from any number of ranks, any ZeRO stage): the names and shapes
        must be this model's trainable parameters exactly."""
        weights, updates = state["weights"], state["updates"]
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"EMA state: updates must be an int >= 0, got {updates!r}")
        missing = sorted(set(self.averages) - set(weights))
        unexpected = sorted(set(weights) - set(self.averages))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model's trainable parameters: missing {missing[:5]}"
                             f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{' …' if len(unexpected) > 5 else ''}")
        for name in self.averages:
            shape = tuple(self.parameters[name].ds_shape if self.partitioned else self.parameters[name].shape)
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"EMA state: {name} has shape {tuple(weights[name].shape)}, the model's "
                                 f"parameter {shape}")
        with torch.no_grad():
            for name, average in self.averages.items():
                whole = weights[name].to(device=average.device, dtype=average.dtype).reshape(-1)
                if self.partitioned:
                    parameter = self.parameters[name]
                    start = parameter.ds_zero_partition_rank * parameter.ds_tensor.numel()
                    whole = whole[start: start + average.numel()]
                average.copy_(whole.view_as(average))
        self.updates = updates

    def save(self, tag_dir: str | Path) -> Path:
        """Write :data:`EMA_FILE` into ``tag_dir`` (created if missing) atomically; every rank must call it, rank 0
        writes. Returns the file's path."""
        path = Path(tag_dir) / EMA_FILE
        state = self.state_dict()
        if not _distributed() or dist.get_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            metadata = {"format": _FORMAT, "updates": str(state["updates"]), "decay": repr(self.settings.decay)}
            write_bytes_atomically(path, safetensors_bytes(state["weights"], metadata=metadata))
        if _distributed():
            dist.barrier()
        return path

    def load(self, tag_dir: str | Path) -> None:
        """Restore the EMA from ``tag_dir``'s :data:`EMA_FILE` (written by :meth:`save`, on any number of ranks
        and ZeRO stage); a missing, corrupt or mismatched file raises naming it."""
        path = Path(tag_dir) / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no EMA file in the checkpoint (was it saved with ema.decay = 0?)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path}: unreadable EMA file (truncated or corrupt?): {error}") from None
        if metadata.get("format") != _FORMAT or not metadata.get("updates", "").isdigit():
            raise ValueError(f"{path}: not an EMA file of this package (metadata {metadata})")
        try:
            self.load_state_dict({"updates": int(metadata["updates"]), "weights": weights})
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
