"""The multi-rank tests' harness: run a script on local CPU ranks with DeepSpeed's own launcher, as users do
(``deepspeed --num_accelerators N``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

#: The checkout's root: the launched ranks' working directory and ``PYTHONPATH``, so workers import ``tests``.
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now (for the rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed(script: Path, args: list[str], ranks: int = 2, timeout: float = 300.0,
                  extra_launcher_args: list[str] | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``deepspeed --num_accelerators ranks script args`` on the CPU; return the finished process
    (stdout and stderr together in ``.stdout``). Each rank gets one intra-op thread (``OMP_NUM_THREADS=1``) and
    the variables of ``env`` on top of this process's. On timeout the launcher and every rank are killed and
    ``AssertionError`` carries the output's tail."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(ranks),
               "--master_port", str(free_port()), *(extra_launcher_args or []), str(script), *args]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           **(env or {})}
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and every rank it started
            stdout, _ = process.communicate()
            raise AssertionError(f"timed out after {timeout} s:\n{stdout[-4000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout)
