"""What the benchmark suites share on the command line: cell formatting, value types, run options."""

from __future__ import annotations

import argparse
import math

from .measure import MIB


def format_ms(value: float) -> str:
    """Milliseconds with 3 significant digits or so: ``1234``, ``56.7``, ``8.90``, ``0.123``."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def format_tflops(value: float | None) -> str:
    """TFLOP/s with 3 significant digits (``312``, ``56.7``, ``0.0983``: a CPU's are small), ``—`` when unmeasured."""
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def format_mib(num_bytes: int | None) -> str:
    """Bytes as MiB with one decimal, ``n/a`` when unmeasured."""
    return "n/a" if num_bytes is None else f"{num_bytes / MIB:.1f}"


def format_ratio(value: float | None) -> str:
    """``2.50×``, or ``—`` when one side is missing."""
    return "—" if value is None else f"{value:.2f}×"


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (not NaN)."""
    value = float(text)
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, *, default_sizes: tuple[int, ...], quick_help: str,
                      default_repeats: int, max_seconds: float) -> None:
    """The options every suite has: ``--n``, ``--quick``, ``--repeats``, ``--warmup``,
    ``--max-seconds-per-case``, ``--threads``, ``--seed``."""
    parser.add_argument("--n", type=positive_int, nargs="+", metavar="N",
                        help=f"sequence lengths (default {' '.join(map(str, default_sizes))})")
    parser.add_argument("--quick", action="store_true", help=quick_help + " (explicit options still win)")
    parser.add_argument("--repeats", type=positive_int,
                        help=f"timed runs per case; report the median (default {default_repeats})")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--max-seconds-per-case", type=positive_float, default=max_seconds,
                        help=f"stop a case's timed runs once more would pass this (default {max_seconds:g}; ≥ 1 run)")
    parser.add_argument("--threads", type=positive_int,
                        help="torch.set_num_threads (default: torch's); on a machine shared with other "
                             "work, fewer threads than cores give steadier figures")
    parser.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
