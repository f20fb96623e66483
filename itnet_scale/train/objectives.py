"""The pretraining objectives of one micro-step: every stream's batch through the model, the weighted total.

Each stream's batch asks for its objectives by its keys (:meth:`ITNetForPretraining.losses`): text → ``mlm``,
image–text → ``itc`` + ``mlm``, image → ``mpm``, points → ``mpp``. The streams run in the config's order on every
rank (ZeRO-3 gathers parameters per module, so all ranks must run the same modules in the same order). The total
is ``Σ weight(objective) × loss``; an objective that two streams train (``mlm``: text and captions) is logged as
the mean of its values and enters the total once per stream.

The contrastive loss contrasts against every data-parallel rank's pairs: :func:`gather_rows` all-gathers the
pooled features with gradients, before the head standardizes and projects them (rows per rank may differ when
samples were skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from itnet_scale.parallel.ulysses import all_gather
from itnet_scale.train.config import OBJECTIVES, ObjectiveSettings
from itnet_scale.train.loop import Part


def gather_rows(local: Tensor, group: dist.ProcessGroup | None = None) -> tuple[Tensor, int]:
    """Every rank's rows of ``local`` ``[b, e]`` (``b`` may differ between ranks), concatenated in rank order,
    ``[Σb, e]``, differentiable (gradients flow back to each rank's own rows); and the offset of this rank's rows.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return local, 0
    size = torch.tensor([local.shape[0]], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s) for s in sizes]
    padded = torch.cat([local, local.new_zeros(max(counts) - local.shape[0], *local.shape[1:])])
    gathered = all_gather(padded, group)  # [P, max b, e]
    rank = dist.get_rank(group)
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts)]), sum(counts[:rank])


def micro_step_losses(model: Callable[..., dict[str, Tensor]], parts: Sequence[Part],
                      settings: ObjectiveSettings, gather: Callable[[Tensor], tuple[Tensor, int]] | None = None,
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """Run every part (a batch and its weight) of a micro-step through ``model`` (the DeepSpeed engine, called as
    ``model(batch, gather=...)``); returns the weighted total (a scalar to backpropagate) and each objective's
    loss, detached, as the mean over the streams that trained it (stand-ins, weight 0, are left out)."""
    total: Tensor | None = None
    values: dict[str, list[Tensor]] = {}
    for part in parts:
        weight = part.weight
        losses = model(part.batch, gather=gather if settings.gather_contrastive else None)
        for name, loss in losses.items():
            term = loss * (settings.weight(name) * weight)
            total = term if total is None else total + term
            if weight > 0:
                values.setdefault(name, []).append(loss.detach())
    if total is None:
        raise ValueError("a micro-step without batches: the data config has no stream")
    return total, {name: torch.stack(v).mean() for name, v in values.items() if name in OBJECTIVES}
