"""The ``operator`` suite: the exact integral transform's backends against SDPA and FlexAttention.

For each sequence length ``N``, one set of inputs (``q, k, v`` ``[B, H, N, d]``; ``a, b``
``[B, H, N, r]``; ``β`` ``[H]``; ``w2`` ``[H, r]``; positions ``[B, N, 1]``) is built once and fed
to five methods, in one process:

- ``reference``: :func:`itnet_scale.ops.integrate` with ``Exact(backend="reference")``
  (every pair materialized: memory ``O(B·H·N²·r)``);
- ``tiled``: the same call with ``Exact(backend="torch", block_size=...)``, the tiled form;
- ``SDPA``: :func:`torch.nn.functional.scaled_dot_product_attention` on the same ``q, k, v``:
  the same operator with the kernel MLP off (``β = 1`` makes the bilinear scale ``1/√d``, as
  SDPA's), i.e. the floor the kernel MLP's cost is measured against;
- ``triton``: the same call with ``Exact(backend="triton")``, the fused Triton kernels (forward and backward);
- ``flex``: compiled FlexAttention (:mod:`torch.nn.attention.flex_attention`) with a ``score_mod`` that adds the
  kernel MLP to the scaled bilinear score, ``β·q·k/√d + Σ_r w2_r σ(a_ir + b_jr)`` (:func:`flex_score_mod`: the
  benchmarked score exactly, as the inputs have no position term, offset table or decay), and a causal block mask
  with ``--causal`` (:func:`flex_block_mask`): what a general attention compiler makes of the same operator.

``triton`` and ``flex`` are timed on CUDA only (:data:`GPU_METHODS`): the kernels run on a CPU only under Triton's
interpreter and FlexAttention has no backward there, so CPU timings would say nothing about them. Without CUDA
(or with the Triton kernels built for the interpreter) a run that names them in ``--methods`` measures nothing
and exits with status 2 and one line giving the command to run on a GPU (:func:`gpu_only_problem`); a run with
the default methods lists them as skipped, with that command in a note.

Each method is timed forward only (under ``torch.no_grad``: inference) and forward + backward
(a fixed upstream gradient into ``out.backward``: a training step's operator cost), with the
peak memory growth of each run (see :mod:`.measure`), and its model TFLOP/s: the FLOPs
:mod:`itnet_scale.models.flops` counts for the transform (``2·(d + e + 1.5·r)`` per head and visible pair forward,
× 3 forward + backward; SDPA's without the ``r`` term) over the median time (:func:`operator_flops`). Softmax mode,
support ``all`` (or ``causal`` / ``is_causal=True`` with ``--causal``).

The reference is skipped where it would not fit: its memory is estimated as
``B·H·N²·r·4 bytes × REFERENCE_TRAINING_FACTOR`` and compared with ``--max-reference-gib``.
Before timing, at every N, the outputs of tiled, triton and flex are checked against the reference's on a sample
of queries (max absolute difference), so a faster method cannot silently be a wrong one.

The issue's targets are decided from the measured figures by :func:`evaluate_targets`.
Only the public operator API is used, so the suite keeps working as the backends change.
"""

from __future__ import annotations

import argparse
import functools
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from itnet_scale.models.flops import TrainingFlops
from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.ops import ACTIVATIONS, Exact, KernelInputs, KernelSpec, integrate
from itnet_scale.ops.exact import exact_backend
from itnet_scale.ops.tiled import DEFAULT_BLOCK
from itnet_scale.ops.triton import interpreting

from . import BenchmarkSuite, SuiteReport, SuiteUnavailable, SuiteUsageError, Table, TargetVerdict
from .cli import (
    add_run_arguments,
    format_mib,
    format_ms,
    format_ratio,
    format_tflops,
    positive_float,
    positive_int,
)
from .measure import GIB, MIB, Measurement, describe_environment, measure

METHODS = ("reference", "tiled", "sdpa", "triton", "flex")
METHOD_LABELS = {"reference": "reference", "tiled": "tiled", "sdpa": "SDPA", "triton": "triton", "flex": "flex"}
#: Methods timed on CUDA only (see the module doc).
GPU_METHODS = ("triton", "flex")
#: Methods whose output is checked against the reference's before timing.
CHECKED_METHODS = ("tiled", "triton", "flex")
#: How the table's ratios are formed: (numerator, denominators), each a pair of columns (fwd, fwd+bwd).
RATIOS = (("tiled", ("reference", "sdpa")), ("triton", ("sdpa", "tiled")))
#: The script, as run from the repository root: the start of the command a no-GPU run points to.
BENCH_COMMAND = ("python", "tools/bench.py")
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

# The targets.
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
    """A zero-argument callable computing ``method``'s output ``[B, H, N, d]`` on ``inputs``.

    What a method needs besides the inputs (flex's score_mod, block mask and compiled function) is built here,
    once, outside the callable that is timed.
    """
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(inputs.q, inputs.k, inputs.v, is_causal=config.causal)
    if method == "reference":
        return lambda: integrate(inputs, config.spec, Exact("reference")).out
    if method == "tiled":
        tiled = Exact("torch", block_size=config.block_size)
        return lambda: integrate(inputs, config.spec, tiled).out
    if method == "triton":
        fused = Exact("triton")
        # backend "triton" quietly runs "torch" for a call its kernels do not cover: that would time the wrong thing.
        if exact_backend(inputs, config.spec, fused.backend) != "triton":
            raise RuntimeError("the Triton kernels do not cover this configuration (the exact integrator would run "
                               "the torch backend under the name triton)")
        return lambda: integrate(inputs, config.spec, fused).out
    if method == "flex":
        return flex_call(inputs, config, _compiled_flex_attention())
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


# --------------------------------------------------------------------------------------
# FlexAttention
# --------------------------------------------------------------------------------------


def flex_score_mod(inputs: KernelInputs, spec: KernelSpec) -> Callable[..., Tensor]:
    """FlexAttention's ``score_mod`` for the operator's softmax score on ``inputs``.

    FlexAttention hands it ``q_i·k_j/√d`` (its default scale) and the pair's ``(batch, head, i, j)``; it returns
    ``β_h·q_i·k_j/√d + Σ_r w2_hr σ(a_ir + b_jr)``: the bilinear term and the depth-1 kernel MLP, its ``r`` terms
    read from ``a`` ``[B, H, N, r]``, ``b`` and ``w2`` ``[H, r]`` one scalar at a time (a score_mod is elementwise:
    no reduction over ``r`` inside it). FlexAttention's gradients reach these captured tensors, so forward +
    backward trains the same parameters as the other methods. It does not cover the position term ``Ua(p_i − p_j)``,
    hidden MLP layers, the offset table or the decay; the suite's inputs have none of them.
    """
    if inputs.pos_weight is not None or inputs.mlp_w is not None or inputs.table is not None \
            or inputs.tau_q is not None:
        raise ValueError("flex_score_mod covers β q·k/√d + w2ᵀσ(a_i + b_j) only: these inputs have a position "
                         "term, hidden layers, an offset table or a decay")
    activation = ACTIVATIONS[spec.activation]
    a, b, w2, beta = inputs.a, inputs.b, inputs.w2, inputs.beta
    width = w2.shape[-1]

    def score_mod(score: Tensor, batch: Tensor, head: Tensor, query: Tensor, source: Tensor) -> Tensor:
        total = score * beta[head]
        for unit in range(width):
            total = total + w2[head, unit] * activation(a[batch, head, query, unit] + b[batch, head, source, unit])
        return total

    return score_mod


def flex_block_mask(config: OperatorBenchConfig, n: int) -> BlockMask | None:
    """FlexAttention's block mask for the suite's support at length ``n``: causal (``j ≤ i``: the positions are
    ``0 … n−1``, so index order is position order) with ``--causal``, else None (every pair)."""
    if not config.causal:
        return None

    def causal(batch: Tensor, head: Tensor, query: Tensor, source: Tensor) -> Tensor:
        return source <= query

    return create_block_mask(causal, None, None, n, n, device=config.device)


def flex_call(inputs: KernelInputs, config: OperatorBenchConfig,
              attention: Callable[..., Tensor] = flex_attention) -> Callable[[], Tensor]:
    """A zero-argument callable: ``attention`` (FlexAttention, compiled or not) with :func:`flex_score_mod` and
    :func:`flex_block_mask` on ``inputs``: ``[B, H, N, d]``."""
    score_mod = flex_score_mod(inputs, config.spec)
    block_mask = flex_block_mask(config, inputs.v.shape[2])

    def call() -> Tensor:
        q, k, v = inputs.q, inputs.k, inputs.v
        if not torch.is_grad_enabled():  # forward only: FlexAttention refuses inputs that require grad on a CPU
            q, k, v = q.detach(), k.detach(), v.detach()
        return attention(q, k, v, score_mod=score_mod, block_mask=block_mask)

    return call


#: Compiled variants flex may need: one per N and grad mode (shapes are static), more than dynamo's default of 8.
FLEX_RECOMPILE_LIMIT = 64


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    """``torch.compile(flex_attention)`` with static shapes (FlexAttention is a fused kernel only compiled)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, FLEX_RECOMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False)


# --------------------------------------------------------------------------------------
# Where the GPU methods run, and FLOPs
# --------------------------------------------------------------------------------------


def gpu_only_problem(method: str, device: str) -> str | None:
    """Why ``method`` is not timed on ``device`` here (a short phrase for the table), or None when it is."""
    if method not in GPU_METHODS:
        return None
    if torch.device(device).type != "cuda":
        return "no CUDA device" if not torch.cuda.is_available() else f"device {device}, not CUDA"
    if method == "triton" and interpreting():
        return "TRITON_INTERPRET=1"
    return None


def describe_gpu_problems(problems: dict[str, str]) -> str:
    """``"triton, flex (no CUDA device)"``: methods and why :func:`gpu_only_problem` keeps them off (one reason, or
    one per method where they differ)."""
    reasons = set(problems.values())
    why = reasons.pop() if len(reasons) == 1 else "; ".join(f"{m}: {r}" for m, r in problems.items())
    return f"{', '.join(problems)} ({why})"


def gpu_command(argv: list[str] | None) -> str:
    """The command to run on a GPU: ``argv`` (the suite's name and options, as given) without ``--device``, or the
    default run's when unknown."""
    options = ["operator"] if not argv else list(argv)
    kept: list[str] = []
    skip_next = False
    for option in options:
        if skip_next:
            skip_next = False
        elif option == "--device":
            skip_next = True
        elif not option.startswith("--device="):
            kept.append(option)
    prefix = "TRITON_INTERPRET=0 " if interpreting() else ""
    return prefix + shlex.join([*BENCH_COMMAND, *kept])


def operator_flops(config: OperatorBenchConfig, n: int, *, kernel_mlp: bool = True) -> tuple[float, float]:
    """Model FLOPs of one call at length ``n``: ``(forward, forward + backward)``.

    Counted by :class:`itnet_scale.models.flops.TrainingFlops` on a layer of the benchmarked shape (its
    ``6·H·sources·(d + e + 1.5·r·depth)`` per token; the forward is a third of it), minus the layer's
    projections, which the operator does not run. ``kernel_mlp=False``: the same without the kernel MLP (SDPA).
    """
    kernel = KernelConfig(support=config.spec.support, width=config.kernel_width if kernel_mlp else 0,
                          activation=config.activation)
    layer = IntegralTransform(config.heads * config.head_dim, config.heads, kernel, head_dim=config.head_dim)
    count, tokens = TrainingFlops(layer), config.batch * n
    training = count(tokens, n) - count.dense * tokens
    return training / 3, training


@dataclass
class CaseResult:
    """One N × method: forward and forward + backward measurements, or why it was skipped, or the error it raised.

    flops: the model FLOPs of one call, ``(forward, forward + backward)`` (:func:`operator_flops`).
    """

    n: int
    method: str
    forward: Measurement | None = None
    training: Measurement | None = None
    skipped: str | None = None
    failed: str | None = None
    reference_estimate_bytes: int | None = None
    flops: tuple[float, float] | None = None

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "failed" if self.failed else "measured"

    def tflops(self, phase: str) -> float | None:
        """Model TFLOP/s of ``phase`` (``"fwd"`` or ``"fwd_bwd"``) at the median time, None if not measured."""
        measured = self.forward if phase == "fwd" else self.training
        if measured is None or self.flops is None or measured.median_seconds <= 0:
            return None
        return self.flops[0 if phase == "fwd" else 1] / measured.median_seconds / 1e12

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "method": self.method,
            "status": self.status,
            "skip_reason": self.skipped,
            "error": self.failed,
            "reference_estimate_bytes": self.reference_estimate_bytes,
            "flops": None if self.flops is None else {"fwd": self.flops[0], "fwd_bwd": self.flops[1]},
            "tflops": {p: self.tflops(p) for p in ("fwd", "fwd_bwd")},
            "fwd": None if self.forward is None else self.forward.to_dict(),
            "fwd_bwd": None if self.training is None else self.training.to_dict(),
        }


@dataclass
class OperatorResults:
    """Every case of a run, plus per checked method and N its output's agreement with the reference's (max |Δ| on
    sampled queries): ``max_abs_diff[method][n]``."""

    config: OperatorBenchConfig
    cases: list[CaseResult] = field(default_factory=list)
    max_abs_diff: dict[str, dict[int, float]] = field(default_factory=dict)
    gpu_command: str = ""

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
        """Per N, every ratio of :data:`RATIOS` (``tiled_over_reference``, …, ``triton_over_tiled``) per phase."""
        return [
            {"n": n, **{f"{top}_over_{bottom}": {p: self.ratio(n, top, bottom, p) for p in ("fwd", "fwd_bwd")}
                        for top, bottoms in RATIOS for bottom in bottoms}}
            for n in self.config.sizes
        ]

    def not_measured(self) -> dict[str, str]:
        """GPU methods skipped for want of a GPU, by method: the reason."""
        return {c.method: c.skipped for c in self.cases if c.method in GPU_METHODS and c.skipped}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_operator_benchmark(
    config: OperatorBenchConfig, progress: Callable[[str], None] | None = _log, argv: list[str] | None = None
) -> OperatorResults:
    """Measure every N × method of ``config``; ``progress`` gets one line per step (stderr by default). ``argv``
    (the suite's name and options) makes the command a skipped GPU method's note gives."""
    say = progress or (lambda _message: None)
    results = OperatorResults(config, gpu_command=gpu_command(argv))
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
    transform_flops, sdpa_flops = operator_flops(config, n), operator_flops(config, n, kernel_mlp=False)

    for method in config.methods:
        label = METHOD_LABELS[method]
        case = CaseResult(n, method, reference_estimate_bytes=estimate if method == "reference" else None,
                          flops=sdpa_flops if method == "sdpa" else transform_flops)
        results.cases.append(case)
        if method == "reference" and not run_reference:
            case.skipped = f"needs ~{estimate / GIB:.1f} GiB"
            say(f"N={n} {label}: skipped ({case.skipped} > {config.max_reference_gib:g} GiB)")
            continue
        if (problem := gpu_only_problem(method, config.device)) is not None:
            case.skipped = problem
            say(f"N={n} {label}: skipped ({problem}; timed on CUDA only)")
            continue
        if method in GPU_METHODS:
            # Measured on a GPU only, so no CPU test runs them end to end: an error is reported (row, JSON,
            # exit status 1) and the other methods' figures are kept.
            try:
                _measure_case(case, inputs, grad_out, config, results, drop_grads, say)
            except Exception as err:
                case.forward = case.training = None
                drop_grads()
                case.failed = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
                say(f"N={n} {label}: failed ({case.failed})")
            continue
        _measure_case(case, inputs, grad_out, config, results, drop_grads, say)


def _measure_case(case: CaseResult, inputs: KernelInputs, grad_out: Tensor, config: OperatorBenchConfig,
                  results: OperatorResults, drop_grads: Callable[[], None], say: Callable[[str], None]) -> None:
    """Check ``case.method`` against the reference (where it is checked), then time it forward and forward +
    backward into ``case``."""
    n, method, label = case.n, case.method, METHOD_LABELS[case.method]
    if method in CHECKED_METHODS:
        say(f"N={n}: checking {label} against reference on {min(n, AGREEMENT_QUERIES)} queries …")
        diff = _max_abs_diff(inputs, config, method)
        results.max_abs_diff.setdefault(method, {})[n] = diff
        say(f"N={n}: {label} vs reference max |Δ| = {diff:.2e}")
    call = method_call(method, inputs, config)

    def forward() -> None:
        with torch.no_grad():
            call()

    def forward_backward() -> None:
        call().backward(grad_out)

    common = {"repeats": config.repeats, "warmup": config.warmup, "device": torch.device(config.device),
              "teardown": drop_grads, "budget_s": config.max_seconds_per_case}
    say(f"N={n} {label}: fwd …")
    case.forward = measure(forward, **common)
    say(f"N={n} {label}: fwd {case.forward.median_ms:.1f} ms; fwd+bwd …")
    case.training = measure(forward_backward, **common)
    say(f"N={n} {label}: fwd+bwd {case.training.median_ms:.1f} ms")


def _max_abs_diff(inputs: KernelInputs, config: OperatorBenchConfig, method: str = "tiled") -> float:
    """``max |method − reference|`` of the forward outputs, over up to :data:`AGREEMENT_QUERIES` queries.

    ``method`` computes all ``N`` queries (as benchmarked); the reference only the sampled
    ones against all sources (``Nq ≠ Ns`` inputs), :data:`AGREEMENT_CHUNK` at a time, so the check
    fits at every ``N`` where the full reference would not.
    """
    n = inputs.pos_q.shape[1]
    sample = torch.linspace(0, n - 1, min(n, AGREEMENT_QUERIES), device=inputs.v.device).round().long().unique()
    worst = 0.0
    with torch.no_grad():
        checked = method_call(method, inputs, config)()
        for chunk in sample.split(AGREEMENT_CHUNK):
            queries = replace(inputs, q=inputs.q[:, :, chunk], a=inputs.a[:, :, chunk], pos_q=inputs.pos_q[:, chunk])
            reference = integrate(queries, config.spec, Exact("reference")).out
            diff = (checked[:, :, chunk] - reference).abs().max().item()
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
    "N", "method", "runs", "fwd ms", "fwd+bwd ms", "fwd TFLOP/s", "fwd+bwd TFLOP/s", "fwd peak MiB", "fwd+bwd peak MiB",
]
SHORT_LABELS = {**METHOD_LABELS, "reference": "ref"}


def ratio_columns(config: OperatorBenchConfig) -> list[tuple[str, str, str, str]]:
    """The ratio columns of a run, in order: ``(title, numerator, denominator, phase)``; a numerator's columns
    appear when it is among the run's methods."""
    return [(f"{SHORT_LABELS[top]}/{SHORT_LABELS[bottom]} {'fwd' if phase == 'fwd' else 'fwd+bwd'}",
             top, bottom, phase)
            for top, bottoms in RATIOS if top in config.methods for bottom in bottoms for phase in ("fwd", "fwd_bwd")]



def _runs(forward: Measurement, training: Measurement) -> str:
    """Timed runs behind the medians: one number, or ``fwd/fwd+bwd`` when a budget cut one short."""
    if forward.repeats == training.repeats:
        return str(forward.repeats)
    return f"{forward.repeats}/{training.repeats}"




def results_table(results: OperatorResults) -> Table:
    """One row per (N, method): median times, model TFLOP/s, peak memory growth, and on tiled and triton rows their
    ratios (:func:`ratio_columns`)."""
    cfg = results.config
    support = "causal" if cfg.causal else "all"
    bq, bs = cfg.block_size or DEFAULT_BLOCK
    title = (f"operator: softmax, support {support}, B={cfg.batch} H={cfg.heads} d={cfg.head_dim} "
             f"r={cfg.kernel_width} σ={cfg.activation}, tiled block {bq}×{bs}, {cfg.device}; "
             "medians of `runs` timed runs")
    if "flex" in cfg.methods:
        title += ("; flex: compiled FlexAttention, score_mod β·q·k/√d + Σ_r w2_r σ(a_ir + b_jr) (this score "
                  "exactly: the inputs have no position term, offset table or decay)"
                  + (", causal block mask" if cfg.causal else ""))
    ratios = ratio_columns(cfg)
    columns = COLUMNS + [title for title, *_ in ratios]
    table = Table(title, columns, right_aligned=set(columns) - {"method"})
    for case in results.cases:
        label = METHOD_LABELS[case.method]
        if case.skipped or case.failed:
            why = f"skipped ({case.skipped})" if case.skipped else f"failed ({case.failed.split(':')[0]})"
            table.add_row([str(case.n), label, "0", why, *["—"] * (len(columns) - 4)])
            continue
        cells = [format_ratio(results.ratio(case.n, top, bottom, phase)) if top == case.method else ""
                 for _, top, bottom, phase in ratios]
        table.add_row([
            str(case.n), label, _runs(case.forward, case.training),
            format_ms(case.forward.median_ms), format_ms(case.training.median_ms),
            format_tflops(case.tflops("fwd")), format_tflops(case.tflops("fwd_bwd")),
            format_mib(case.forward.max_peak_growth_bytes), format_mib(case.training.max_peak_growth_bytes), *cells,
        ])
    return table


def build_report(results: OperatorResults, environment: dict[str, Any] | None = None) -> SuiteReport:
    """Table, target verdicts, agreement notes and every figure (JSON) of a run.

    ``environment`` is :func:`~.measure.describe_environment` taken when
    the run started (described now if None).
    """
    cfg = results.config
    notes = []
    for method, diffs in results.max_abs_diff.items():
        for n, diff in diffs.items():
            verdict = "agree" if diff <= AGREEMENT_TOLERANCE else f"DISAGREE (> {AGREEMENT_TOLERANCE:g})"
            notes.append(f"N={n}: {METHOD_LABELS[method]} and reference outputs {verdict} on "
                         f"{min(n, AGREEMENT_QUERIES)} sampled queries: max |Δ| = {diff:.2e}")
    not_measured = results.not_measured()
    if not_measured:
        notes.append(f"no GPU for {describe_gpu_problems(not_measured)}: not measured; they are timed on CUDA only "
                     f"(Triton's compiled kernels; compiled FlexAttention, forward and backward). On a GPU run: "
                     f"{results.gpu_command}")
    failures = [f"N={c.n} {METHOD_LABELS[c.method]}: {c.failed}" for c in results.cases if c.failed]
    notes.extend(f"{failure} (not measured)" for failure in failures)
    notes.append("Ratios are the row's method's time / the other's (> 1: the row's method is slower). TFLOP/s: "
                 "model FLOPs (itnet_scale/models/flops.py: 2·(d + e + 1.5·r) per head and visible pair forward, "
                 "×3 forward + backward; SDPA's without the r term) / median time. Peak MiB: growth above the "
                 "memory in use before the run, max over timed runs.")
    targets = evaluate_targets(results)
    config = asdict(cfg)
    config["block_size"] = list(cfg.block_size or DEFAULT_BLOCK)
    data = {
        "config": config,
        "environment": environment or describe_environment(cfg.device),
        "rows": [c.to_dict() for c in results.cases],
        "ratios": results.ratios(),
        "not_measured": not_measured,
        "gpu_command": results.gpu_command,
        "reference_estimates": [
            {"n": n,
             "fwd_bytes": reference_memory_estimate_bytes(cfg.batch, cfg.heads, n, cfg.kernel_width, training=False),
             "fwd_bwd_bytes": reference_memory_estimate_bytes(cfg.batch, cfg.heads, n, cfg.kernel_width,
                                                              training=True)}
            for n in cfg.sizes
        ],
        **{f"{method}_vs_reference_max_abs_diff": [
            {"n": n, "queries_compared": min(n, AGREEMENT_QUERIES), "max_abs_diff": d} for n, d in diffs.items()]
           for method, diffs in results.max_abs_diff.items()},
        "targets": [t.to_dict() for t in targets],
    }
    return SuiteReport(tables=[results_table(results)], targets=targets, notes=notes, data=data, failures=failures)


# --------------------------------------------------------------------------------------
# The suite (CLI options)
# --------------------------------------------------------------------------------------


class OperatorSuite(BenchmarkSuite):
    """``tools/bench.py operator``: reference vs tiled vs SDPA vs triton vs flex, time, TFLOP/s and peak memory."""

    name = "operator"
    description = ("forward and forward+backward time, model TFLOP/s and peak memory: reference vs tiled vs SDPA "
                   "vs triton vs FlexAttention (the last two on CUDA only)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_arguments(parser, default_sizes=DEFAULT_SIZES, default_repeats=DEFAULT_REPEATS, max_seconds=300.0,
                          quick_help=f"N ∈ {{{', '.join(map(str, QUICK_SIZES))}}}, {QUICK_REPEATS} repeats")
        parser.add_argument("--max-reference-gib", type=positive_float, default=8.0,
                            help="skip the reference where its estimated memory is larger (default 8)")
        parser.add_argument("--causal", action="store_true",
                            help="causal support (and is_causal SDPA) instead of support 'all'")
        parser.add_argument("--block", type=positive_int, nargs="+", metavar="SIZE",
                            help="tiled block size: one int (square) or queries sources (default: backend's)")
        parser.add_argument("--methods", nargs="+", choices=METHODS,
                            help="which methods to run (default all; triton and flex are timed on CUDA only: "
                                 "naming them without a GPU measures nothing and exits with status 2)")
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
        methods = tuple(m for m in METHODS if m in (args.methods or METHODS))  # canonical order, no duplicates
        if args.methods:
            problems = {m: p for m in methods if (p := gpu_only_problem(m, device)) is not None}
            if problems:
                raise SuiteUnavailable(f"no GPU for {describe_gpu_problems(problems)}: nothing measured. On a GPU "
                                       f"run: {gpu_command(getattr(args, 'argv', [None, 'operator'])[1:])}")
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
        argv = getattr(args, "argv", None)
        environment = describe_environment(config.device, argv)
        return build_report(run_operator_benchmark(config, argv=None if argv is None else argv[1:]), environment)
