"""DeepSpeed checkpoints that are atomic, pruned to the last k, and read back without unpickling.

Layout (DeepSpeed's own, so ``ds_to_universal`` and ``zero_to_fp32`` read it)::

    save_dir/step000000100/{mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...}
    save_dir/latest            # the tag of the newest complete checkpoint

Why not ``engine.save_checkpoint(save_latest=True)`` alone: DeepSpeed lets rank 0 rewrite ``latest`` in place
without waiting for the other ranks' ZeRO files, so a crash can leave ``latest`` naming a half-written tag (or
a truncated ``latest``). Here every rank writes with ``save_latest=False``, DeepSpeed's closing barrier waits for
all of them, and only then rank 0 replaces ``latest`` atomically (temp file + ``os.replace``) and prunes old tags.
A run killed mid-save therefore resumes from the previous checkpoint. ``latest`` is written like every file of this
package (:mod:`~itnet_scale.checkpoint.atomic_writes`): with the user's umask, as DeepSpeed writes its own files.

Every load reads DeepSpeed's files with ``torch.load(weights_only=True)`` (allow-listing DeepSpeed's few plain
record classes; :func:`weights_only_loads`), so a checkpoint cannot run code when resumed or converted. A DeepSpeed
universal checkpoint (:func:`convert_to_universal`, DeepSpeed's ``ds_to_universal``) is recognised by its layout and
loads on any number of ranks.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from itnet_scale.checkpoint.atomic_writes import write_text_atomically

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
UNIVERSAL_LATEST_FILE = "latest_universal"
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
    """The tag ``save_dir/latest`` names, or ``None`` when there is no checkpoint yet. Without ``latest``, the
    ``latest_universal`` that DeepSpeed's own ``ds_to_universal`` command leaves is read instead.

    A ``latest`` naming a missing folder raises ``FileNotFoundError`` naming both.
    """
    path = Path(save_dir) / LATEST_FILE
    if not path.is_file():
        path = Path(save_dir) / UNIVERSAL_LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    if not tag or not (Path(save_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names checkpoint {tag!r}, but {Path(save_dir) / tag} does not exist")
    return tag


def write_latest(save_dir: str | Path, tag: str) -> None:
    """Point ``save_dir/latest`` at ``tag`` atomically: readers see the old tag or the new one, never a mix. The
    file has the umask's permissions, as DeepSpeed's own files do."""
    write_text_atomically(Path(save_dir) / LATEST_FILE, tag)


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
    """DeepSpeed's plain record classes that its checkpoint files hold (an enum, a fragment address, the loss
    scalers' settings): the only non-tensor types a weights-only load of our checkpoints must accept."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


_torch_load = torch.load


def load_weights_only(path: str | Path, map_location: Any = None, *, mmap: bool = False, **_ignored: Any) -> Any:
    """``torch.load(path, weights_only=True)`` accepting DeepSpeed's record types (``mmap``: leave the tensors on
    disk until read, e.g. the Adam moments a consolidation skips). A missing file raises ``FileNotFoundError``; a
    truncated or corrupt one, or one holding objects a weights-only load refuses, ``ValueError``; both name
    ``path``."""
    try:
        with torch.serialization.safe_globals(deepspeed_record_types()):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file is missing") from None
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{path}: holds objects a weights-only load refuses (it will not be unpickled): "
                         f"{first}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: unreadable checkpoint file (truncated or corrupt?): {first}") from None


@contextmanager
def weights_only_loads(mmap: bool = False) -> Iterator[None]:
    """Within the block every ``torch.load`` is :func:`load_weights_only` (memory-mapped when ``mmap`` and the
    source is a path).

    DeepSpeed reads checkpoints with full-pickle ``torch.load`` calls in several places (its checkpoint engine,
    the universal-checkpoint loader, ``ds_to_universal``, ``zero_to_fp32``), and none takes a loader argument;
    replacing the function for the duration of a load is the one way to make all of them refuse to run code from a
    checkpoint.
    """
    def load(f: Any, map_location: Any = None, **_ignored: Any) -> Any:
        return load_weights_only(f, map_location, mmap=mmap and isinstance(f, str | os.PathLike))

    torch.load = load
    try:
        yield
    finally:
        torch.load = _torch_load


def read_client_state(tag_dir: str | Path) -> dict[str, Any]:
    """The shared state a DeepSpeed checkpoint folder holds (step, data position, configs … plus DeepSpeed's own
    entries), read weights-only from rank 0's model-states file — ``mp_rank_00_model_states.pt``, or
    ``zero_pp_rank_0_mp_rank_00_model_states.pt`` at ZeRO-3."""
    tag_dir = Path(tag_dir)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).is_file():
            return load_weights_only(tag_dir / name)
    raise FileNotFoundError(f"{tag_dir}: no DeepSpeed model-states file (mp_rank_00_model_states.pt) in it")


def is_universal_checkpoint(tag_dir: str | Path) -> bool:
    """Whether ``tag_dir`` holds a DeepSpeed universal checkpoint (``ds_to_universal`` output: per-parameter
    folders under ``zero/``) rather than per-rank ZeRO files."""
    return (Path(tag_dir) / "zero").is_dir()


def convert_to_universal(tag_dir: str | Path, output_dir: str | Path) -> Path:
    """Convert the ZeRO 1–3 checkpoint ``tag_dir`` (``save_dir/stepN``) with DeepSpeed's ``ds_to_universal`` into
    ``output_dir/stepN`` and point ``output_dir/latest`` at it; a run whose ``checkpoint_dir`` is ``output_dir``
    then resumes from it on any number of ranks. Reads weights-only. Returns the new tag folder."""
    from deepspeed.checkpoint import ds_to_universal

    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint")
    if not list(tag_dir.glob("*optim_states.pt")):
        raise ValueError(f"{tag_dir}: no ZeRO optimizer files (*optim_states.pt): universal checkpoints are made "
                         "from ZeRO stage 1–3 checkpoints (a ZeRO-0 checkpoint already loads on any number of ranks)")
    target = Path(output_dir) / tag_dir.name
    target.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(target), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
    with weights_only_loads():
        ds_to_universal.main(args)
    write_latest(output_dir, tag_dir.name)
    return target


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
    config = engine._config  # DeepSpeed reads its universal flag at load time; follow what the folder holds
    universal, config.load_universal_checkpoint = config.load_universal_checkpoint, is_universal_checkpoint(
        Path(save_dir) / tag)
    try:
        with weights_only_loads():
            path, client_state = engine.load_checkpoint(str(save_dir), tag=tag,
                                                        load_optimizer_states=load_optimizer_states,
                                                        load_lr_scheduler_states=load_optimizer_states)
    finally:
        config.load_universal_checkpoint = universal
    if path is None:
        raise FileNotFoundError(f"{Path(save_dir) / tag}: DeepSpeed found no checkpoint files to load")
    rank_file = Path(save_dir) / tag / RANK_STATE_FILE.format(rank=_rank())
    rank_state = load_weights_only(rank_file) if rank_file.is_file() else None
    return tag, client_state, rank_state


def deepspeed_logs_to_stderr() -> None:
    """Import DeepSpeed with stdout sent to stderr: its logger binds to the stream it sees at import (its
    accelerator notice included), so that a command's stdout holds only its own output (``--json`` stays JSON).
    Call it before anything imports DeepSpeed; later calls change nothing."""
    with redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401
