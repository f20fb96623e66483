"""Benchmark suites behind ``tools/bench.py``, and what they share: tables, reports, a registry.

A suite is a :class:`BenchmarkSuite`: it adds its own command-line options, runs, and returns
a :class:`SuiteReport` (tables, target verdicts, and every figure for JSON). The CLI renders the
report as plain text or Markdown and writes the JSON, so suites never format output themselves
and the README's tables are exactly what the tool printed.

Suites are registered by name in :data:`SUITES` as ``"module:attribute"`` and imported only
when asked for; a new suite is one :func:`register_suite` call (or one line in :data:`SUITES`),
and the CLI does not change. Timing and memory measurement live in :mod:`.measure`.

**Import name.** This package is not part of the installed library: it is imported as
``benchmarks``, from the ``tools`` folder, and by that one name only. ``python tools/bench.py``
finds it because Python puts the script's folder (``tools``) first on the import path; the
tests find it because pytest's ``pythonpath`` (``pyproject.toml``) lists ``tools``; the ZeRO
memory benchmark's ranks run ``python -m benchmarks.zero_memory_worker`` from the ``tools``
folder. Inside the package every import of a sibling is relative and the registry names
modules relative to it, so the package works under whatever name it is imported (nothing in it
spells ``benchmarks``); the library itself never imports it.
"""

from __future__ import annotations

import argparse
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class SuiteUsageError(ValueError):
    """A suite's options are inconsistent or cannot run here; the CLI reports it as a usage error."""


class SuiteUnavailable(RuntimeError):
    """What was asked for needs hardware this machine lacks (a GPU): nothing was measured. The CLI prints the
    message, one line saying so and the command to run where the hardware is, and exits with status 2."""


# --------------------------------------------------------------------------------------
# Tables and reports
# --------------------------------------------------------------------------------------


@dataclass
class Table:
    """A titled table of already formatted cells.

    ``columns`` names the columns; each row has one string per column. Columns listed in
    ``right_aligned`` (numbers) are right-aligned in both renderings.
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    right_aligned: set[str] = field(default_factory=set)

    def add_row(self, cells: list[str]) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells but the table has {len(self.columns)} columns")
        self.rows.append(cells)

    def _widths(self) -> list[int]:
        return [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                for i, c in enumerate(self.columns)]

    def _align(self, text: str, width: int, column: str) -> str:
        return text.rjust(width) if column in self.right_aligned else text.ljust(width)

    def render_text(self) -> str:
        """A plain-text table: title, header, a rule, one line per row."""
        widths = self._widths()
        lines = [self.title, "  ".join(self._align(c, w, c) for c, w in zip(self.columns, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        for row in self.rows:
            lines.append("  ".join(self._align(x, w, c) for x, w, c in zip(row, widths, self.columns)).rstrip())
        return "\n".join(lines)

    def render_markdown(self) -> str:
        """The same table as GitHub-flavoured Markdown, preceded by its title in bold."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        # Three dashes per delimiter cell at least (some renderers need them), plus the colon.
        widths = [max(4 if c in self.right_aligned else 3, w) for c, w in zip(self.columns, self._widths())]
        rule = [("-" * (w - 1) + ":") if c in self.right_aligned else "-" * w for c, w in zip(self.columns, widths)]
        lines = [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self._align(cell(c), w, c) for c, w in zip(self.columns, widths)) + " |")
        lines.append("| " + " | ".join(rule) + " |")
        for row in self.rows:
            lines.append("| " + " | ".join(self._align(cell(x), w, c)
                                           for x, w, c in zip(row, widths, self.columns)) + " |")
        return "\n".join(lines)


@dataclass
class TargetVerdict:
    """Whether one target is met, decided from measured figures.

    status: ``"met"``, ``"not met"`` or ``"not evaluated"`` (the run lacks the figures).
    detail: the figures and the comparison behind the status.
    """

    name: str
    description: str
    status: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description, "status": self.status, "detail": self.detail}


@dataclass
class SuiteReport:
    """What a suite hands back to the CLI.

    tables: rendered to stdout in order. targets: printed after the tables. notes: other lines
    printed last (checks, caveats). data: every figure and the environment, written to the JSON file.
    failures: cases that raised instead of being measured (one line each); the CLI still prints the report and
    writes the JSON, then exits with status 1.
    """

    tables: list[Table]
    targets: list[TargetVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def render(self, markdown: bool = False) -> str:
        """The whole report as plain text, or as Markdown (tables and bullet lists)."""
        parts = [t.render_markdown() if markdown else t.render_text() for t in self.tables]
        if self.targets:
            head = "**Targets**\n" if markdown else "Targets:"
            lines = [f"- {t.description}: **{t.status}** ({t.detail})" if markdown
                     else f"  [{t.status}] {t.description}: {t.detail}" for t in self.targets]
            parts.append("\n".join([head, *lines]))
        if self.notes:
            parts.append("\n".join(f"- {n}" if markdown else n for n in self.notes))
        return "\n\n".join(parts)


# --------------------------------------------------------------------------------------
# Suites and the registry
# --------------------------------------------------------------------------------------


class BenchmarkSuite(ABC):
    """One named benchmark: its options, and a run that returns a :class:`SuiteReport`."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the suite's own options to its sub-command parser."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> SuiteReport:
        """Measure, decide the targets, and return the report. Raise :class:`SuiteUsageError`
        for options that cannot run here, :class:`SuiteUnavailable` for what needs hardware this machine lacks."""


#: Suite name → ``"module:attribute"`` of its :class:`BenchmarkSuite` subclass or instance; a module name
#: starting with ``.`` is relative to this package.
SUITES: dict[str, str] = {
    "operator": ".operator:OperatorSuite",
    "integrators": ".integrators:IntegratorSuite",
    "data": ".data:DataSuite",
    "train": ".train:TrainSuite",
    "compile": ".compile_cost:CompileSuite",
}


def register_suite(name: str, target: str) -> None:
    """Make ``name`` a suite of ``tools/bench.py``; ``target`` is ``"module:attribute"`` (a module name starting
    with ``.`` is relative to this package)."""
    if ":" not in target:
        raise ValueError(f"suite target must be 'module:attribute', got {target!r}")
    SUITES[name] = target


def available_suites() -> list[str]:
    """Registered suite names, sorted."""
    return sorted(SUITES)


def load_suite(name: str) -> BenchmarkSuite:
    """Import and instantiate the suite registered as ``name``."""
    if name not in SUITES:
        raise KeyError(f"unknown benchmark suite {name!r}; choose from {', '.join(available_suites())}")
    module_name, attribute = SUITES[name].split(":", 1)
    obj = getattr(importlib.import_module(module_name, package=__name__), attribute)
    suite = obj() if isinstance(obj, type) else obj
    if not isinstance(suite, BenchmarkSuite):
        raise TypeError(f"{SUITES[name]} is not a BenchmarkSuite")
    return suite


__all__ = [
    "SUITES",
    "BenchmarkSuite",
    "SuiteReport",
    "SuiteUnavailable",
    "SuiteUsageError",
    "Table",
    "TargetVerdict",
    "available_suites",
    "load_suite",
    "register_suite",
]
