"""What the command lines that read a run config share (``launch/pretrain.py``, ``launch/finetune.py``,
``tools/evaluate_pretrained.py``): their arguments, a problem found before work starts reported once, and a clean
exit from the process group and the process."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist

from itnet_scale.train.pretrain_data import StartupError


def add_config_arguments(parser: argparse.ArgumentParser, *, config_required: bool = False,
                         what: str = "a pretraining YAML (configs/pretrain/*.yaml)", pipe_urls: bool = True) -> None:
    """``--config`` (``what``), ``key=value`` overrides, ``--allow_pipe_urls`` (where the run streams shard sets:
    ``pipe_urls``) and the launcher's ``--local_rank``."""
    parser.add_argument("--config", type=Path, required=config_required, help=what)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (omegaconf dot-list)")
    if pipe_urls:
        parser.add_argument("--allow_pipe_urls", action="store_true",
                            help="let stream paths be pipe:COMMAND (runs a shell command per file; see the README)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher


def report_startup_error(error: Exception) -> int:
    """Print ``error: MESSAGE`` from rank 0 only (the launcher's ``RANK``; every rank found the same problem) and
    return exit status 2. Ranks that agreed on the error (a :class:`StartupError`) wait for rank 0's line before
    they exit: the launcher stops every rank as soon as one has exited."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    if isinstance(error, StartupError) and dist.is_initialized():
        dist.barrier()
    return 2


def leave_process_group() -> None:
    """Leave the process group, if there is one, together: gloo's threads still running at exit can abort the
    process after its work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(status: int) -> NoReturn:
    """Exit with ``status`` once the work is done and written (checkpoint committed, logs closed, process group
    left), skipping the interpreter's finalization. There, now and then, a finished rank aborted ("terminate called
    without an active exception"): a native thread of the communication stack torn down after the interpreter,
    which turned a run whose every step and file was good into a failed one (the launcher then reports the whole
    job failed). Nothing is left to run at that point but that teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
