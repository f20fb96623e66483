"""init_distributed: a working gloo group, with no shared-memory segment left in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import REPO, free_port

SHM = Path("/dev/shm")

SCRIPT = """
import torch, deepspeed
from itnet_scale.parallel import init_distributed
init_distributed("gloo")
import deepspeed.comm.comm as comm
assert comm.cdb.shm_comm_op is None, "the shared-memory comm op was built"
x = torch.arange(3.0)
deepspeed.comm.all_reduce(x)
print("sum", x.tolist())
"""


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system")
def test_init_distributed_leaves_no_shared_memory_segment() -> None:
    port = free_port()
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sum [0.0, 1.0, 2.0]" in done.stdout
    left = [p.name for p in SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert not left, f"shared-memory segments left behind: {left}"
