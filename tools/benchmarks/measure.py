"""Timing and peak-memory measurement shared by every benchmark suite.

What a suite measures is a callable ``fn()`` run ``warmup`` times untimed and then ``repeats``
times timed. Each timed run reports wall-clock seconds (``time.perf_counter``, with a device
synchronize on CUDA so asynchronous kernels are counted) and the *peak memory growth*: how far
memory rose above its level just before the run, at the worst moment during it.

Peak memory growth, by device:

- **CUDA:** ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` before the run: tensor memory through the caching allocator.
- **CPU (Linux):** the process's resident high-water mark. Writing ``"5"`` to
  ``/proc/self/clear_refs`` resets ``VmHWM`` to the current resident size; after the run
  ``VmHWM`` in ``/proc/self/status`` is the peak, so growth is ``VmHWM_after − VmHWM_reset``.
  Before the reset, ``gc.collect()`` and glibc's ``malloc_trim(0)`` hand freed memory back to
  the OS, so a baseline inflated by cached free blocks does not hide the run's own growth.
  This counts every resident page of the process (tensors, autograd buffers, allocator slack),
  which is what decides whether a run fits in RAM.

Where neither works (another OS, a kernel that forbids ``clear_refs``), memory is reported as
unavailable (``None``) with the reason from :func:`peak_memory_unavailable_reason`; timings are
still taken.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import functools
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
MIB = 2**20
GIB = 2**30


# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU), so a timer sees finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------


def read_status_kib(key: str) -> int:
    """One ``kB`` field (e.g. ``VmHWM``, ``VmRSS``) of ``/proc/self/status``, in KiB."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not found in {_STATUS}")


@functools.cache
def _cpu_unavailable_reason() -> str | None:
    if not _STATUS.exists():
        return f"{_STATUS} does not exist (CPU peak memory is measured on Linux only)"
    try:
        read_status_kib("VmHWM")
    except (OSError, RuntimeError, ValueError) as err:
        return f"cannot read VmHWM from {_STATUS}: {err}"
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as err:
        return f"cannot reset the resident high-water mark ({_CLEAR_REFS} is not writable: {err})"
    return None


def peak_memory_unavailable_reason(device: torch.device | str) -> str | None:
    """Why peak memory cannot be measured on ``device`` here, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        return _cpu_unavailable_reason()
    return f"peak memory is not measured on device type {device.type!r}"


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory(device: torch.device | str) -> None:
    """Collect garbage and return cached free memory, so the next baseline is the live memory only."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif (trim := _malloc_trim()) is not None:
        trim(0)


class PeakMemoryTracker:
    """Context manager: the peak memory growth, in bytes, of the code inside it.

    ``growth_bytes`` is set on exit: ``None`` when peak memory cannot be measured on the device
    (see :func:`peak_memory_unavailable_reason`). Usage::

        with PeakMemoryTracker("cpu") as tracker:
            run()
        tracker.growth_bytes
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.unavailable_reason = peak_memory_unavailable_reason(self.device)
        self.growth_bytes: int | None = None
        self._baseline = 0

    def __enter__(self) -> PeakMemoryTracker:
        self.growth_bytes = None
        if self.unavailable_reason is not None:
            return self
        release_free_memory(self.device)
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            _CLEAR_REFS.write_text("5")  # VmHWM := current VmRSS
            self._baseline = read_status_kib("VmHWM") * 1024
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.unavailable_reason is not None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = read_status_kib("VmHWM") * 1024
        self.growth_bytes = max(0, peak - self._baseline)


# --------------------------------------------------------------------------------------
# Timed, memory-tracked runs
# --------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Per timed run: wall seconds and peak memory growth in bytes (None where unmeasurable)."""

    seconds: list[float] = field(default_factory=list)
    peak_growth_bytes: list[int | None] = field(default_factory=list)
    warmup_seconds: list[float] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.seconds)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_seconds

    @property
    def max_peak_growth_bytes(self) -> int | None:
        """The largest growth over the timed runs (the conservative figure for "does it fit")."""
        known = [b for b in self.peak_growth_bytes if b is not None]
        return max(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        """Every figure, JSON-ready."""
        return {
            "repeats": self.repeats,
            "seconds": self.seconds,
            "median_seconds": self.median_seconds,
            "median_ms": self.median_ms,
            "warmup_seconds": self.warmup_seconds,
            "peak_growth_bytes": self.peak_growth_bytes,
            "max_peak_growth_bytes": self.max_peak_growth_bytes,
            "max_peak_growth_mib": None if self.max_peak_growth_bytes is None else self.max_peak_growth_bytes / MIB,
        }


def measure(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    teardown: Callable[[], None] | None = None,
    track_memory: bool = True,
    budget_s: float | None = None,
) -> Measurement:
    """Run ``fn`` ``warmup`` times, then ``repeats`` times timed and memory-tracked.

    Args:
        fn: the work to measure; its return value is dropped inside the tracked region, so
            memory it returns counts as transient.
        repeats: timed runs (≥ 1); report their median.
        warmup: untimed runs first (lazy initialization, allocator caches, first-call
            dispatch); their durations are kept in ``warmup_seconds``.
        device: where ``fn`` runs: decides synchronization and how memory is measured.
        teardown: called after every run, outside timing and memory tracking (e.g. drop
            ``.grad`` so gradients do not accumulate across runs).
        track_memory: measure peak memory growth of each timed run.
        budget_s: stop early (after at least one timed run) once one more run, at the median so
            far, would take the timed total past this many seconds: fewer repeats for slow cases.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    device = torch.device(device)
    result = Measurement()
    for _ in range(warmup):
        result.warmup_seconds.append(_timed_call(fn, device))
        if teardown is not None:
            teardown()
    for _ in range(repeats):
        if track_memory:
            with PeakMemoryTracker(device) as tracker:
                seconds = _timed_call(fn, device)
            result.peak_growth_bytes.append(tracker.growth_bytes)
        else:
            seconds = _timed_call(fn, device)
            result.peak_growth_bytes.append(None)
        result.seconds.append(seconds)
        if teardown is not None:
            teardown()
        if budget_s is not None and sum(result.seconds) + result.median_seconds > budget_s:
            break
    return result


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one ``fn()``, its device work finished; the result is dropped before return."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name`` on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The checked-out commit of the repository holding this file, if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def describe_environment(device: torch.device | str, argv: list[str] | None = None) -> dict[str, Any]:
    """Where and how figures were taken: versions, threads, hardware, date, command line."""
    device = torch.device(device)
    argv = sys.argv if argv is None else argv
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command_line": shlex.join([Path(sys.executable).name, *argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # Other work on the machine inflates and scatters timings; this says how busy it was.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "peak_memory_method": _peak_memory_method(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _peak_memory_method(device: torch.device) -> str:
    reason = peak_memory_unavailable_reason(device)
    if reason is not None:
        return f"unavailable: {reason}"
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated growth"
    return "process resident high-water mark (VmHWM) growth"


def finite_for_json(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, recursively: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_for_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_for_json(v) for v in value]
    return value
