"""The ``operator`` suite: the exact integral transform's backends against SDPA.

For each sequence length ``N``, one set of inputs (``q, k, v`` ``[B, H, N, d]``; ``a, b``
``[B, H, N, r]``; ``β`` ``[H]``; ``w2`` ``[H, r]``; positions ``[B, N, 1]``) is built once and fed
to three methods, in one process:

- ``reference``: :func:`itnet_scale.ops.integrate` with ``Exact(backend="reference")``
  (every pair materialized: memory ``O(B·H·N²·r)``);
- ``tiled``: the same call with ``Exact(backend="torch", block_size=...)``, the tiled form;
- ``SDPA``: :func:`torch.nn.functional.scaled_dot_product_attention` on the same ``q, k, v``:
  the same operator with the kernel MLP off (``β = 1`` makes the bilinear scale ``1/√d``, as
  SDPA's), i.e. the floor the kernel MLP's cost is measured against.

Each method is timed forward only (under ``torch.no_grad``: inference) and forward + backward
(a fixed upstream gradient into ``out.backward``: a training step's operator cost), with the
peak memory growth of each run (see :mod:`.measure`). Softmax mode,
support ``all`` (or ``causal`` / ``is_causal=True`` with ``--causal``).

The reference is skipped where it would not fit: its memory is estimated as
``B·H·N²·r·4 bytes × REFERENCE_TRAINING_FACTOR`` and compared with ``--max-reference-gib``.
Before timing, at every N, the tiled output is checked against the reference's on a sample of
queries (max absolute difference), so a faster tiled backend cannot silently be a wrong one.

The issue's targets are decided from the measured figures by :func:`evaluate_targets`.
Only the public operator API is used, so the suite keeps working as the backends change.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from itnet_scale.ops import ACTIVATIONS, Exact, KernelInputs, KernelSpec, integrate
from itnet_scale.ops.tiled import DEFAULT_BLOCK

from . import BenchmarkSuite, SuiteReport, SuiteUsageError, Table, TargetVerdict
from .cli import (
    add_run_arguments,
    format_mib,
    format_ms,
    format_ratio,
    positive_float,
    positive_int,
)
from .measure import GIB, MIB, Measurement, describe_environment, measure

METHODS = ("reference", "tiled", "sdpa")
METHOD_LABELS = {"reference": "reference", "tiled": "tiled", "sdpa": "SDPA"}
DEFAULT_SIZES = (1024, 4096, 16384)
DEFAULT_REPEATS = 5
QUICK_SIZES = (256, 1024)
QUICK_REPEATS = 2

# Peak memory of the reference in units of one [B, H, N, N, r] fp32 tensor. Forward keeps
# z = a_i + b_j and σ(z) alive together (plus [B, H, N, N] scores); forward + backward also
# keeps them for autograd and adds ∂σ(z), ∂z and the activation's backward temporaries.
# Measured (CPU, resident high-water mark, r = 16, N = 512 and 1024): 2.2× and 5.8–6.0×.
REFERENCE_FORWARD_FACTOR = 2.25
REFERENCE_TRAINING_FACTOR = 6.0

# The issue's targets.
TILED_MEMORY_TARGET_BYTES = 1 * GIB
SDPA_RATIO_TARGET = 3.0
SDPA_RATIO_TARGET_N = 4096
SDPA_RATIO_TARGET_WIDTH = 16
# fp32 tiled vs reference: online normalization reorders sums; anything near this is a bug.
AGREEMENT_TOLERANCE = 1e-3
# The agreement check evaluates the reference on this many evenly spaced queries (first and
# last included), this many at a time: O(queries · N · r) memory, so it runs at every N.
AGREEMENT_QUERIES = 64
AGREEMENT_CHUNK = 16


@dataclass(frozen=True)
class OperatorBenchConfig:
    """One run of the suite. Shapes: ``batch`` B, ``heads`` H, ``head_dim`` d (= value dim),
    ``kernel_width`` r; ``sizes`` are the sequence lengths N (queries = sources).

    repeats: timed runs per case (a case is one N × method × fwd or fwd+bwd), after ``warmup``
        untimed runs; a case stops early once its timed runs would pass ``max_seconds_per_case``
        (always at least one).
    max_reference_gib: skip the reference where its estimated memory is larger.
    block_size: ``(queries, sources)`` per tile for the tiled backend; None: the backend's default.
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    kernel_width: int = 16
    activation: str = "relu"
    causal: bool = False
    repeats: int = DEFAULT_REPEATS
    warmup: int = 1
    max_seconds_per_case: float = 300.0
    max_reference_gib: float = 8.0
    block_size: tuple[int, int] | None = None
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    seed: int = 0

    @property
    def spec(self) -> KernelSpec:
        return KernelSpec(mode="softmax", support="causal" if self.causal else "all", activation=self.activation)


def reference_memory_estimate_bytes(
    batch: int, heads: int, n: int, kernel_width: int, *, training: bool
) -> int:
    """Estimated peak memory of the reference backend at ``N = n`` (queries = sources).

    ``B·H·N²·r·4`` bytes (one fp32 ``[B, H, N, N, r]`` tensor) times
    :data:`REFERENCE_TRAINING_FACTOR` for forward + backward or :data:`REFERENCE_FORWARD_FACTOR`
    for forward only.
    """
    pairs_bytes = batch * heads * n * n * max(kernel_width, 1) * 4
    factor = REFERENCE_TRAINING_FACTOR if training else REFERENCE_FORWARD_FACTOR
    return int(pairs_bytes * factor)


def make_operator_inputs(config: OperatorBenchConfig, n: int) -> tuple[KernelInputs, Tensor]:
    """Inputs for length ``n`` and a fixed upstream gradient ``[B, H, n, d]`` for backward.

    q, k, v ``[B, H, n, d]``; a, b ``[B, H, n, r]``; β = 1 ``[H]``; w2 ``[H, r]`` (scaled by
    ``1/√r``); positions ``0 … n−1`` ``[B, n, 1]``. All but the positions require grad.
    """
    B, H, d, r = config.batch, config.heads, config.head_dim, config.kernel_width
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed + n)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device).requires_grad_(True)

    pos = torch.arange(n, dtype=torch.float32, device=device)[None, :, None].expand(B, n, 1).contiguous()
    inputs = KernelInputs(
        v=randn(B, H, n, d), pos_q=pos, pos_s=pos,
        q=randn(B, H, n, d), k=randn(B, H, n, d), beta=torch.ones(H, device=device, requires_grad=True),
        a=randn(B, H, n, r), b=randn(B, H, n, r), w2=randn(H, r, scale=r**-0.5),
    )
    grad_out = torch.randn(B, H, n, d, generator=generator).to(device)
    return inputs, grad_out


def _leaves(inputs: KernelInputs) -> list[Tensor]:
    return [t for t in inputs.tensors() if t is not None and t.requires_grad]


def method_call(method: str, inputs: KernelInputs, config: OperatorBenchConfig) -> Callable[[], Tensor]:
    """A zero-argument callable computing ``method``'s output ``[B, H, N, d]`` on ``inputs``."""
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(inputs.q, inputs.k, inputs.v, is_causal=config.causal)
    if method == "reference":
        return lambda: integrate(inputs, config.spec, Exact("reference")).out
    if method == "tiled":
        tiled = Exact("torch", block_size=config.block_size)
        return lambda: integrate(inputs, config.spec, tiled).out
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


@dataclass
class CaseResult:
    """One N × method: forward and forward + backward measurements, or why it was skipped."""

    n: int
    method: str
    forward: Measurement | None = None
    training: Measurement | None = None
    skipped: str | None = None
    reference_estimate_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "method": self.method,
            "status": "skipped" if self.skipped else "measured",
            "skip_reason": self.skipped,
            "reference_estimate_bytes": self.reference_estimate_bytes,
            "fwd": None if self.forward is None else self.forward.to_dict(),
            "fwd_bwd": None if self.training is None else self.training.to_dict(),
        }


@dataclass
class OperatorResults:
    """Every case of a run, plus per N the tiled-vs-reference output agreement (max |Δ| on sampled queries)."""

    config: OperatorBenchConfig
    cases: list[CaseResult] = field(default_factory=list)
    max_abs_diff: dict[int, float] = field(default_factory=dict)

    def case(self, n: int, method: str) -> CaseResult | None:
        return next((c for c in self.cases if c.n == n and c.method == method), None)

    def median_ms(self, n: int, method: str, phase: str) -> float | None:
        """Median milliseconds of ``phase`` (``"fwd"`` or ``"fwd_bwd"``), None if not measured."""
        c = self.case(n, method)
        m = None if c is None else (c.forward if phase == "fwd" else c.training)
        return None if m is None else m.median_ms

    def ratio(self, n: int, numerator: str, denominator: str, phase: str) -> float | None:
        """``numerator``'s median time over ``denominator``'s at ``n``: > 1 means slower."""
        top, bottom = self.median_ms(n, numerator, phase), self.median_ms(n, denominator, phase)
        return None if top is None or bottom is None or bottom <= 0 else top / bottom

    def ratios(self) -> list[dict[str, Any]]:
        return [
            {
                "n": n,
                "tiled_over_reference": {p: self.ratio(n, "tiled", "reference", p) for p in ("fwd", "fwd_bwd")},
                "tiled_over_sdpa": {p: self.ratio(n, "tiled", "sdpa", p) for p in ("fwd", "fwd_bwd")},
            }
            for n in self.config.sizes
        ]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_operator_benchmark(
    config: OperatorBenchConfig, progress: Callable[[str], None] | None = _log
) -> OperatorResults:
    """Measure every N × method of ``config``; ``progress`` gets one line per step (stderr by default)."""
    say = progress or (lambda _message: None)
    results = OperatorResults(config)
    for n in config.sizes:
        _run_size(n, config, results, say)  # inputs of one N are freed before the next N
    return results


def _run_size(n: int, config: OperatorBenchConfig, results: OperatorResults, say: Callable[[str], None]) -> None:
    """All methods at length ``n`` on one set of inputs, appended to ``results``."""
    inputs, grad_out = make_operator_inputs(config, n)
    leaves = _leaves(inputs)

    def drop_grads() -> None:
        for t in leaves:
            t.grad = None

    estimate = reference_memory_estimate_bytes(config.batch, config.heads, n, config.kernel_width, training=True)
    run_reference = "reference" in config.methods and estimate <= config.max_reference_gib * GIB
    if "tiled" in config.methods:
        say(f"N={n}: checking tiled against reference on {min(n, AGREEMENT_QUERIES)} queries …")
        results.max_abs_diff[n] = _max_abs_diff(inputs, config)
        say(f"N={n}: tiled vs reference max |Δ| = {results.max_abs_diff[n]:.2e}")

    for method in config.methods:
        label = METHOD_LABELS[method]
        case = CaseResult(n, method, reference_estimate_bytes=estimate if method == "reference" else None)
        results.cases.append(case)
        if method == "reference" and not run_reference:
            case.skipped = f"needs ~{estimate / GIB:.1f} GiB"
            say(f"N={n} {label}: skipped ({case.skipped} > {config.max_reference_gib:g} GiB)")
            continue
        call = method_call(method, inputs, config)

        def forward(call: Callable[[], Tensor] = call) -> None:
            with torch.no_grad():
                call()

        def forward_backward(call: Callable[[], Tensor] = call) -> None:
            call().backward(grad_out)

        common = {"repeats": config.repeats, "warmup": config.warmup, "device": torch.device(config.device),
                  "teardown": drop_grads, "budget_s": config.max_seconds_per_case}
        say(f"N={n} {label}: fwd …")
        case.forward = measure(forward, **common)
        say(f"N={n} {label}: fwd {case.forward.median_ms:.1f} ms; fwd+bwd …")
        case.training = measure(forward_backward, **common)
        say(f"N={n} {label}: fwd+bwd {case.training.median_ms:.1f} ms")


def _max_abs_diff(inputs: KernelInputs, config: OperatorBenchConfig) -> float:
    """``max |tiled − reference|`` of the forward outputs, over up to :data:`AGREEMENT_QUERIES` queries.

    The tiled backend computes all ``N`` queries (as benchmarked); the reference only the sampled
    ones against all sources (``Nq ≠ Ns`` inputs), :data:`AGREEMENT_CHUNK` at a time, so the check
    fits at every ``N`` where the full reference would not.
    """
    n = inputs.pos_q.shape[1]
    sample = torch.linspace(0, n - 1, min(n, AGREEMENT_QUERIES), device=inputs.v.device).round().long().unique()
    worst = 0.0
    with torch.no_grad():
        tiled = method_call("tiled", inputs, config)()
        for chunk in sample.split(AGREEMENT_CHUNK):
            queries = replace(inputs, q=inputs.q[:, :, chunk], a=inputs.a[:, :, chunk], pos_q=inputs.pos_q[:, chunk])
            reference = integrate(queries, config.spec, Exact("reference")).out
            diff = (tiled[:, :, chunk] - reference).abs().max().item()
            if math.isnan(diff):  # max() would drop a NaN; a NaN output must read as disagreement
                return math.nan
            worst = max(worst, diff)
    return worst


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def evaluate_targets(results: OperatorResults) -> list[TargetVerdict]:
    """The issue's three targets, each decided from the measured figures of ``results``."""
    return [_memory_target(results), _reference_speed_target(results), _sdpa_ratio_target(results)]


def _memory_target(results: OperatorResults) -> TargetVerdict:
    name, limit = "tiled_memory", TILED_MEMORY_TARGET_BYTES
    description = f"tiled fwd+bwd peak memory growth at the largest N ≤ {limit / GIB:g} GiB"
    measured = [c for c in results.cases if c.method == "tiled" and c.training is not None]
    if not measured:
        return TargetVerdict(name, description, "not evaluated", "tiled fwd+bwd was not measured")
    largest = max(measured, key=lambda c: c.n)
    peak = largest.training.max_peak_growth_bytes
    if peak is None:
        return TargetVerdict(name, description, "not evaluated", f"peak memory unavailable at N={largest.n}")
    status = "met" if peak <= limit else "not met"
    return TargetVerdict(name, description, status, f"N={largest.n}: {peak / MIB:.1f} MiB")


def _reference_speed_target(results: OperatorResults) -> TargetVerdict:
    name = "tiled_not_slower_than_reference"
    description = "tiled never slower than reference where reference runs (fwd and fwd+bwd)"
    compared, slower = [], []
    for n in results.config.sizes:
        for phase, label in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
            ratio = results.ratio(n, "tiled", "reference", phase)
            if ratio is None:
                continue
            compared.append(f"N={n} {label} {ratio:.2f}×")
            if ratio > 1.0:
                slower.append(f"N={n} {label}")
    if not compared:
        return TargetVerdict(name, description, "not evaluated", "reference and tiled never both ran")
    detail = "tiled/reference: " + ", ".join(compared)
    if slower:
        detail += "; slower at " + ", ".join(slower)
    return TargetVerdict(name, description, "not met" if slower else "met", detail)


def _sdpa_ratio_target(results: OperatorResults) -> TargetVerdict:
    n, limit, width = SDPA_RATIO_TARGET_N, SDPA_RATIO_TARGET, SDPA_RATIO_TARGET_WIDTH
    name = "tiled_vs_sdpa"
    description = f"softmax, r={width}: tiled fwd+bwd ≤ {limit:g}× SDPA's at N={n}"
    if results.config.kernel_width != width:
        return TargetVerdict(name, description, "not evaluated", f"run used r={results.config.kernel_width}")
    ratio = results.ratio(n, "tiled", "sdpa", "fwd_bwd")
    if ratio is None:
        return TargetVerdict(name, description, "not evaluated", f"tiled and SDPA not both measured at N={n}")
    return TargetVerdict(name, description, "met" if ratio <= limit else "not met", f"tiled/SDPA = {ratio:.2f}×")


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

COLUMNS = [
    "N", "method", "runs", "fwd ms", "fwd+bwd ms", "fwd peak MiB", "fwd+bwd peak MiB",
    "tiled/ref fwd", "tiled/ref fwd+bwd", "tiled/SDPA fwd", "tiled/SDPA fwd+bwd",
]



def _runs(forward: Measurement, training: Measurement) -> str:
    """Timed runs behind the medians: one number, or ``fwd/fwd+bwd`` when a budget cut one short."""
    if forward.repeats == training.repeats:
        return str(forward.repeats)
    return f"{forward.repeats}/{training.repeats}"




def results_table(results: OperatorResults) -> Table:
    """One row per (N, method): median times, peak memory growth, and on tiled rows the ratios."""
    cfg = results.config
    support = "causal" if cfg.causal else "all"
    bq, bs = cfg.block_size or DEFAULT_BLOCK
    title = (f"operator: softmax, support {support}, B={cfg.batch} H={cfg.heads} d={cfg.head_dim} "
             f"r={cfg.kernel_width} σ={cfg.activation}, tiled block {bq}×{bs}, {cfg.device}; "
             "medians of `runs` timed runs")
    table = Table(title, COLUMNS, right_aligned=set(COLUMNS) - {"method"})
    for case in results.cases:
        label = METHOD_LABELS[case.method]
        if case.skipped:
            table.add_row([str(case.n), label, "0", f"skipped ({case.skipped})", *["—"] * (len(COLUMNS) - 4)])
            continue
        ratios = ["", "", "", ""]
        if case.method == "tiled":
            ratios = [format_ratio(results.ratio(case.n, "tiled", other, phase))
                      for other in ("reference", "sdpa") for phase in ("fwd", "fwd_bwd")]
        table.add_row([
            str(case.n), label, _runs(case.forward, case.training),
            format_ms(case.forward.median_ms), format_ms(case.training.median_ms),
            format_mib(case.forward.max_peak_growth_bytes), format_mib(case.training.max_peak_growth_bytes), *ratios,
        ])
    return table


def build_report(results: OperatorResults, environment: dict[str, Any] | None = None) -> SuiteReport:
    """Table, target verdicts, agreement notes and every figure (JSON) of a run.

    ``environment`` is :func:`~.measure.describe_environment` taken when
    the run started (described now if None).
    """
    cfg = results.config
    notes = []
    for n, diff in results.max_abs_diff.items():
        verdict = "agree" if diff <= AGREEMENT_TOLERANCE else f"DISAGREE (> {AGREEMENT_TOLERANCE:g})"
        notes.append(f"N={n}: tiled and reference outputs {verdict} on {min(n, AGREEMENT_QUERIES)} sampled "
                     f"queries: max |Δ| = {diff:.2e}")
    notes.append("Ratios are tiled time / other time (> 1: tiled is slower). Peak MiB: growth above the "
                 "memory in use before the run, max over timed runs.")
    targets = evaluate_targets(results)
    config = asdict(cfg)
    config["block_size"] = list(cfg.block_size or DEFAULT_BLOCK)
    data = {
        "config": config,
        "environment": environment or describe_environment(cfg.device),
        "rows": [c.to_dict() for c in results.cases],
        "ratios": results.ratios(),
        "reference_estimates": [
            {"n": n,
             "fwd_bytes": reference_memory_estimate_bytes(cfg.batch, cfg.heads, n, cfg.kernel_width, training=False),
             "fwd_bwd_bytes": reference_memory_estimate_bytes(cfg.batch, cfg.heads, n, cfg.kernel_width,
                                                              training=True)}
            for n in cfg.sizes
        ],
        "tiled_vs_reference_max_abs_diff": [{"n": n, "queries_compared": min(n, AGREEMENT_QUERIES), "max_abs_diff": d}
                                            for n, d in results.max_abs_diff.items()],
        "targets": [t.to_dict() for t in targets],
    }
    return SuiteReport(tables=[results_table(results)], targets=targets, notes=notes, data=data)


# --------------------------------------------------------------------------------------
# The suite (CLI options)
# --------------------------------------------------------------------------------------


class OperatorSuite(BenchmarkSuite):
    """``tools/bench.py operator``: reference vs tiled vs SDPA, time and peak memory."""

    name = "operator"
    description = "forward and forward+backward time and peak memory: reference vs tiled vs SDPA"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_arguments(parser, default_sizes=DEFAULT_SIZES, default_repeats=DEFAULT_REPEATS, max_seconds=300.0,
                          quick_help=f"N ∈ {{{', '.join(map(str, QUICK_SIZES))}}}, {QUICK_REPEATS} repeats")
        parser.add_argument("--max-reference-gib", type=positive_float, default=8.0,
                            help="skip the reference where its estimated memory is larger (default 8)")
        parser.add_argument("--causal", action="store_true",
                            help="causal support (and is_causal SDPA) instead of support 'all'")
        parser.add_argument("--block", type=positive_int, nargs="+", metavar="SIZE",
                            help="tiled block size: one int (square) or queries sources (default: backend's)")
        parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                            help="which methods to run (default all)")
        parser.add_argument("--batch", type=positive_int, default=1, help="batch size B (default 1)")
        parser.add_argument("--heads", type=positive_int, default=4, help="heads H (default 4)")
        parser.add_argument("--head-dim", type=positive_int, default=64, help="head dim d (default 64)")
        parser.add_argument("--width", type=positive_int, default=16, help="kernel-MLP width r (default 16)")
        parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu",
                            help="kernel-MLP activation σ (default relu, the layer's default)")
        parser.add_argument("--device", default=None,
                            help="torch device (default: cuda if available, else cpu)")

    def config_from_args(self, args: argparse.Namespace) -> OperatorBenchConfig:
        """Resolve defaults (``--quick``, device) and check the options can run here."""
        sizes = tuple(args.n) if args.n else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
        block = None
        if args.block is not None:
            if len(args.block) > 2:
                raise SuiteUsageError(f"--block takes one or two sizes, got {len(args.block)}")
            block = (args.block[0], args.block[-1])
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            parsed = torch.device(device)
        except RuntimeError as err:
            raise SuiteUsageError(f"--device {device!r}: {err}") from err
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise SuiteUsageError(f"--device {device!r}: CUDA is not available")
        methods = tuple(m for m in METHODS if m in args.methods)  # canonical order, no duplicates
        return OperatorBenchConfig(
            sizes=tuple(dict.fromkeys(sizes)), batch=args.batch, heads=args.heads, head_dim=args.head_dim,
            kernel_width=args.width, activation=args.activation, causal=args.causal, repeats=repeats,
            warmup=args.warmup,
            max_seconds_per_case=args.max_seconds_per_case, max_reference_gib=args.max_reference_gib,
            block_size=block, methods=methods, device=device, seed=args.seed,
        )

    def run(self, args: argparse.Namespace) -> SuiteReport:
        config = self.config_from_args(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        environment = describe_environment(config.device, getattr(args, "argv", None))
        return build_report(run_operator_benchmark(config), environment)
