"""Timing and peak-memory measurement: a known allocation is detected, runs are counted, budgets stop early."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.measure import (
    MIB,
    Measurement,
    PeakMemoryTracker,
    describe_environment,
    measure,
    peak_memory_unavailable_reason,
)

CPU_MEMORY_SKIP = peak_memory_unavailable_reason("cpu")
needs_cpu_memory = pytest.mark.skipif(
    CPU_MEMORY_SKIP is not None, reason=f"CPU peak memory cannot be measured here: {CPU_MEMORY_SKIP}"
)
BIG_FLOATS = 256 * MIB // 4  # a 256 MiB fp32 tensor


def _fill_big() -> None:
    x = torch.ones(BIG_FLOATS)  # ones touches every page, so all 256 MiB become resident
    assert x[-1].item() == 1.0


def _tiny_op() -> None:
    (torch.ones(16) + 1).sum()


@needs_cpu_memory
def test_cpu_tracker_detects_a_256_mib_allocation() -> None:
    with PeakMemoryTracker("cpu") as tracker:
        _fill_big()
    assert tracker.growth_bytes is not None
    assert tracker.growth_bytes >= 230 * MIB, tracker.growth_bytes / MIB


@needs_cpu_memory
def test_cpu_tracker_forgets_an_earlier_peak() -> None:
    """The high-water mark is reset per run: a big allocation before does not show in a tiny op after."""
    _fill_big()
    with PeakMemoryTracker("cpu") as tracker:
        _tiny_op()
    assert tracker.growth_bytes is not None
    assert tracker.growth_bytes < 32 * MIB, tracker.growth_bytes / MIB


@needs_cpu_memory
def test_measure_reports_growth_per_timed_run() -> None:
    big = measure(_fill_big, repeats=2, warmup=0, device="cpu")
    tiny = measure(_tiny_op, repeats=2, warmup=0, device="cpu")
    assert all(b >= 230 * MIB for b in big.peak_growth_bytes)
    assert tiny.max_peak_growth_bytes < 32 * MIB < big.max_peak_growth_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tracker_detects_a_256_mib_allocation() -> None:
    with PeakMemoryTracker("cuda") as tracker:
        x = torch.ones(BIG_FLOATS, device="cuda")
        del x
    assert tracker.growth_bytes >= 256 * MIB


def test_unmeasurable_device_reports_none_with_a_reason() -> None:
    assert peak_memory_unavailable_reason("meta") is not None
    result = measure(lambda: torch.empty(4, device="meta"), repeats=2, warmup=0, device="meta")
    assert result.peak_growth_bytes == [None, None] and result.max_peak_growth_bytes is None
    assert result.to_dict()["max_peak_growth_mib"] is None


def test_measure_counts_warmup_repeats_and_teardown() -> None:
    calls, teardowns = [], []
    result = measure(lambda: calls.append(1), repeats=3, warmup=2, device="cpu",
                     teardown=lambda: teardowns.append(1), track_memory=False)
    assert len(calls) == 5 and len(teardowns) == 5
    assert result.repeats == 3 and len(result.warmup_seconds) == 2
    assert all(s > 0 for s in result.seconds)


def test_measure_times_the_work_and_takes_the_median() -> None:
    result = measure(lambda: time.sleep(0.02), repeats=3, warmup=0, track_memory=False)
    assert result.median_seconds >= 0.02
    assert Measurement(seconds=[3.0, 1.0, 2.0]).median_ms == pytest.approx(2000.0)


def test_budget_cuts_repeats_of_slow_work() -> None:
    result = measure(lambda: time.sleep(0.05), repeats=20, warmup=0, track_memory=False, budget_s=0.12)
    assert 1 <= result.repeats <= 2


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (1, -1)])
def test_measure_rejects_bad_counts(repeats: int, warmup: int) -> None:
    with pytest.raises(ValueError, match=r"repeats|warmup"):
        measure(lambda: None, repeats=repeats, warmup=warmup)


def test_environment_names_versions_hardware_and_command() -> None:
    env = describe_environment("cpu", ["tools/bench.py", "operator", "--quick"])
    assert env["torch"] == torch.__version__
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_model"] and env["date"]
    assert env["command_line"].endswith("tools/bench.py operator --quick")
