"""Local CPU ranks started by DeepSpeed's own launcher, as users start them (``deepspeed --num_accelerators N``).

The one way ranks are started outside a cluster: the ZeRO memory benchmark (:mod:`.train`) and the multi-rank
tests (``tests/distributed.py``) both come here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch.distributed.elastic.utils.distributed import get_free_port


def run_local_ranks(target: Sequence[str], *, ranks: int, timeout: float, cwd: Path,
                    env: Mapping[str, str] | None = None,
                    launcher_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``deepspeed --num_accelerators ranks [launcher_args] target`` (``target``: a script and its arguments, or
    ``--module NAME`` and its arguments) in ``cwd``; return the finished process, stdout and stderr together in
    ``.stdout``. Each rank gets one intra-op thread (``OMP_NUM_THREADS=1``) and ``env`` on top of this process's
    variables. After ``timeout`` seconds the launcher and every rank are killed and ``TimeoutError`` carries the
    output's tail."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(ranks),
               "--master_port", str(get_free_port()), *launcher_args, *target]
    with subprocess.Popen(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and every rank it started
            output, _ = process.communicate()
            raise TimeoutError(f"{' '.join(target[:2])} timed out after {timeout} s:\n{output[-4000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, output)
