#!/usr/bin/env python
"""Run a benchmark suite and print its table: ``python tools/bench.py SUITE [--json PATH] [--markdown] [...]``.

Suites are registered by name in the ``benchmarks`` package next to this script; each adds
its own options, shown by ``python tools/bench.py SUITE --help``. The table goes to stdout
(plain text, or Markdown with ``--markdown``: README tables are pasted from it), progress to
stderr, and ``--json PATH`` writes every figure plus the environment (versions, threads,
hardware, date, command line).

Examples::

    python tools/bench.py operator --quick
    python tools/bench.py operator --n 1024 4096 --repeats 3 --json bench/operator.json
    python tools/bench.py operator --n 16384 --methods tiled sdpa --causal --markdown
    python tools/bench.py operator --methods tiled sdpa triton flex --markdown   # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import BenchmarkSuite, SuiteUnavailable, SuiteUsageError, available_suites, load_suite
from benchmarks.measure import finite_for_json


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``SUITE`` (a registered name) and the suite's options, parsed later."""
    parser = argparse.ArgumentParser(
        prog="bench.py", allow_abbrev=False,
        description="Benchmarks of itnet_scale. 'bench.py SUITE --help' lists a suite's options.",
    )
    parser.add_argument("suite", metavar="SUITE", choices=available_suites(),
                        help="one of: " + ", ".join(available_suites()))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the suite's options (--json, --markdown, …)")
    return parser


def build_suite_parser(suite: BenchmarkSuite) -> argparse.ArgumentParser:
    """A suite's own parser: --json and --markdown, then the options the suite adds."""
    parser = argparse.ArgumentParser(prog=f"bench.py {suite.name}", description=suite.description,
                                     allow_abbrev=False)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure and the environment here")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    suite.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the suite, print the report, write the JSON. Returns the exit status: 0; 1 when a case failed
    (the report and the JSON still come out); 2 for bad options (argparse's usage error) or for what needs hardware
    this machine lacks (one line on stderr, nothing measured).

    Only the chosen suite is imported, so one suite's missing dependency never breaks another.
    """
    argv = sys.argv[1:] if argv is None else argv
    top_parser = build_parser()
    if not argv:
        top_parser.error(f"a SUITE is required: one of {', '.join(available_suites())}")
    top = top_parser.parse_args(argv)
    suite = load_suite(top.suite)
    parser = build_suite_parser(suite)
    args = parser.parse_args(top.options)
    args.argv = [sys.argv[0], *argv]
    try:
        report = suite.run(args)
    except SuiteUsageError as err:
        parser.error(str(err))
    except SuiteUnavailable as err:
        print(err, file=sys.stderr)
        return 2
    print(report.render(markdown=args.markdown))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"suite": top.suite, **report.data}
        args.json.write_text(json.dumps(finite_for_json(payload), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    for failure in report.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
