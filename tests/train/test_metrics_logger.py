"""Rank 0 writes TensorBoard scalars that read back; other ranks write nothing; plain lines off a TTY."""

from __future__ import annotations

import io
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from itnet_scale.train.metrics_logger import MetricsLogger, Throughput


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_rank0_writes_scalars_and_plain_lines(tmp_path):
    stream = io.StringIO()
    metrics = MetricsLogger(tmp_path / "tb", rank=0, total_steps=4, print_every=2, stream=stream)
    for step in range(1, 5):
        metrics.log(step, {"loss/total": 5.0 - step, "loss/mlm": 2.0, "lr": 1e-3 * step,
                           "throughput/tokens_per_s": 100.0 * step})
    metrics.close()
    written = scalars(tmp_path / "tb")
    assert written["loss/total"] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    assert [v for _, v in written["lr"]] == pytest.approx([1e-3, 2e-3, 3e-3, 4e-3])
    assert set(written) == {"loss/total", "loss/mlm", "lr", "throughput/tokens_per_s"}
    assert stream.getvalue().splitlines() == ["step 2 total=3 mlm=2 tokens_per_s=200",
                                              "step 4 total=1 mlm=2 tokens_per_s=400"]


def test_other_ranks_write_nothing(tmp_path):
    stream = io.StringIO()
    metrics = MetricsLogger(tmp_path / "tb", rank=1, total_steps=4, stream=stream)
    metrics.log(1, {"loss/total": 1.0})
    metrics.close()
    assert not (tmp_path / "tb").exists() and stream.getvalue() == ""


def test_throughput_rates_and_mfu():
    meter = Throughput(peak_flops=1e12)
    meter.add(samples=8, tokens=8000, data_wait_s=0.0, flops=8000 * 6e6)
    time.sleep(0.05)
    meter.add(samples=8, tokens=8000, data_wait_s=0.02, flops=8000 * 6e6)
    rates = meter.rates()
    elapsed = 16000 / rates["throughput/tokens_per_s"]
    assert 0.05 <= elapsed < 1.0
    assert rates["throughput/samples_per_s"] == pytest.approx(16 / elapsed)
    assert rates["throughput/data_wait_share"] == pytest.approx(0.02 / elapsed)
    assert rates["throughput/mfu"] == pytest.approx(16000 * 6e6 / elapsed / 1e12)
    assert "throughput/mfu" not in Throughput().rates()
