"""``tools/bench.py``: the CLI end to end on a tiny configuration, its errors, and the operator suite's logic."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import Table, available_suites, load_suite
from benchmarks.measure import GIB, MIB, Measurement
from benchmarks.operator import (
    REFERENCE_TRAINING_FACTOR,
    CaseResult,
    OperatorBenchConfig,
    OperatorResults,
    evaluate_targets,
    reference_memory_estimate_bytes,
)

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench.py"
# Small enough to run in seconds; --block 16 puts several tiles in each direction.
TINY = ["--n", "32", "48", "--repeats", "1", "--heads", "2", "--head-dim", "16", "--width", "4", "--block", "16"]
# The tiled backend may torch.compile its tiles; compiling would dominate a seconds-long test.
ENV = {**os.environ, "ITNET_COMPILE": "0"}


def _load_cli():
    spec = importlib.util.spec_from_file_location("bench_cli", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One subprocess run with --markdown and --json: exit status, stdout, and the JSON."""
    out = tmp_path_factory.mktemp("bench") / "nested" / "operator.json"
    done = subprocess.run([sys.executable, str(BENCH), "operator", *TINY, "--markdown", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_cli_writes_every_figure_and_the_environment(cli_run) -> None:
    _, data = cli_run
    assert data["suite"] == "operator"
    assert {"config", "environment", "rows", "ratios", "reference_estimates", "targets"} <= data.keys()
    env = data["environment"]
    assert env["torch"] == torch.__version__ and "operator --n 32 48" in env["command_line"]
    assert data["config"]["block_size"] == [16, 16]
    rows = {(r["n"], r["method"]): r for r in data["rows"]}
    assert set(rows) == {(n, m) for n in (32, 48) for m in ("reference", "tiled", "sdpa")}
    for row in rows.values():
        assert row["status"] == "measured"
        for phase in ("fwd", "fwd_bwd"):
            assert row[phase]["repeats"] == 1 and row[phase]["median_ms"] > 0
            assert all(s > 0 for s in row[phase]["seconds"])
    for entry in data["ratios"]:
        n = entry["n"]
        for phase in ("fwd", "fwd_bwd"):
            tiled = rows[n, "tiled"][phase]["median_ms"]
            for other, key in (("reference", "tiled_over_reference"), ("sdpa", "tiled_over_sdpa")):
                assert entry[key][phase] == pytest.approx(tiled / rows[n, other][phase]["median_ms"])
    assert all(d["max_abs_diff"] < 1e-4 for d in data["tiled_vs_reference_max_abs_diff"])
    assert {t["name"] for t in data["targets"]} == {"tiled_memory", "tiled_not_slower_than_reference", "tiled_vs_sdpa"}


def test_cli_markdown_prints_a_markdown_table(cli_run) -> None:
    done, data = cli_run
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"\|\s+N\s+\| method", line))
    assert re.fullmatch(r"\|( :?-{3,}:? \|)+", lines[header + 1]), lines[header + 1]
    body = [line for line in lines[header + 2:] if line.startswith("|")]
    assert len(body) == len(data["rows"])
    assert all(line.count("|") == lines[header].count("|") for line in body)
    assert "**Targets**" in done.stdout


def test_cli_plain_text_and_skipped_reference(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """In process: a tiny budget skips the reference with its estimate; ratios against it are absent."""
    monkeypatch.setenv("ITNET_COMPILE", "0")
    cli = _load_cli()
    assert cli.main(["operator", *TINY[:2], *TINY[3:], "--warmup", "0", "--max-reference-gib", "1e-6"]) == 0
    out = capsys.readouterr().out
    estimate = reference_memory_estimate_bytes(1, 2, 32, 4, training=True)
    assert f"skipped (needs ~{estimate / GIB:.1f} GiB)" in out
    assert not any(line.startswith("|") for line in out.splitlines()) and "tiled/SDPA fwd+bwd" in out
    assert "[not evaluated] tiled never slower than reference" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a SUITE is required"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["operator", "--bogus"], "unrecognized arguments: --bogus"),
        (["operator", "--n", "0"], "argument --n: must be a positive integer"),
        (["operator", "--block", "8", "8", "8"], "--block takes one or two sizes"),
        (["operator", "--methods", "flash"], "argument --methods: invalid choice: 'flash'"),
    ],
)
def test_cli_rejects_bad_input_naming_it(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_cli_rejects_cuda_without_cuda(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main(["operator", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device 'cuda': CUDA is not available" in capsys.readouterr().err


def test_causal_run_matches_reference(tmp_path: Path, monkeypatch) -> None:
    """--causal: causal support for the operator, is_causal for SDPA; tiled still agrees with reference."""
    monkeypatch.setenv("ITNET_COMPILE", "0")
    out = tmp_path / "causal.json"
    argv = ["operator", "--n", "40", *TINY[3:], "--warmup", "0", "--causal", "--json", str(out)]
    assert _load_cli().main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["causal"] is True
    assert data["tiled_vs_reference_max_abs_diff"][0]["max_abs_diff"] < 1e-4
    assert all(r["status"] == "measured" for r in data["rows"])


def test_unknown_suite_in_a_subprocess_exits_non_zero() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "nosuch"], capture_output=True, text=True,
                          timeout=120, env=ENV, cwd=REPO, check=False)
    assert done.returncode != 0 and "nosuch" in done.stderr


def test_quick_and_defaults_resolve() -> None:
    suite = load_suite("operator")
    parser = _load_cli().build_suite_parser(suite)
    quick = suite.config_from_args(parser.parse_args(["--quick", "--device", "cpu"]))
    assert quick.sizes == (256, 1024) and quick.repeats == 2
    full = suite.config_from_args(parser.parse_args(["--device", "cpu", "--block", "64"]))
    assert full.sizes == (1024, 4096, 16384) and full.block_size == (64, 64) and full.max_reference_gib == 8
    assert "operator" in available_suites()


def test_reference_estimate_skips_above_2048_at_the_default_budget() -> None:
    pairs = 1 * 4 * 4096 * 4096 * 16 * 4
    assert reference_memory_estimate_bytes(1, 4, 4096, 16, training=True) == pairs * REFERENCE_TRAINING_FACTOR
    assert reference_memory_estimate_bytes(1, 4, 2048, 16, training=True) <= 8 * GIB
    assert reference_memory_estimate_bytes(1, 4, 4096, 16, training=True) > 8 * GIB


def _results(times: dict[tuple[int, str], tuple[float, float]], tiled_peak: int) -> OperatorResults:
    """Synthetic results: (n, method) → (fwd s, fwd+bwd s); the tiled fwd+bwd peak in bytes."""
    cfg = OperatorBenchConfig(sizes=tuple(sorted({n for n, _ in times})))
    results = OperatorResults(cfg)
    for (n, method), (fwd, fwd_bwd) in times.items():
        peak = tiled_peak if method == "tiled" else 0
        results.cases.append(CaseResult(n, method, Measurement([fwd], [0]), Measurement([fwd_bwd], [peak])))
    return results


def test_targets_follow_the_figures() -> None:
    good = _results({(2048, "reference"): (2.0, 6.0), (2048, "tiled"): (1.0, 3.0),
                     (4096, "tiled"): (4.0, 9.0), (4096, "sdpa"): (1.0, 3.0)}, tiled_peak=512 * MIB)
    assert [t.status for t in evaluate_targets(good)] == ["met", "met", "met"]
    bad = _results({(2048, "reference"): (2.0, 6.0), (2048, "tiled"): (1.0, 7.0),
                    (4096, "tiled"): (4.0, 9.1), (4096, "sdpa"): (1.0, 3.0)}, tiled_peak=2 * GIB)
    verdicts = evaluate_targets(bad)
    assert [t.status for t in verdicts] == ["not met", "not met", "not met"]
    assert "N=4096" in verdicts[0].detail and "N=2048 fwd+bwd" in verdicts[1].detail and "3.03×" in verdicts[2].detail


def test_table_renders_text_and_markdown() -> None:
    table = Table("t", ["name", "ms"], right_aligned={"ms"})
    table.add_row(["a|b", "1.5"])
    assert table.render_text().splitlines()[1:] == ["name   ms", "----  ---", "a|b   1.5"]
    assert table.render_markdown().splitlines()[2:] == ["| name |   ms |", "| ---- | ---: |", "| a\\|b |  1.5 |"]
    with pytest.raises(ValueError, match="cells"):
        table.add_row(["only one"])


def test_agreement_check_catches_a_wrong_tiled_output(monkeypatch) -> None:
    """The pre-timing check compares against the reference on sampled queries: a wrong backend shows."""
    from benchmarks import operator

    config = OperatorBenchConfig(sizes=(40,), heads=2, head_dim=8, kernel_width=4, block_size=(16, 16))
    inputs, _ = operator.make_operator_inputs(config, 40)
    assert operator._max_abs_diff(inputs, config) < 1e-5
    right = operator.method_call
    monkeypatch.setattr(operator, "method_call",
                        lambda method, inp, cfg: (lambda: right(method, inp, cfg)() + 0.01) if method == "tiled"
                        else right(method, inp, cfg))
    assert operator._max_abs_diff(inputs, config) == pytest.approx(0.01, rel=1e-3)
    results = OperatorResults(config, max_abs_diff={40: 0.01})
    assert "DISAGREE" in operator.build_report(results, environment={}).render()
