"""Local ranks through DeepSpeed's launcher: a failing worker and a hung one are reported with their output."""

from __future__ import annotations

import time

import pytest

from benchmarks.launch import run_local_ranks
from benchmarks.train import run_on_ranks


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_failing_worker_and_a_hung_one_are_reported(tmp_path):
    (tmp_path / "failing_worker.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"failing_worker failed \(exit 3\):[\s\S]*exits with return code = 3"):
        run_on_ranks("failing_worker", [], ranks=2, timeout=120, env={"PYTHONPATH": str(tmp_path)})
    (tmp_path / "hung.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"hung\.py timed out after 20 s:[\s\S]*started"):
        run_local_ranks([str(tmp_path / "hung.py")], ranks=2, timeout=20, cwd=tmp_path)
    assert time.monotonic() - start < 60  # the launcher and both ranks were killed, not waited for
