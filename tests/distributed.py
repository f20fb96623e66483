"""The multi-rank tests' harness: run a script on local CPU ranks with DeepSpeed's own launcher, as users do
(``deepspeed --num_accelerators N``), through the one launcher the benchmarks use too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from torch.distributed.elastic.utils.distributed import get_free_port as free_port

from benchmarks.launch import run_local_ranks

#: The checkout's root: the launched ranks' working directory and ``PYTHONPATH``, so workers import ``tests``.
REPO = Path(__file__).resolve().parents[1]


def run_deepspeed(script: Path, args: list[str], ranks: int = 2, timeout: float = 300.0,
                  extra_launcher_args: list[str] | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``deepspeed --num_accelerators ranks script args`` on the CPU from the checkout; return the finished
    process (stdout and stderr together in ``.stdout``). The ranks import the checkout's ``tests``; ``env`` goes on
    top of this process's variables. A timeout kills every rank and raises ``TimeoutError`` with the output's tail."""
    path = {"PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return run_local_ranks([str(script), *args], ranks=ranks, timeout=timeout, cwd=REPO, env={**path, **(env or {})},
                           launcher_args=extra_launcher_args or ())


__all__ = ["REPO", "free_port", "run_deepspeed"]
