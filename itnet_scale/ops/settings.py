"""How ``Σ_j`` is computed: the integrator settings, small typed values, and the one vocabulary of backends.

Each integrator (DESIGN §1) is a frozen dataclass of its own settings, validated on construction; together they
are :data:`Integrator`, what :func:`itnet_scale.ops.integrate` takes::

    Exact(backend="auto", block_size=None)                     every pair (tiled, online normalization)
    LowRank(chunk_size=64, backend="auto")                     φ_i·ψ_j feature maps, linear in N
    MonteCarlo(samples=256, proposal="uniform", proposal_window=32, sample_block=64, backend="auto")

The feature maps φ, ψ are parameters, so they belong to the layer (:class:`itnet_scale.nn.FeatureMap`); the
settings here only choose the computation. Setting names are the YAML keys of a model config's layer
(``samples``, ``chunk_size``, …).

**Backends** mean the same for every integrator (:data:`BACKENDS`, checked by :func:`check_backend`):

- ``reference``: the spec in code, every pair (or ``φ ψᵀ``) materialized; ``O(N²)`` memory, for tests;
- ``torch``: the memory-efficient PyTorch form: the exact integrator's query × source tiles, the low-rank chunked
  scan, the Monte Carlo estimate on the exact tiles of its sampled sources (compiled where it pays);
- ``triton``: fused Triton kernels (:mod:`itnet_scale.ops.triton`) where one exists for the call — the exact
  integrator, forward and backward, which the Monte Carlo estimate on its sampled sources reaches too, and the
  low-rank integrator's causal scan; every other call runs ``torch``;
- ``auto``: the fastest available: ``triton`` for CUDA tensors where its kernel covers the call, else ``torch``.

``ITNET_BACKEND`` (one of :data:`BACKENDS`), when set, overrides every setting's backend (:func:`requested_backend`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar

BACKENDS = ("auto", "reference", "torch", "triton")
#: Set to one of :data:`BACKENDS`, it forces that backend on every integrator setting.
BACKEND_ENV_VAR = "ITNET_BACKEND"
#: Backend names of earlier releases, by what they are now called.
RENAMED_BACKENDS = {"tiled": "torch"}
PROPOSALS = ("uniform", "window", "learned")


def check_backend(backend: str) -> None:
    """``ValueError`` unless ``backend`` is one of :data:`BACKENDS` (an old name is pointed to its new one)."""
    if backend in RENAMED_BACKENDS:
        raise ValueError(f"backend={backend!r} is now called {RENAMED_BACKENDS[backend]!r} (one name for every "
                         f"integrator's memory-efficient torch form); choose from {BACKENDS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def requested_backend(backend: str) -> str:
    """The backend asked for: what ``ITNET_BACKEND`` forces when it is set, else ``backend`` (both checked)."""
    forced = os.environ.get(BACKEND_ENV_VAR, "")
    if not forced:
        check_backend(backend)
        return backend
    try:
        check_backend(forced)
    except ValueError as err:
        raise ValueError(f"{BACKEND_ENV_VAR}={forced!r}: {err}") from None
    return forced


def resolve_backend(backend: str) -> str:
    """The concrete backend of a computation whose every form is torch (the Monte Carlo sampling): ``reference`` or
    ``torch`` (``auto`` and ``triton`` run ``torch``). The exact and low-rank integrators pick among all three
    (:func:`itnet_scale.ops.exact.exact_backend`, :func:`itnet_scale.ops.lowrank.lowrank_backend`)."""
    requested = requested_backend(backend)
    return "reference" if requested == "reference" else "torch"


def _positive_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class Exact:
    """Every pair: ``reference`` materializes them, ``torch`` runs ``(queries, sources)`` tiles of ``block_size``
    (None: sized to the support, :func:`itnet_scale.ops.tiled.default_block`), ``triton`` the fused kernels
    (forward and backward) where they cover the call (:func:`itnet_scale.ops.exact.exact_backend`)."""

    backend: str = "auto"
    block_size: tuple[int, int] | None = None
    name: ClassVar[str] = "exact"

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.block_size is not None:
            block = tuple(self.block_size)
            if len(block) != 2:
                raise ValueError(f"block_size must be two positive ints (queries, sources), got {self.block_size}")
            for value in block:
                _positive_int("block_size", value)
            object.__setattr__(self, "block_size", block)


@dataclass(frozen=True)
class LowRank:
    """``F(s(i,j)) ≈ φ_i·ψ_j`` from the layer's feature maps: ``reference`` materializes ``φ ψᵀ``, ``torch`` runs
    causal passes as a scan in chunks of ``chunk_size`` positions, ``triton`` the same scan as fused kernels (in
    chunks of ``chunk_size`` rounded to a power of two in ``[16, 64]``) where they cover the call
    (:func:`itnet_scale.ops.lowrank.lowrank_backend`)."""

    chunk_size: int = 64
    backend: str = "auto"
    name: ClassVar[str] = "lowrank"

    def __post_init__(self) -> None:
        check_backend(self.backend)
        _positive_int("chunk_size", self.chunk_size)


@dataclass(frozen=True)
class MonteCarlo:
    """The exact kernel on ``samples`` sources drawn per block of ``sample_block`` queries from a ``proposal``:
    ``uniform``, ``window`` (the ``proposal_window`` positions around the block enumerated, the rest sampled) or
    ``learned`` (from the layer's low-rank feature maps). ``samples ≥ N`` enumerates every source: exact."""

    samples: int = 256
    proposal: str = "uniform"
    proposal_window: int = 32
    sample_block: int = 64
    backend: str = "auto"
    name: ClassVar[str] = "montecarlo"

    def __post_init__(self) -> None:
        check_backend(self.backend)
        _positive_int("samples", self.samples)
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        _positive_int("proposal_window", self.proposal_window, low=0)
        _positive_int("sample_block", self.sample_block)


Integrator = Exact | LowRank | MonteCarlo
INTEGRATORS: dict[str, type[Integrator]] = {cls.name: cls for cls in (Exact, LowRank, MonteCarlo)}


def check_is_integrator(value: object) -> None:
    """``TypeError`` unless ``value`` is an integrator setting (a name is not: see :func:`make_integrator`)."""
    if not isinstance(value, Exact | LowRank | MonteCarlo):
        raise TypeError(f"integrator must be Exact(...), LowRank(...) or MonteCarlo(...), got {value!r}")


def make_integrator(name: str, **settings: Any) -> Integrator:
    """The integrator called ``name`` with ``settings``; an unknown name or setting raises naming it."""
    if name not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {tuple(INTEGRATORS)}, got {name!r}")
    return with_settings(INTEGRATORS[name](), **settings)


def with_settings(integrator: Integrator, **settings: Any) -> Integrator:
    """``integrator`` with some settings changed (checked again); a setting it lacks raises naming it."""
    known = sorted(f.name for f in dataclasses.fields(integrator))
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"the {integrator.name} integrator has no settings {unknown}; its settings are {known}")
    return dataclasses.replace(integrator, **settings)
