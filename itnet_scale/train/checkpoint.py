"""DeepSpeed checkpoints that are atomic, pruned to the last k, and read back without unpickling.

Layout (DeepSpeed's own, so ``ds_to_universal`` and ``zero_to_fp32`` read it)::

    save_dir/step000000100/{mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...}
    save_dir/latest            # the tag of the newest complete checkpoint

Why not ``engine.save_checkpoint(save_latest=True)`` alone: DeepSpeed lets rank 0 rewrite ``latest`` in place
without waiting for the other ranks' ZeRO files, so a crash can leave ``latest`` naming a half-written tag (or
a truncated ``latest``). Here every rank writes with ``save_latest=False``, DeepSpeed's closing barrier waits for
all of them, and only then rank 0 replaces ``latest`` atomically (temp file + ``os.replace``) and prunes old tags.
A run killed mid-save therefore resumes from the previous checkpoint.

Loading goes through :class:`WeightsOnlyLoader`, which reads DeepSpeed's files with
``torch.load(weights_only=True)`` (allow-listing DeepSpeed's few plain record classes), so a checkpoint
cannot run code when resumed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
RANK_STATE_FILE = "rank_state-{rank:05d}.pt"
_TAG = re.compile(r"^step(\d+)$")


def step_tag(step: int) -> str:
    """The checkpoint tag of optimizer step ``step`` (sorts by step)."""
    return f"step{step:09d}"


def checkpoint_tags(save_dir: str | Path) -> list[str]:
    """The step tags under ``save_dir``, oldest first (complete or not; see :func:`read_latest`)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    tags = [p.name for p in save_dir.iterdir() if p.is_dir() and _TAG.match(p.name)]
    return sorted(tags, key=lambda tag: int(_TAG.match(tag).group(1)))


def read_latest(save_dir: str | Path) -> str | None:
    """The tag ``save_dir/latest`` names, or ``None`` when there is no checkpoint yet.

    A ``latest`` naming a missing folder raises ``FileNotFoundError`` naming both.
    """
    path = Path(save_dir) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    if not tag or not (Path(save_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names checkpoint {tag!r}, but {Path(save_dir) / tag} does not exist")
    return tag


def write_latest(save_dir: str | Path, tag: str) -> None:
    """Point ``save_dir/latest`` at ``tag`` atomically: readers see the old tag or the new one, never a mix."""
    save_dir = Path(save_dir)
    temporary = save_dir / f".{LATEST_FILE}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, save_dir / LATEST_FILE)
    directory = os.open(save_dir, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def prune_checkpoints(save_dir: str | Path, keep_last: int, protect: str) -> list[str]:
    """Delete all but the newest ``keep_last`` step tags (0 keeps everything), never ``protect``; return the
    deleted tags."""
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0 (0 = keep all), got {keep_last}")
    if keep_last == 0:
        return []
    tags = checkpoint_tags(save_dir)
    doomed = [tag for tag in tags[: max(len(tags) - keep_last, 0)] if tag != protect]
    for tag in doomed:
        shutil.rmtree(Path(save_dir) / tag)
    return doomed


def discard_uncommitted(save_dir: str | Path) -> list[str]:
    """Delete step tags newer than ``latest``: saves that were interrupted before ``latest`` moved, so they may be
    incomplete (and would otherwise confuse retention). Returns the deleted tags."""
    latest = read_latest(save_dir)
    if latest is None:
        return []
    newest = int(_TAG.match(latest).group(1)) if _TAG.match(latest) else None
    doomed = [tag for tag in checkpoint_tags(save_dir) if newest is not None and int(_TAG.match(tag).group(1)) > newest]
    for tag in doomed:
        logger.warning("discarding %s: a save interrupted before %s moved", Path(save_dir) / tag, LATEST_FILE)
        shutil.rmtree(Path(save_dir) / tag)
    return doomed


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine: Any, save_dir: str | Path, step: int, client_state: dict[str, Any],
                    rank_state: dict[str, Any] | None = None, keep_last: int = 0) -> str:
    """Save ``engine`` (a ``DeepSpeedEngine``) as tag ``step_tag(step)`` on every rank, then move ``latest`` and
    prune; returns the tag. Must be called by all ranks.

    ``client_state`` is shared (DeepSpeed stores rank 0's copy); ``rank_state`` is this rank's own (its random
    generators), written as ``rank_state-{rank}.pt`` next to DeepSpeed's files.
    """
    tag = step_tag(step)
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
    if rank_state is not None:
        torch.save(rank_state, Path(save_dir) / tag / RANK_STATE_FILE.format(rank=_rank()))
    _barrier()  # every rank's files are complete (DeepSpeed ends with a barrier too; this one is ours to rely on)
    if _rank() == 0:
        write_latest(save_dir, tag)
        prune_checkpoints(save_dir, keep_last, protect=tag)
    _barrier()
    return tag


def deepspeed_record_types() -> list[type]:
    """DeepSpeed's plain record classes that its optimizer-state files hold (an enum, a fragment address, the
    loss scalers' settings): the only non-tensor types a weights-only load of our checkpoints must accept."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


class WeightsOnlyLoader:
    """Wraps DeepSpeed's checkpoint engine so its ``load`` uses ``torch.load(weights_only=True)``."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(deepspeed_record_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: checkpoint file is missing") from None
        except (RuntimeError, EOFError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path}: unreadable checkpoint file (truncated or corrupt?): {first}") from None


def load_checkpoint(engine: Any, save_dir: str | Path, tag: str | None = None, *,
                    load_optimizer_states: bool = True) -> tuple[str, dict[str, Any], dict[str, Any] | None] | None:
    """Load tag ``tag`` (default: ``latest``) from ``save_dir`` into ``engine`` on every rank and return
    ``(tag, client_state, rank_state)``, or ``None`` when ``save_dir`` holds no checkpoint and no tag was asked
    for. ``rank_state`` is ``None`` when this rank saved none (e.g. the run had fewer ranks)."""
    if tag is None:
        if _rank() == 0:
            discard_uncommitted(save_dir)
        _barrier()
        tag = read_latest(save_dir)
    if tag is None:
        return None
    if not (Path(save_dir) / tag).is_dir():
        raise FileNotFoundError(f"{Path(save_dir) / tag}: no such checkpoint")
    original = engine.checkpoint_engine
    engine.checkpoint_engine = WeightsOnlyLoader(original)
    try:
        path, client_state = engine.load_checkpoint(str(save_dir), tag=tag,
                                                    load_optimizer_states=load_optimizer_states,
                                                    load_lr_scheduler_states=load_optimizer_states)
    finally:
        engine.checkpoint_engine = original
    if path is None:
        raise FileNotFoundError(f"{Path(save_dir) / tag}: DeepSpeed found no checkpoint files to load")
    rank_file = Path(save_dir) / tag / RANK_STATE_FILE.format(rank=_rank())
    rank_state = WeightsOnlyLoader(original).load(str(rank_file)) if rank_file.is_file() else None
    return tag, client_state, rank_state
