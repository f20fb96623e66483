"""``tools/bench.py train``: training throughput of the tiny ITNet against a same-size transformer, and ZeRO memory.

**Throughput.** Three models learn masked language modeling on the same batches under the same DeepSpeed config
(:func:`~itnet_scale.train.deepspeed_config.build_deepspeed_config`: ZeRO 0, fp32, the same micro-batch; the
project's AdamW and warm-up + cosine schedule), each wrapped by ``deepspeed.initialize`` in this one process:

- ``transformer``: the baseline, :class:`TransformerForMLM` — the tiny config's text embedding, width, depth,
  heads, MLP ratio, norms and tied MLM head, with pre-norm blocks around
  :func:`torch.nn.functional.scaled_dot_product_attention` and fixed sinusoidal positions;
- ``itnet-exact``: ``create_model("tiny")`` as configured (exact integrator; layers 0–1 windowed);
- ``itnet-lowrank``: the same with every layer ``integrator: lowrank``, non-causal (support ``all``: low rank
  integrates no windows), rank ``R = 64`` and ``learned`` feature maps (the layer's defaults, which start as
  FAVOR+ positive random features), the config's other settings unchanged;
- ``itnet-exact-ckpt``, ``itnet-lowrank-ckpt``: those two with activation checkpointing of every block
  (:func:`~itnet_scale.nn.configure_activation_checkpointing`, ``activation_checkpointing.every: 1``). Built from
  the same seed, each trains exactly as its unchecked twin (the same gradients, so the same losses); the
  activation-checkpointing table gives each pair's step-time and peak-memory ratios (medians of the rounds' own
  ratios, like the throughput ratios).

A step is ``engine(batch)`` → the summed losses → ``engine.backward`` → ``engine.step``. Every method first takes
``--warmup`` untimed steps at each length (``torch.compile`` of the exact integrator's tiles, allocator caches),
then ``--repeats`` rounds of ``--steps`` timed steps; within a round the methods take turns (the order rotates
from round to round), so drift of a shared machine falls on all of them alike. A round's rate is tokens (all
``B × N`` positions of a batch, masked or not) per median step time of the round — the median, because each round
starts by resetting the process's memory high-water mark (and returning freed memory), so its first step pays the
page faults of re-growing the heap, more for the methods that allocate more; the table gives medians over rounds,
and each ratio is the median of the rounds' own ratios to the baseline.

The data is real text: the demo corpus (``pydoc_data.topics``, :func:`itnet_scale.data.demo.demo_paragraphs`)
tokenized by the demo tokenizer, paragraphs joined by ``<sep>``, cut into rows of ``<cls>`` + ``N − 1`` tokens,
masked BERT-style (:func:`~itnet_scale.nn.heads.mask_tokens`, seeded) once; every method sees the same batches
in the same order.

**Memory.** The tiny pretraining model on ``--memory-ranks`` ranks (DeepSpeed's launcher, :func:`run_on_ranks`;
worker :mod:`.zero_memory_worker`) at ZeRO 0, at ZeRO 3 under the generated config, and at ZeRO 3 with
``--zero3-variant`` keys on top (default ``stage3_param_persistence_threshold=0``: DeepSpeed keeps parameters of up
to 10⁵ elements whole on every rank, which is most of the tiny model's tensors). Each rank's model + optimizer state
is counted exactly by :func:`.state_memory.engine_state_bytes` (storages reachable from the engine, each once) after
a step and the next backward.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.distributed.elastic.utils.distributed import get_free_port

from itnet_scale.data.demo import build_demo_data, demo_paragraphs
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models import ModelConfig, count_parameters, create_model, load_model_config
from itnet_scale.nn import configure_activation_checkpointing
from itnet_scale.nn.block import MLP
from itnet_scale.nn.encoders import TextEncoder
from itnet_scale.nn.heads import MLMHead, mask_tokens
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.engine import build_engine
from itnet_scale.train.optimizer import OptimizerSettings

from . import BenchmarkSuite, SuiteReport, SuiteUsageError, Table, TargetVerdict
from .cli import format_mib, format_ms, format_ratio, non_negative_int, positive_int
from .launch import run_local_ranks
from .measure import MIB, PeakMemoryTracker, describe_environment

METHODS = ("transformer", "itnet-exact", "itnet-lowrank", "itnet-exact-ckpt", "itnet-lowrank-ckpt")
BASELINE = "transformer"
LABELS = {"transformer": "transformer (SDPA)", "itnet-exact": "ITNet exact", "itnet-lowrank": "ITNet lowrank",
          "itnet-exact-ckpt": "ITNet exact, checkpointed", "itnet-lowrank-ckpt": "ITNet lowrank, checkpointed"}
#: Activation checkpointing of every block (the ``-ckpt`` methods) and the method it is compared with.
CHECKPOINTED = {"itnet-exact-ckpt": "itnet-exact", "itnet-lowrank-ckpt": "itnet-lowrank"}
DEFAULT_SIZES = (1024, 4096)
QUICK_SIZES = (128, 256)
DEFAULT_RANK, DEFAULT_FEATURE_MAP = 64, "learned"

# The targets.
EXACT_N, EXACT_RATIO = 1024, 0.7
LOWRANK_N, LOWRANK_RATIO = 4096, 1.5
ZERO_RANKS, ZERO_RATIO = 2, 0.55


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The baseline: a pre-norm transformer of the same size, SDPA attention, the same MLM objective
# --------------------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """``[length, dim]`` fixed sinusoidal position encodings (Vaswani et al.): sines on even channels, cosines on
    odd ones, wavelengths from 2π to 10⁴·2π."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table.to(dtype)


class SDPAAttention(nn.Module):
    """Multi-head self-attention: fused q, k, v projection, :func:`F.scaled_dot_product_attention`, output
    projection. ``forward(x [B, N, dim], padding_mask [B, N] | None (True = padding)) → [B, N, dim]``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 × [B, H, N, d]
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """``x + attn(norm1 x)``, then ``x + MLP(norm2 x)``: the :class:`~itnet_scale.nn.block.ITNetBlock` layout
    with attention in the integral transform's place (same norms, the same :class:`MLP`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SDPAAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), padding_mask))
        return x + self.mlp(self.norm2(x))


class TransformerForMLM(nn.Module):
    """The baseline: ``config``'s text encoder (token + type embedding), ``depth`` :class:`TransformerBlock` of
    ``dim`` and ``heads``, a final norm and the MLM head (tied to the embedding when the config ties it).
    Positions are fixed sinusoids added to the embeddings (attention alone has none).

    ``losses(batch)`` (also ``forward``) takes the pretraining model's text MLM batch (``text_ids``,
    ``text_attention_mask``, ``mlm_labels``) and returns ``{"mlm": loss}`` computed as the pretraining model does.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.vocab_size, config.dim, config.pad_id)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.dropout,
                                                     config.norm_eps) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        tied = self.text.embedding if config.tie_mlm_decoder else None
        self.mlm = MLMHead(config.dim, config.vocab_size, tied, config.norm_eps)

    def hidden(self, text_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, L, dim]`` final hidden states of ``text_ids`` ``[B, L]``."""
        encoded = self.text(text_ids, attention_mask)
        x = encoded.tokens + sinusoidal_positions(text_ids.shape[1], self.config.dim, text_ids.device,
                                                  encoded.tokens.dtype)
        padding = encoded.padding_mask if bool(encoded.padding_mask.any()) else None  # none: SDPA's unmasked path
        for block in self.blocks:
            x = block(x, padding)
        return self.norm(x)

    def losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        hidden = self.hidden(batch["text_ids"], batch.get("text_attention_mask"))
        return {"mlm": MLMHead.loss(self.mlm(hidden), batch["mlm_labels"])}

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.losses(batch)


# --------------------------------------------------------------------------------------
# Models, data, engines
# --------------------------------------------------------------------------------------


def lowrank_config(config: ModelConfig, rank: int = DEFAULT_RANK,
                   feature_map: str = DEFAULT_FEATURE_MAP) -> ModelConfig:
    """``config`` with every layer on the non-causal low-rank integrator (support ``all``; rank and feature map
    as given). Per-layer overrides keep their other settings; their supports go, as low rank integrates no
    windows."""
    layer = replace(config.layer, integrator="lowrank", rank=rank, feature_map=feature_map, support="all",
                    support_size=math.inf)
    dropped = ("support", "support_size", "integrator", "rank", "feature_map")
    layers = {key: {k: v for k, v in override.items() if k not in dropped} for key, override in config.layers.items()}
    return replace(config, layer=layer, layers={k: v for k, v in layers.items() if v})


def build_method_model(method: str, vocab_size: int, rank: int = DEFAULT_RANK,
                       feature_map: str = DEFAULT_FEATURE_MAP) -> nn.Module:
    """The model of ``method`` (see the module doc) for a ``vocab_size``-id tokenizer."""
    config = load_model_config("tiny", vocab_size=vocab_size)
    if method == "transformer":
        return TransformerForMLM(config)
    if method in CHECKPOINTED:
        model = build_method_model(CHECKPOINTED[method], vocab_size, rank, feature_map)
        configure_activation_checkpointing(model, 1)
        return model
    if method == "itnet-exact":
        return create_model(config)
    if method == "itnet-lowrank":
        return create_model(lowrank_config(config, rank, feature_map))
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


@dataclass
class TextData:
    """The demo corpus as one token stream, and the tokenizer's ids the masking needs."""

    stream: Tensor
    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: list[int]

    @classmethod
    def from_tokenizer(cls, tokenizer_dir: Path) -> TextData:
        tokenizer = Tokenizer.from_dir(tokenizer_dir)
        ids: list[int] = []
        for row in tokenizer.processor.encode(demo_paragraphs()):
            ids.extend(row)
            ids.append(tokenizer.sep_id)
        return cls(torch.tensor(ids, dtype=torch.long), tokenizer.vocab_size, tokenizer.cls_id, tokenizer.sep_id,
                   tokenizer.mask_id, list(tokenizer.special_ids.values()))

    def batches(self, length: int, micro_batch: int, count: int, seed: int) -> list[dict[str, Tensor]]:
        """``count`` MLM batches of ``micro_batch`` rows of ``length`` tokens (``<cls>`` + the next ``length − 1``
        tokens of the stream, read on from where the previous row ended, wrapping around at its end)."""
        generator = torch.Generator().manual_seed(seed)
        body, start, out = length - 1, 0, []
        for _ in range(count):
            rows = []
            for _ in range(micro_batch):
                index = (start + torch.arange(body)) % len(self.stream)
                rows.append(torch.cat([torch.tensor([self.cls_id]), self.stream[index]]))
                start = (start + body) % len(self.stream)
            ids = torch.stack(rows)
            inputs, labels = mask_tokens(ids, mask_id=self.mask_id, vocab_size=self.vocab_size,
                                         special_ids=self.special_ids, generator=generator)
            out.append({"text_ids": inputs, "text_attention_mask": torch.ones_like(ids, dtype=torch.bool),
                        "mlm_labels": labels})
        return out


def build_method_engine(method: str, data: TextData, micro_batch: int, total_steps: int, seed: int, rank: int,
                        feature_map: str) -> tuple[Any, dict[str, Any]]:
    """``(engine, info)``: ``method``'s model (seeded), wrapped as the trainer wraps it
    (:func:`itnet_scale.train.engine.build_engine`: the project's optimizer, schedule and generated ZeRO-0 fp32
    config)."""
    torch.manual_seed(seed)
    model = build_method_model(method, data.vocab_size, rank, feature_map)
    settings = DeepSpeedSettings(zero_stage=0, precision="fp32", micro_batch_size=micro_batch)
    engine, _ = build_engine(model, settings, OptimizerSettings(), total_steps)
    counts = count_parameters(model)
    info = {"parameters": counts.total, "trainable_parameters": counts.trainable, "deepspeed_config": engine.config}
    return engine, info


def train_step(engine: Any, batch: Mapping[str, Tensor]) -> float:
    """One optimizer step: forward (the summed losses), ``engine.backward``, ``engine.step``; returns the loss."""
    loss = sum(engine(batch).values())
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


# --------------------------------------------------------------------------------------
# Processes: a world of one here for the throughput engines, local ranks for the memory worker
# --------------------------------------------------------------------------------------

#: The memory worker, run on every rank as ``python -m MEMORY_WORKER`` from :data:`PACKAGE_ROOT`.
MEMORY_WORKER = f"{__package__}.zero_memory_worker"
#: The folder from which this package is importable under its own name (``tools`` for ``benchmarks``).
PACKAGE_ROOT = Path(__file__).resolve().parents[__package__.count(".") + 1]


def init_single_process(backend: str = "gloo") -> bool:
    """Make this process rank 0 of a world of 1 (``deepspeed.init_distributed`` on ``backend``), unless a
    process group exists already; returns whether it created one.

    The group lives as long as the process (it is destroyed at exit): DeepSpeed caches the groups it derives
    from it, so a group destroyed and created anew would leave those stale.
    """
    # Imported here, not with this module: importing itnet_scale.parallel imports DeepSpeed, which announces its
    # accelerator on stdout; the suite runs this inside stdout_to_stderr, so its stdout holds only the report.
    from itnet_scale.parallel.process_group import init_distributed

    if dist.is_available() and dist.is_initialized():
        return False
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(get_free_port()))
    init_distributed(backend)
    atexit.register(_destroy_process_group)
    return True


def _destroy_process_group() -> None:
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


def run_on_ranks(module: str, args: list[str], ranks: int, timeout: float, env: Mapping[str, str]) -> str:
    """Run ``python -m module args`` on ``ranks`` local CPU ranks (:func:`.launch.run_local_ranks`) from
    :data:`PACKAGE_ROOT`; returns the output (stdout and stderr together). Raises ``RuntimeError`` with the output's
    tail if the ranks fail, ``TimeoutError`` when ``timeout`` seconds pass."""
    process = run_local_ranks(["--module", module, *args], ranks=ranks, timeout=timeout, cwd=PACKAGE_ROOT, env=env)
    if process.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {process.returncode}):\n{process.stdout[-4000:]}")
    return process.stdout


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainBenchConfig:
    """One run of the suite (see the module doc and ``bench.py train --help``)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    methods: tuple[str, ...] = METHODS
    micro_batch: int = 1
    warmup: int = 2
    steps: int = 3
    repeats: int = 3
    rank: int = DEFAULT_RANK
    feature_map: str = DEFAULT_FEATURE_MAP
    seed: int = 0
    memory: bool = True
    memory_ranks: int = ZERO_RANKS
    memory_seq: int = 256
    memory_micro_batch: int = 2
    memory_precision: str = "fp32"
    memory_timeout: float = 900.0
    zero3_variant: tuple[tuple[str, Any], ...] = (("stage3_param_persistence_threshold", 0),)


@dataclass
class Case:
    """One length × method: per round, the steps' seconds and losses, and the round's peak memory growth."""

    n: int
    method: str
    parameters: int = 0
    step_seconds: list[list[float]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    peak_bytes: list[int | None] = field(default_factory=list)
    warmup_seconds: list[float] = field(default_factory=list)

    def rates(self, tokens_per_step: int) -> list[float]:
        """Tokens/s of each round: tokens per step / the round's median step time (see the module doc)."""
        return [tokens_per_step / statistics.median(s) for s in self.step_seconds]

    def to_dict(self, tokens_per_step: int) -> dict[str, Any]:
        rates = self.rates(tokens_per_step)
        steps = [t for s in self.step_seconds for t in s]
        known = [b for b in self.peak_bytes if b is not None]
        return {"n": self.n, "method": self.method, "parameters": self.parameters,
                "tokens_per_step": tokens_per_step, "step_seconds": self.step_seconds,
                "median_step_seconds": statistics.median(steps), "tokens_per_s": rates,
                "median_tokens_per_s": statistics.median(rates), "losses": self.losses,
                "peak_growth_bytes": self.peak_bytes, "max_peak_growth_bytes": max(known) if known else None,
                "warmup_seconds": self.warmup_seconds}


@dataclass
class TrainResults:
    config: TrainBenchConfig
    cases: list[Case] = field(default_factory=list)
    engine_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: int = 0
    memory: list[dict[str, Any]] = field(default_factory=list)
    memory_error: str | None = None

    def case(self, n: int, method: str) -> Case | None:
        return next((c for c in self.cases if c.n == n and c.method == method), None)

    def tokens_per_step(self, n: int) -> int:
        return n * self.config.micro_batch

    def rate(self, n: int, method: str) -> float | None:
        c = self.case(n, method)
        return None if c is None or not c.step_seconds else statistics.median(c.rates(self.tokens_per_step(n)))

    def checkpoint_ratios(self, n: int, method: str) -> tuple[float | None, float | None]:
        """For a ``-ckpt`` method: medians over rounds of its step time / its unchecked twin's, and of its peak
        memory growth / the twin's, in the same round (None where not measured)."""
        c, twin = self.case(n, method), self.case(n, CHECKPOINTED[method])
        if c is None or twin is None or not c.step_seconds or not twin.step_seconds:
            return None, None
        time = statistics.median(statistics.median(a) / statistics.median(b)
                                 for a, b in zip(c.step_seconds, twin.step_seconds))
        pairs = [(a, b) for a, b in zip(c.peak_bytes, twin.peak_bytes) if a is not None and b]
        return time, statistics.median(a / b for a, b in pairs) if pairs else None

    def ratio(self, n: int, method: str) -> float | None:
        """Median over rounds of ``method``'s rate / the baseline's rate in the same round."""
        c, base = self.case(n, method), self.case(n, BASELINE)
        if c is None or base is None or not c.step_seconds or not base.step_seconds:
            return None
        tokens = self.tokens_per_step(n)
        return statistics.median(a / b for a, b in zip(c.rates(tokens), base.rates(tokens)))


def run_training_benchmark(config: TrainBenchConfig, tokenizer_dir: Path,
                           say: Callable[[str], None] = _log) -> tuple[TrainResults, TextData]:
    """Build one engine per method, then per length: warm-up steps, then interleaved timed rounds."""
    results = TrainResults(config)
    data = TextData.from_tokenizer(tokenizer_dir)
    results.tokens = len(data.stream)
    per_length = config.warmup + config.repeats * config.steps
    total_steps = per_length * len(config.sizes)
    with stdout_to_stderr():
        init_single_process()
        engines = {}
        for method in config.methods:
            engines[method], results.engine_info[method] = build_method_engine(
                method, data, config.micro_batch, total_steps, config.seed, config.rank, config.feature_map)
        for n in config.sizes:
            _run_length(n, config, data, engines, results, say)
        for engine in engines.values():
            engine.destroy()
    return results, data


def _run_length(n: int, config: TrainBenchConfig, data: TextData, engines: dict[str, Any], results: TrainResults,
                say: Callable[[str], None]) -> None:
    batches = data.batches(n, config.micro_batch, config.warmup + config.repeats * config.steps, config.seed + n)
    cases = {m: Case(n, m, results.engine_info[m]["parameters"]) for m in config.methods}
    results.cases.extend(cases.values())
    for method in config.methods:
        for batch in batches[: config.warmup]:
            start = time.perf_counter()
            train_step(engines[method], batch)
            cases[method].warmup_seconds.append(time.perf_counter() - start)
        say(f"N={n} {LABELS[method]}: warm-up {sum(cases[method].warmup_seconds):.1f} s")
    for round_ in range(config.repeats):
        timed = batches[config.warmup + round_ * config.steps: config.warmup + (round_ + 1) * config.steps]
        order = [config.methods[(i + round_) % len(config.methods)] for i in range(len(config.methods))]
        for method in order:
            seconds, losses = [], []
            with PeakMemoryTracker("cpu") as tracker:
                for batch in timed:
                    start = time.perf_counter()
                    losses.append(train_step(engines[method], batch))
                    seconds.append(time.perf_counter() - start)
            case = cases[method]
            case.step_seconds.append(seconds)
            case.losses.append(losses)
            case.peak_bytes.append(tracker.growth_bytes)
            say(f"N={n} {LABELS[method]} round {round_ + 1}/{config.repeats}: "
                f"{results.tokens_per_step(n) / statistics.median(seconds):.0f} tokens/s, loss {losses[-1]:.3f}")


def run_memory_benchmark(config: TrainBenchConfig, data: TextData, say: Callable[[str], None] = _log) -> list[dict]:
    """Launch the ZeRO memory worker on ``config.memory_ranks`` ranks; returns every rank's records."""
    precision = config.memory_precision
    variants = [{"name": "ZeRO-0", "stage": 0, "precision": precision},
                {"name": "ZeRO-3", "stage": 3, "precision": precision}]
    if config.zero3_variant:
        extra = dict(config.zero3_variant)
        variants.append({"name": "ZeRO-3, " + ", ".join(f"{k}={v}" for k, v in extra.items()), "stage": 3,
                         "precision": precision, "zero": extra})
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        batch = data.batches(config.memory_seq, config.memory_micro_batch, 1, config.seed)[0]
        save_file({k: v.to(torch.uint8) if v.dtype == torch.bool else v for k, v in batch.items()},
                  str(out / "batch.safetensors"))
        spec = {"out": str(out), "batch": str(out / "batch.safetensors"), "vocab_size": data.vocab_size,
                "micro_batch_size": config.memory_micro_batch, "variants": variants}
        (out / "spec.json").write_text(json.dumps(spec))
        say(f"ZeRO memory: {config.memory_ranks} ranks, {len(variants)} configs …")
        # Compiling the exact integrator's tiles changes no state; the ranks run them eagerly to save the compile.
        run_on_ranks(MEMORY_WORKER, [str(out / "spec.json")], ranks=config.memory_ranks,
                     timeout=config.memory_timeout, env={"ITNET_COMPILE": "0"})
        records = []
        for rank in range(config.memory_ranks):
            records.extend(json.loads((out / f"rank{rank}.json").read_text()))
    return records


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def memory_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config (in the workers' order): the record of the rank holding the most state, and every rank's state."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = out.setdefault(record["variant"], {"variant": record["variant"], "ranks": {}, "worst": record})
        entry["ranks"][record["rank"]] = record["counted"]["state"]
        if record["counted"]["state"] > entry["worst"]["counted"]["state"]:
            entry["worst"] = record
    return list(out.values())


def memory_ratio(results: TrainResults, name: str) -> float | None:
    """Per-rank state of config ``name`` / ZeRO-0's (the largest rank of each)."""
    summary = {s["variant"]: s["worst"]["counted"]["state"] for s in memory_summary(results.memory)}
    if name not in summary or "ZeRO-0" not in summary or summary["ZeRO-0"] <= 0:
        return None
    return summary[name] / summary["ZeRO-0"]


def evaluate_targets(results: TrainResults) -> list[TargetVerdict]:
    """The issue's three targets, decided from the measured figures."""
    out = []
    for name, method, n, goal in (("exact_vs_transformer", "itnet-exact", EXACT_N, EXACT_RATIO),
                                  ("lowrank_vs_transformer", "itnet-lowrank", LOWRANK_N, LOWRANK_RATIO)):
        ratio = results.ratio(n, method)
        desc = f"{LABELS[method]} tokens/s ≥ {goal:g}× the transformer's at seq {n}"
        if ratio is None:
            out.append(TargetVerdict(name, desc, "not evaluated", f"{method} and the baseline not both run at {n}"))
        else:
            a, b = results.rate(n, method), results.rate(n, BASELINE)
            out.append(TargetVerdict(name, desc, "met" if ratio >= goal else "not met",
                                     f"{ratio:.2f}× ({a:.0f} vs {b:.0f} tokens/s)"))
    desc = f"ZeRO-3 at {ZERO_RANKS} ranks holds ≤ {ZERO_RATIO:g}× ZeRO-0's per-rank model + optimizer state"
    ratio = memory_ratio(results, "ZeRO-3")
    ranks = {r["world_size"] for r in results.memory}
    if ratio is None or ranks != {ZERO_RANKS}:
        why = results.memory_error or ("not measured" if not results.memory else f"measured at {sorted(ranks)} ranks")
        out.append(TargetVerdict("zero3_memory", desc, "not evaluated", why))
    else:
        detail = f"generated config: {ratio:.3f}×"
        for s in memory_summary(results.memory)[2:]:
            detail += f"; {s['variant']}: {memory_ratio(results, s['variant']):.3f}×"
        out.append(TargetVerdict("zero3_memory", desc, "met" if ratio <= ZERO_RATIO else "not met", detail))
    return out


THROUGHPUT_COLUMNS = ["seq", "method", "params M", "timed steps", "step ms", "tokens/s", "vs transformer",
                      "peak MiB", "loss (last)"]
MEMORY_COLUMNS = ["config", "tensors partitioned / whole", "params MiB", "master MiB", "grads MiB", "Adam MiB",
                  "state MiB", "vs ZeRO-0", "bytes/param", "buffers MiB", "other MiB"]


def throughput_table(results: TrainResults) -> Table:
    cfg = results.config
    title = (f"train: tiny models (dim 192, depth 4, heads 4), MLM on demo text, DeepSpeed ZeRO-0 fp32, micro-batch "
             f"{cfg.micro_batch}, 1 process, {torch.get_num_threads()} threads; {cfg.warmup} warm-up steps, then "
             f"medians of {cfg.repeats} interleaved rounds of {cfg.steps} steps")
    table = Table(title, THROUGHPUT_COLUMNS, right_aligned=set(THROUGHPUT_COLUMNS) - {"method"})
    for c in results.cases:
        if not c.step_seconds:
            continue
        tokens = results.tokens_per_step(c.n)
        rate = statistics.median(c.rates(tokens))
        known = [b for b in c.peak_bytes if b is not None]
        table.add_row([str(c.n), LABELS[c.method], f"{c.parameters / 1e6:.2f}", str(sum(map(len, c.step_seconds))),
                       format_ms(1e3 * tokens / rate), f"{rate:.0f}",
                       "" if c.method == BASELINE else format_ratio(results.ratio(c.n, c.method)),
                       format_mib(max(known) if known else None), f"{c.losses[-1][-1]:.3f}"])
    return table


def memory_table(results: TrainResults) -> Table:
    ranks = sorted({r["world_size"] for r in results.memory})
    precision = "/".join(sorted({r["precision"] for r in results.memory}))
    title = (f"ZeRO memory: tiny pretraining model, {precision} AdamW, {'/'.join(map(str, ranks))} ranks (DeepSpeed "
             "launcher, gloo); per-rank bytes counted after a step and the next backward (the largest rank)")
    table = Table(title, MEMORY_COLUMNS, right_aligned=set(MEMORY_COLUMNS) - {"config"})
    for s in memory_summary(results.memory):
        r, c = s["worst"], s["worst"]["counted"]
        ratio = memory_ratio(results, s["variant"])
        whole = r["persistent_tensors"] if r["stage"] == 3 else r["parameter_tensors"]
        table.add_row([s["variant"], f"{r['partitioned_tensors']} / {whole}", format_mib(c["parameters"]),
                       format_mib(c["master"]), format_mib(c["gradients"]), format_mib(c["optimizer"]),
                       format_mib(c["state"]), "1.00×" if s["variant"] == "ZeRO-0" else format_ratio(ratio),
                       f"{c['state'] / r['parameters']:.2f}", format_mib(c["buffers"]), format_mib(c["other"])])
    return table


CHECKPOINT_COLUMNS = ["seq", "model", "step ms", "step ms, checkpointed", "step time ×", "peak MiB",
                      "peak MiB, checkpointed", "peak memory ×", "same losses"]


def _median_step(case: Case) -> float:
    return statistics.median(statistics.median(seconds) for seconds in case.step_seconds)


def _median_peak(case: Case) -> int | None:
    known = [b for b in case.peak_bytes if b is not None]
    return int(statistics.median(known)) if known else None


def checkpoint_table(results: TrainResults) -> Table:
    """Each checkpointed method against its unchecked twin: step time and peak memory growth, medians over rounds
    and the medians of the rounds' ratios."""
    cfg = results.config
    title = (f"activation checkpointing of every block: tiny ITNet, micro-batch {cfg.micro_batch}, step time and peak "
             f"RSS growth with and without (medians of {cfg.repeats} interleaved rounds; ratios = medians of the "
             f"rounds' own ratios)")
    table = Table(title, CHECKPOINT_COLUMNS, right_aligned=set(CHECKPOINT_COLUMNS) - {"model"})
    for c in results.cases:
        twin = results.case(c.n, CHECKPOINTED.get(c.method, ""))
        if c.method not in CHECKPOINTED or twin is None or not c.step_seconds or not twin.step_seconds:
            continue
        time_ratio, memory_ratio = results.checkpoint_ratios(c.n, c.method)
        same = [x for r in c.losses for x in r] == [x for r in twin.losses for x in r]
        table.add_row([str(c.n), LABELS[twin.method], format_ms(1e3 * _median_step(twin)),
                       format_ms(1e3 * _median_step(c)), format_ratio(time_ratio), format_mib(_median_peak(twin)),
                       format_mib(_median_peak(c)), format_ratio(memory_ratio), "yes" if same else "no"])
    return table


def build_report(results: TrainResults, environment: dict[str, Any]) -> SuiteReport:
    cfg = results.config
    targets = evaluate_targets(results)
    tables = [throughput_table(results)]
    checkpointing = checkpoint_table(results)
    if checkpointing.rows:
        tables.append(checkpointing)
    if results.memory:
        tables.append(memory_table(results))
    notes = [f"same data: {results.tokens} tokens of demo text (pydoc_data.topics, demo tokenizer), rows of <cls> + "
             f"N−1 tokens read on through the stream (wrapping at its end), BERT-masked once; every method trains "
             f"on the same batches in the same order; tokens/s counts all B·N positions",
             "transformer: the tiny config's text embedding, width, depth, heads, MLP ratio, norms and tied MLM "
             "head; pre-norm blocks, fused qkv + F.scaled_dot_product_attention, fixed sinusoidal positions",
             f"ITNet lowrank: every layer integrator=lowrank, support all (the windows of layers 0–1 dropped: low "
             f"rank integrates none), rank R={cfg.rank}, feature_map={cfg.feature_map}, kernel width 8 as configured",
             "params: each model's parameters; the ITNet pretraining models also hold image/point encoders and the "
             "contrastive, patch and point heads, unused by MLM batches",
             "step ms = tokens per step / the median tokens/s; peak MiB = growth of the process's resident high-water "
             "mark over a round of steps, the largest over rounds; loss = the last timed step's",
             "activation checkpointing: peak MiB = the median over rounds of that growth of the resident high-water "
             "mark (VmHWM, reset at each round's start, freed memory returned first), so it measures everything a "
             "step allocates above what lives between steps — activations, gradients, the optimizer's temporaries; "
             "the growth of the checkpointed twin shrinks by the activations it does not keep; same losses = every "
             "step's loss equal to the unchecked twin's (same seed and batches: identical training)"]
    if results.memory:
        notes.append("memory counted: every storage reachable from the engine, each once: parameters as the rank "
                     "holds them (whole, or ZeRO-3's partition ds_tensor plus the parameters kept whole), master "
                     "= the tensors the inner optimizer updates where they are other storages, Adam = exp_avg, "
                     "exp_avg_sq and step counters, grads = .grad and ZeRO's gradient partitions; state = "
                     "params + master + grads + Adam; buffers = ZeRO-3's reduce bucket (reduce_bucket_size "
                     "elements, allocated whole), other = anything else reachable")
        ranks = {s['variant']: s['ranks'] for s in memory_summary(results.memory)}
        notes.append("per-rank state MiB: " + "; ".join(
            f"{v}: " + ", ".join(f"rank {r} {b / MIB:.2f}" for r, b in sorted(rs.items())) for v, rs in ranks.items()))
    elif results.memory_error:
        notes.append(f"ZeRO memory not measured: {results.memory_error}")
    data = {"config": {**asdict(cfg), "zero3_variant": dict(cfg.zero3_variant)}, "environment": environment,
            "tokens_in_stream": results.tokens,
            "rows": [c.to_dict(results.tokens_per_step(c.n)) for c in results.cases if c.step_seconds],
            "ratios_vs_transformer": {str(n): {m: results.ratio(n, m) for m in cfg.methods if m != BASELINE}
                                      for n in cfg.sizes},
            "activation_checkpointing": {str(n): {CHECKPOINTED[m]: dict(zip(("step_time_ratio", "peak_memory_ratio"),
                                                                             results.checkpoint_ratios(n, m)))
                                                  for m in cfg.methods if m in CHECKPOINTED and CHECKPOINTED[m] in
                                                  cfg.methods}
                                         for n in cfg.sizes},
            "engines": {m: {k: v for k, v in i.items()} for m, i in results.engine_info.items()},
            "memory": results.memory, "memory_error": results.memory_error,
            "targets": [t.to_dict() for t in targets]}
    return SuiteReport(tables=tables, targets=targets, notes=notes, data=data)


def _zero_setting(text: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE`` of DeepSpeed's ``zero_optimization`` (VALUE as JSON, else a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


class TrainSuite(BenchmarkSuite):
    """``tools/bench.py train``: tokens/s of the tiny ITNet (exact, lowrank) vs a transformer; ZeRO-3 memory."""

    name = "train"
    description = ("DeepSpeed training tokens/s of the tiny ITNet (exact and lowrank) against a same-size SDPA "
                   "transformer, the cost and saving of activation checkpointing, and ZeRO-3 vs ZeRO-0 per-rank state "
                   "memory at 2 ranks")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=positive_int, nargs="+", metavar="N",
                            help=f"sequence lengths (default {' '.join(map(str, DEFAULT_SIZES))})")
        parser.add_argument("--quick", action="store_true",
                            help=f"seq {' '.join(map(str, QUICK_SIZES))}, 1 warm-up step, 2 rounds of 2 steps, "
                                 "memory at seq 64 (explicit options still win)")
        parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
        parser.add_argument("--micro-batch", type=positive_int, default=1, help="sequences per step (default 1)")
        parser.add_argument("--warmup", type=non_negative_int, help="untimed steps per method and length (default 2)")
        parser.add_argument("--steps", type=positive_int, help="timed steps per method in a round (default 3)")
        parser.add_argument("--repeats", type=positive_int, help="interleaved rounds; medians over them (default 3)")
        parser.add_argument("--rank", type=positive_int, default=DEFAULT_RANK, help="lowrank R (default 64)")
        parser.add_argument("--feature-map", choices=("learned", "prf"), default=DEFAULT_FEATURE_MAP,
                            help="lowrank feature maps (default learned)")
        parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: the demo's, built here)")
        parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's)")
        parser.add_argument("--seed", type=int, default=0, help="weights and masking seed (default 0)")
        parser.add_argument("--no-memory", action="store_true", help="skip the ZeRO memory figure")
        parser.add_argument("--memory-ranks", type=positive_int, default=ZERO_RANKS,
                            help=f"ranks of the ZeRO memory run (default {ZERO_RANKS}; the target is at {ZERO_RANKS})")
        parser.add_argument("--memory-seq", type=positive_int, help="sequence length of its steps (default 256)")
        parser.add_argument("--zero3-variant", type=_zero_setting, nargs="*", metavar="KEY=VALUE",
                            help="zero_optimization keys of a second ZeRO-3 run (default "
                                 "stage3_param_persistence_threshold=0; none given: no second run)")
        parser.add_argument("--memory-precision", choices=("fp32", "bf16"), default="fp32",
                            help="precision of the ZeRO memory run (default fp32, as the throughput runs)")
        parser.add_argument("--memory-timeout", type=float, default=900.0, help="seconds (default 900)")

    def config_from_args(self, args: argparse.Namespace) -> TrainBenchConfig:
        quick = args.quick
        sizes = tuple(dict.fromkeys(args.n or (QUICK_SIZES if quick else DEFAULT_SIZES)))
        if BASELINE not in args.methods:
            raise SuiteUsageError(f"--methods must include the baseline {BASELINE!r} (every ratio is against it)")
        if any(n < 2 for n in sizes) or (args.memory_seq is not None and args.memory_seq < 2):
            raise SuiteUsageError("sequence lengths must be >= 2 (<cls> and one token)")
        variant = (("stage3_param_persistence_threshold", 0),) if args.zero3_variant is None else \
            tuple(args.zero3_variant)
        return TrainBenchConfig(
            sizes=sizes, methods=tuple(m for m in METHODS if m in args.methods), micro_batch=args.micro_batch,
            warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
            steps=args.steps or (2 if quick else 3), repeats=args.repeats or (2 if quick else 3), rank=args.rank,
            feature_map=args.feature_map, seed=args.seed, memory=not args.no_memory, memory_ranks=args.memory_ranks,
            memory_seq=args.memory_seq or (64 if quick else 256), memory_precision=args.memory_precision,
            memory_timeout=args.memory_timeout,
            zero3_variant=variant)

    def run(self, args: argparse.Namespace) -> SuiteReport:
        config = self.config_from_args(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        environment = describe_environment("cpu", getattr(args, "argv", None))
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer_dir = args.tokenizer
            if tokenizer_dir is None:
                _log("building the demo tokenizer …")
                tokenizer_dir = build_demo_data(Path(scratch) / "demo")["tokenizer"]
            results, data = run_training_benchmark(config, Path(tokenizer_dir))
            if config.memory:
                try:
                    results.memory = run_memory_benchmark(config, data)
                except (RuntimeError, OSError) as error:
                    results.memory_error = " ".join(str(error).split())[-600:]
                    _log(f"ZeRO memory run failed: {error}")
        if hasattr(os, "getloadavg"):
            environment["load_average_after"] = list(os.getloadavg())
        return build_report(results, environment)
