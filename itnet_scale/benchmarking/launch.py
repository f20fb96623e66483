"""Starting DeepSpeed processes on this machine: local ranks through DeepSpeed's own launcher, or one process.

- :func:`run_deepspeed` runs a script on ``ranks`` local CPU ranks with ``deepspeed --num_accelerators N``, as
  users do (the multi-rank tests and the ZeRO memory benchmark use it);
- :func:`init_single_process` makes this process a world of one (gloo), so ``deepspeed.initialize`` runs in
  it without a launcher (the training benchmark).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

#: The folder holding the ``itnet_scale`` package (the checkout's root): the launched ranks' working directory
#: and ``PYTHONPATH``, so workers import the package (and, from a checkout, ``tests``) without installing.
REPO = Path(__file__).resolve().parents[2]


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


def init_single_process(backend: str = "gloo") -> bool:
    """Make this process rank 0 of a world of 1 (``deepspeed.init_distributed`` on ``backend``), unless a
    process group exists already; returns whether it created one.

    The group lives as long as the process (it is destroyed at exit): DeepSpeed caches the groups it derives
    from it, so a group destroyed and created anew would leave those stale.
    """
    import torch.distributed as dist

    from itnet_scale.parallel.process_group import init_distributed

    if dist.is_available() and dist.is_initialized():
        return False
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    init_distributed(backend)
    atexit.register(_destroy_process_group)
    return True


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 — DeepSpeed's logger (a handler on ``sys.stdout``), its
    extension builds, C++ prints — to stderr while inside, so a benchmark's stdout holds only its report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
