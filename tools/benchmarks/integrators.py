"""The ``integrators`` suite: exact (tiled), lowrank and montecarlo layers against SDPA attention.

Every method is a whole layer on ``x`` ``[1, N, dim]`` (projections included), so the figures are
what a model pays per layer:

- ``SDPA`` / ``SDPA causal``: an attention layer of the same width and heads (q, k, v, o
  projections around :func:`torch.nn.functional.scaled_dot_product_attention`);
- ``exact``: :class:`~itnet_scale.nn.IntegralTransform` with the tiled exact integrator (support
  ``all``; run up to ``--exact-max-n``: its cost is quadratic, minutes per run beyond 16k on a CPU);
- ``lowrank`` / ``lowrank causal``: the same layer with the ``LowRank`` integrator (rank ``R``; the
  causal one with learned decay, a chunked scan);
- ``montecarlo``: the ``MonteCarlo`` integrator, ``M`` samples per block of queries with the
  ``window`` proposal, on a layer whose kernel was *fitted* first (below).

Each is timed forward only (``no_grad``) and forward + backward, with peak memory growth.

Accuracy, where the exact layer runs: the relative output error ``‖y − y_exact‖/‖y_exact‖`` of
each approximation against the exact integrator of the *same* layer (same parameters; causal
against causal). A randomly initialized kernel is nearly flat over thousands of sources, which
is not what trained layers look like, so the Monte Carlo layer is first fitted (a few hundred
Adam steps at ``--fit-n`` positions, exact integrator) to a local kernel: each query's kernel
row is trained toward a Gaussian of width ``--fit-sigma`` positions around it (KL divergence).
The error is reported for that fitted layer with the ``window`` proposal and, for comparison,
with the ``uniform`` one. The low-rank layers' feature maps are first fitted to their own exact
kernels (``--distill-steps`` of :func:`itnet_scale.nn.distill.distill`, as ``tools/distill_kernel.py``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.nn.distill import distill
from itnet_scale.ops import Exact, LowRank, MonteCarlo

from . import BenchmarkSuite, SuiteReport, SuiteUsageError, Table, TargetVerdict
from .cli import (
    add_run_arguments,
    format_mib,
    format_ms,
    format_ratio,
    non_negative_int,
    positive_float,
    positive_int,
)
from .measure import Measurement, describe_environment, measure

METHODS = ("sdpa", "sdpa_causal", "exact", "lowrank", "lowrank_causal", "montecarlo")
LABELS = {"sdpa": "SDPA", "sdpa_causal": "SDPA causal", "exact": "exact (tiled)", "lowrank": "lowrank",
          "lowrank_causal": "lowrank causal", "montecarlo": "montecarlo"}
BASELINE = {"exact": "sdpa", "lowrank": "sdpa", "lowrank_causal": "sdpa_causal", "montecarlo": "sdpa"}
DEFAULT_SIZES = (1024, 4096, 16384, 32768, 65536)
QUICK_SIZES = (512, 2048)

# The targets.
LOWRANK_SPEEDUP_N, LOWRANK_SPEEDUP = 32768, 10.0
LOWRANK_GROWTH_RANGE, LOWRANK_GROWTH = (4096, 65536), 1.1
MC_SPEEDUP_N, MC_SPEEDUP, MC_ERROR = 16384, 20.0, 0.05


@dataclass(frozen=True)
class IntegratorBenchConfig:
    """One run. ``dim`` channels, ``heads`` H (head dim ``dim/H``), kernel-MLP width ``r``."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    dim: int = 256
    heads: int = 4
    kernel_width: int = 16
    rank: int = 64
    samples: int = 256
    sample_block: int = 128
    proposal_window: int = 32
    exact_max_n: int = 16384
    fit_n: int = 512
    fit_steps: int = 300
    fit_sigma: float = 6.0
    distill_steps: int = 200
    repeats: int = 3
    warmup: int = 1
    max_seconds_per_case: float = 120.0
    methods: tuple[str, ...] = METHODS
    seed: int = 0


class AttentionLayer(nn.Module):
    """The baseline: multi-head attention with SDPA, the same projections as the ITNet layer's q, k, v, o."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).flatten(2))


def build_layers(config: IntegratorBenchConfig) -> dict[str, nn.Module]:
    """One layer per method (seeded); ``montecarlo`` shares ``exact_fitted``'s parameters."""
    torch.manual_seed(config.seed)
    kernel = KernelConfig(width=config.kernel_width, rank=config.rank)
    layers: dict[str, nn.Module] = {
        "sdpa": AttentionLayer(config.dim, config.heads, causal=False),
        "sdpa_causal": AttentionLayer(config.dim, config.heads, causal=True),
        "exact": IntegralTransform(config.dim, config.heads, kernel),
        "lowrank_causal": IntegralTransform(config.dim, config.heads,
                                            replace(kernel, support="causal", decay=True), LowRank()),
        "montecarlo": IntegralTransform(config.dim, config.heads, KernelConfig(width=config.kernel_width),
                                        window_proposal(config)),
    }
    layers["lowrank"] = layers["exact"]  # the same layer, switched per call (see method_call)
    return layers


def window_proposal(config: IntegratorBenchConfig, proposal: str = "window") -> MonteCarlo:
    """The montecarlo method's integrator (the ``uniform`` proposal is its comparison)."""
    return MonteCarlo(samples=config.samples, proposal=proposal, proposal_window=config.proposal_window,
                      sample_block=config.sample_block)


def fit_local_kernel(layer: IntegralTransform, n: int, steps: int, sigma: float, seed: int) -> list[float]:
    """Train ``layer``'s kernel (exact integrator) toward Gaussian rows of width ``sigma``; returns the KL curve."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(n, dtype=torch.float32)
    target = torch.softmax(-(offsets[:, None] - offsets[None, :]).square() / (2 * sigma**2), -1)
    saved, layer.integrator = layer.integrator, Exact()
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    curve = []
    for _ in range(steps):
        x = torch.randn(2, n, layer.dim, generator=g)
        K = layer.kernel_matrix(x)                                           # [B, H, n, n]
        loss = (target * (target.clamp_min(1e-30).log() - K.clamp_min(1e-30).log())).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    layer.integrator = saved
    return curve


@dataclass
class Case:
    """One N × method: forward and forward + backward, or why it did not run."""

    n: int
    method: str
    forward: Measurement | None = None
    training: Measurement | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "method": self.method, "skip_reason": self.skipped,
                "fwd": None if self.forward is None else self.forward.to_dict(),
                "fwd_bwd": None if self.training is None else self.training.to_dict()}


@dataclass
class IntegratorResults:
    config: IntegratorBenchConfig
    cases: list[Case] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    fit_curve: list[float] = field(default_factory=list)
    distilled: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ms(self, n: int, method: str, phase: str) -> float | None:
        c = next((c for c in self.cases if c.n == n and c.method == method), None)
        m = None if c is None else (c.forward if phase == "fwd" else c.training)
        return None if m is None else m.median_ms

    def ratio(self, n: int, top: str, bottom: str, phase: str) -> float | None:
        a, b = self.ms(n, top, phase), self.ms(n, bottom, phase)
        return None if a is None or b is None or b <= 0 else a / b

    def error(self, n: int, method: str) -> float | None:
        return next((e["rel_error"] for e in self.errors if e["n"] == n and e["method"] == method), None)


def method_call(method: str, layers: dict[str, nn.Module], x: Tensor) -> Callable[[], Tensor]:
    """A zero-argument callable running ``method``'s layer on ``x``."""
    layer = layers[method]
    if method in ("exact", "lowrank"):
        integrator = LowRank() if method == "lowrank" else Exact()

        def call() -> Tensor:
            layer.integrator = integrator
            return layer(x)

        return call
    return lambda: layer(x)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_integrator_benchmark(config: IntegratorBenchConfig, say: Callable[[str], None] = _log) -> IntegratorResults:
    """Fit the Monte Carlo layer, then time every N × method and measure errors where exact runs."""
    results = IntegratorResults(config)
    layers = build_layers(config)
    if "montecarlo" in config.methods and config.fit_steps:
        say(f"fitting the montecarlo layer's kernel: {config.fit_steps} steps at N={config.fit_n} …")
        results.fit_curve = fit_local_kernel(layers["montecarlo"], config.fit_n, config.fit_steps,
                                             config.fit_sigma, config.seed)
        say(f"fit: KL {results.fit_curve[0]:.3f} → {results.fit_curve[-1]:.3f}")
    if config.distill_steps:
        for method in ("lowrank", "lowrank_causal"):
            if method in config.methods:
                say(f"fitting the {LABELS[method]} layer's feature maps to its kernel: {config.distill_steps} steps …")
                fitted = distill(layers[method], steps=config.distill_steps, seq=128, batch=4, seed=config.seed)
                results.distilled[method] = fitted["results"][0]
    for n in config.sizes:
        g = torch.Generator().manual_seed(config.seed + n)
        x = torch.randn(1, n, config.dim, generator=g).requires_grad_(True)
        grad_out = torch.randn(1, n, config.dim, generator=g)
        if n <= config.exact_max_n:
            _errors(n, layers, x, config, results, say)
        for method in config.methods:
            case = Case(n, method)
            results.cases.append(case)
            if method == "exact" and n > config.exact_max_n:
                case.skipped = f"N > --exact-max-n {config.exact_max_n}"
                continue
            call = method_call(method, layers, x)

            def forward(call: Callable[[], Tensor] = call) -> None:
                with torch.no_grad():
                    call()

            def forward_backward(call: Callable[[], Tensor] = call, grad_out: Tensor = grad_out) -> None:
                call().backward(grad_out)

            def drop_grads(x: Tensor = x) -> None:
                x.grad = None
                for layer in layers.values():
                    layer.zero_grad(set_to_none=True)

            common = dict(repeats=config.repeats, warmup=config.warmup, teardown=drop_grads,
                          budget_s=config.max_seconds_per_case)
            say(f"N={n} {LABELS[method]}: fwd …")
            case.forward = measure(forward, **common)
            say(f"N={n} {LABELS[method]}: fwd {case.forward.median_ms:.1f} ms; fwd+bwd …")
            case.training = measure(forward_backward, **common)
            say(f"N={n} {LABELS[method]}: fwd+bwd {case.training.median_ms:.1f} ms")
    return results


def _errors(n: int, layers: dict[str, nn.Module], x: Tensor, config: IntegratorBenchConfig,
            results: IntegratorResults, say: Callable[[str], None]) -> None:
    """Relative output error of each approximation against the exact integrator of the same layer."""

    def exact_of(layer: IntegralTransform) -> Tensor:
        saved, layer.integrator = layer.integrator, Exact()
        try:
            return layer(x)
        finally:
            layer.integrator = saved

    def record(method: str, y: Tensor, ref: Tensor, note: str = "") -> None:
        err = ((y - ref).norm() / ref.norm()).item()
        results.errors.append({"n": n, "method": method, "rel_error": err, "note": note})
        say(f"N={n} {LABELS[method]}{' ' + note if note else ''}: relative error {err:.4f}")

    features = f"(feature maps fitted, {config.distill_steps} steps)" if config.distill_steps else \
        "(feature maps at init)"
    with torch.no_grad():
        if "lowrank" in config.methods:
            layer = layers["exact"]
            ref = exact_of(layer)
            layer.integrator = LowRank()
            record("lowrank", layer(x), ref, features)
            layer.integrator = Exact()
        if "lowrank_causal" in config.methods:
            layer = layers["lowrank_causal"]
            record("lowrank_causal", layer(x), exact_of(layer), features)
        if "montecarlo" in config.methods:
            layer = layers["montecarlo"]
            ref = exact_of(layer)
            torch.manual_seed(config.seed)
            record("montecarlo", layer(x), ref, "(fitted kernel, window proposal)")
            layer.integrator = window_proposal(config, "uniform")
            record("montecarlo", layer(x), ref, "(fitted kernel, uniform proposal)")
            layer.integrator = window_proposal(config)


# --------------------------------------------------------------------------------------
# Targets, table, plot
# --------------------------------------------------------------------------------------


def growth_power(results: IntegratorResults, method: str, phase: str, lo: int, hi: int) -> float | None:
    """``log(t(hi)/t(lo)) / log(hi/lo)``: the power of N the time grows with between two lengths."""
    a, b = results.ms(lo, method, phase), results.ms(hi, method, phase)
    return None if a is None or b is None else math.log(b / a) / math.log(hi / lo)


def evaluate_targets(results: IntegratorResults) -> list[TargetVerdict]:
    """The issue's targets, decided from the measured figures."""
    out = []
    n = LOWRANK_SPEEDUP_N
    ratio = results.ratio(n, "sdpa_causal", "lowrank_causal", "fwd_bwd")
    desc = f"causal lowrank fwd+bwd ≥ {LOWRANK_SPEEDUP:g}× faster than causal SDPA at N={n}"
    out.append(TargetVerdict("lowrank_vs_sdpa", desc, "not evaluated" if ratio is None else
                             ("met" if ratio >= LOWRANK_SPEEDUP else "not met"),
                             "not measured" if ratio is None else f"SDPA causal / lowrank causal = {ratio:.1f}×"))
    lo, hi = LOWRANK_GROWTH_RANGE
    powers = {p: growth_power(results, "lowrank_causal", p, lo, hi) for p in ("fwd", "fwd_bwd")}
    desc = f"causal lowrank time grows ≤ N^{LOWRANK_GROWTH:g} between N={lo} and N={hi}"
    if powers["fwd_bwd"] is None:
        out.append(TargetVerdict("lowrank_growth", desc, "not evaluated", f"N={lo} and N={hi} not both measured"))
    else:
        ok = all(p is not None and p <= LOWRANK_GROWTH for p in powers.values())
        out.append(TargetVerdict("lowrank_growth", desc, "met" if ok else "not met",
                                 f"power: fwd {powers['fwd']:.3f}, fwd+bwd {powers['fwd_bwd']:.3f}"))
    n = MC_SPEEDUP_N
    speed = {p: results.ratio(n, "exact", "montecarlo", p) for p in ("fwd", "fwd_bwd")}
    err = results.error(n, "montecarlo")
    desc = (f"montecarlo (M={results.config.samples}) ≥ {MC_SPEEDUP:g}× faster than exact-tiled at N={n}, "
            f"relative error ≤ {MC_ERROR:.0%} on a fitted kernel")
    if speed["fwd"] is None or err is None:
        out.append(TargetVerdict("montecarlo", desc, "not evaluated", f"exact and montecarlo not both run at N={n}"))
    else:
        ok = speed["fwd"] >= MC_SPEEDUP and speed["fwd_bwd"] >= MC_SPEEDUP and err <= MC_ERROR
        out.append(TargetVerdict("montecarlo", desc, "met" if ok else "not met",
                                 f"exact/montecarlo fwd {speed['fwd']:.1f}×, fwd+bwd {speed['fwd_bwd']:.1f}×; "
                                 f"error {err:.2%}"))
    return out


COLUMNS = ["N", "method", "runs", "fwd ms", "fwd+bwd ms", "fwd+bwd peak MiB", "vs SDPA fwd+bwd", "vs exact fwd+bwd",
           "rel. error"]


def results_table(results: IntegratorResults) -> Table:
    cfg = results.config
    title = (f"integrators: layer dim={cfg.dim} H={cfg.heads} r={cfg.kernel_width}, lowrank R={cfg.rank}, "
             f"montecarlo M={cfg.samples} (blocks of {cfg.sample_block}, window ±{cfg.proposal_window}); "
             "medians; ratios = method time / other time")
    table = Table(title, COLUMNS, right_aligned=set(COLUMNS) - {"method"})
    for c in results.cases:
        if c.skipped:
            table.add_row([str(c.n), LABELS[c.method], "0", f"skipped ({c.skipped})", *["—"] * (len(COLUMNS) - 4)])
            continue
        base = BASELINE.get(c.method)
        vs_sdpa = format_ratio(results.ratio(c.n, c.method, base, "fwd_bwd")) if base else ""
        vs_exact = format_ratio(results.ratio(c.n, c.method, "exact", "fwd_bwd")) if c.method in (
            "lowrank", "montecarlo") else ""
        err = results.error(c.n, c.method)
        runs = str(c.forward.repeats) if c.forward.repeats == c.training.repeats else \
            f"{c.forward.repeats}/{c.training.repeats}"
        table.add_row([str(c.n), LABELS[c.method], runs, format_ms(c.forward.median_ms),
                       format_ms(c.training.median_ms), format_mib(c.training.max_peak_growth_bytes), vs_sdpa,
                       vs_exact, "" if err is None else f"{err:.2%}"])
    return table


def import_pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend; matplotlib is optional (the ``bench`` extra)."""
    try:  # imported here, not with the module: matplotlib is an optional dependency
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"--plot draws with matplotlib, which could not be imported ({error}): "
                                  f"pip install 'itnet_scale[bench]'", name=error.name) from error
    return plt


def plot(results: IntegratorResults, path: Path) -> None:
    """Time vs N, log-log, one line per method (fwd+bwd solid, fwd dashed)."""
    plt = import_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, method in enumerate(results.config.methods):
        color = f"C{i}"
        for phase, style in (("fwd_bwd", "-"), ("fwd", "--")):
            pts = [(c.n, results.ms(c.n, method, phase)) for c in results.cases if c.method == method]
            pts = [(n, t) for n, t in pts if t is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, color=color,
                        label=f"{LABELS[method]} ({'fwd+bwd' if phase == 'fwd_bwd' else 'fwd'})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("time per layer call (ms, median)")
    ax.set_title("ITNet integrators vs SDPA attention (one layer, CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def build_report(results: IntegratorResults, environment: dict[str, Any]) -> SuiteReport:
    targets = evaluate_targets(results)
    notes = [f"N={e['n']} {LABELS[e['method']]} {e['note']}: relative error {e['rel_error']:.2%}"
             for e in results.errors]
    if results.fit_curve:
        notes.append(f"montecarlo layer fitted to a local kernel (Gaussian rows, σ = {results.config.fit_sigma:g} "
                     f"positions) for {len(results.fit_curve)} steps at N={results.config.fit_n}: KL "
                     f"{results.fit_curve[0]:.3f} → {results.fit_curve[-1]:.3f}")
    for method, r in results.distilled.items():
        notes.append(f"{LABELS[method]} feature maps fitted to the layer's kernel ({results.config.distill_steps} "
                     f"steps at N=128, tools/distill_kernel.py's loss): held-out error at N=128 "
                     f"{r['error_before']:.2%} → {r['error_after']:.2%}")
    data = {"config": asdict(results.config), "environment": environment,
            "rows": [c.to_dict() for c in results.cases], "errors": results.errors,
            "fit_curve": results.fit_curve, "distilled": results.distilled,
            "targets": [t.to_dict() for t in targets]}
    return SuiteReport(tables=[results_table(results)], targets=targets, notes=notes, data=data)


class IntegratorSuite(BenchmarkSuite):
    """``tools/bench.py integrators``: exact, lowrank, montecarlo and SDPA layers, time, memory, error."""

    name = "integrators"
    description = "exact-tiled, lowrank (causal and not) and montecarlo layers against SDPA: time, memory, error"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_arguments(parser, default_sizes=DEFAULT_SIZES, default_repeats=3, max_seconds=120.0,
                          quick_help=f"N ∈ {{{', '.join(map(str, QUICK_SIZES))}}}, 1 repeat, a short fit")
        parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
        parser.add_argument("--exact-max-n", type=positive_int, default=16384,
                            help="largest N the exact layer runs at (default 16384)")
        parser.add_argument("--dim", type=positive_int, default=256)
        parser.add_argument("--heads", type=positive_int, default=4)
        parser.add_argument("--width", type=positive_int, default=16, help="kernel-MLP width r")
        parser.add_argument("--rank", type=positive_int, default=64, help="lowrank R")
        parser.add_argument("--samples", type=positive_int, default=256, help="montecarlo M")
        parser.add_argument("--sample-block", type=positive_int, default=128,
                            help="queries sharing one draw (default 128; ≥ 64 keeps the tiles compiled)")
        parser.add_argument("--proposal-window", type=non_negative_int, default=32,
                            help="half-width of the window proposal (default 32)")
        parser.add_argument("--fit-n", type=positive_int, default=512)
        parser.add_argument("--fit-steps", type=non_negative_int, help="default 300 (40 with --quick)")
        parser.add_argument("--fit-sigma", type=positive_float, default=6.0)
        parser.add_argument("--distill-steps", type=non_negative_int,
                            help="fit the lowrank layers' feature maps first (default 200, 20 with --quick; 0: off)")
        parser.add_argument("--plot", type=Path, metavar="PNG", help="write the time-vs-N plot here")

    def config_from_args(self, args: argparse.Namespace) -> IntegratorBenchConfig:
        sizes = tuple(args.n) if args.n else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        if args.dim % args.heads:
            raise SuiteUsageError(f"--dim {args.dim} is not divisible by --heads {args.heads}")
        block_window = args.sample_block + 2 * args.proposal_window
        if "montecarlo" in args.methods and block_window >= args.samples:
            raise SuiteUsageError(f"--sample-block + 2·--proposal-window = {block_window} must be < --samples")
        fit_steps = args.fit_steps if args.fit_steps is not None else (40 if args.quick else 300)
        distill_steps = args.distill_steps if args.distill_steps is not None else (20 if args.quick else 200)
        return IntegratorBenchConfig(
            sizes=tuple(dict.fromkeys(sizes)), dim=args.dim, heads=args.heads, kernel_width=args.width,
            rank=args.rank, samples=args.samples, sample_block=args.sample_block,
            proposal_window=args.proposal_window, exact_max_n=args.exact_max_n, fit_n=args.fit_n,
            fit_steps=fit_steps, fit_sigma=args.fit_sigma, distill_steps=distill_steps,
            repeats=args.repeats or (1 if args.quick else 3),
            warmup=args.warmup, max_seconds_per_case=args.max_seconds_per_case,
            methods=tuple(m for m in METHODS if m in args.methods), seed=args.seed)

    def run(self, args: argparse.Namespace) -> SuiteReport:
        config = self.config_from_args(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        environment = describe_environment("cpu", getattr(args, "argv", None))
        if args.plot is not None:
            try:
                import_pyplot()  # a missing matplotlib stops the run before it starts, not after it
            except ModuleNotFoundError as error:
                raise SuiteUsageError(str(error)) from error
        results = run_integrator_benchmark(config)
        if args.plot is not None:
            plot(results, args.plot)
            _log(f"wrote {args.plot}")
        return build_report(results, environment)
