"""The ``integrators`` suite: a tiny end-to-end run through the CLI, the plot, and the target logic."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import integrators
from benchmarks.integrators import (
    Case,
    IntegratorBenchConfig,
    IntegratorResults,
    evaluate_targets,
    growth_power,
    import_pyplot,
)
from benchmarks.measure import Measurement

REPO = Path(__file__).resolve().parents[3]
TINY = ["--n", "96", "160", "--repeats", "1", "--warmup", "0", "--dim", "32", "--heads", "2", "--width", "4",
        "--rank", "8", "--samples", "40", "--sample-block", "8", "--proposal-window", "4", "--fit-n", "48",
        "--fit-steps", "30", "--fit-sigma", "2", "--distill-steps", "5"]


def _cli():
    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cli_runs_every_method_writes_json_and_plot(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ITNET_COMPILE", "0")
    out, png = tmp_path / "integrators.json", tmp_path / "plot.png"
    assert _cli().main(["integrators", *TINY, "--markdown", "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["n"], r["method"]) for r in data["rows"]}
    assert rows == {(n, m) for n in (96, 160) for m in
                    ("sdpa", "sdpa_causal", "exact", "lowrank", "lowrank_causal", "montecarlo")}
    assert all(r["fwd"]["median_ms"] > 0 and r["fwd_bwd"]["median_ms"] > 0 for r in data["rows"])
    errors = {(e["n"], e["method"], e["note"]): e["rel_error"] for e in data["errors"]}
    window = errors[(96, "montecarlo", "(fitted kernel, window proposal)")]
    uniform = errors[(96, "montecarlo", "(fitted kernel, uniform proposal)")]
    assert window < uniform, "on a fitted local kernel the window proposal must beat uniform"
    assert data["fit_curve"][-1] < data["fit_curve"][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| montecarlo" in printed and "**Targets**" in printed


def test_cli_refuses_a_window_that_leaves_no_samples(capsys) -> None:
    with pytest.raises(SystemExit):
        _cli().main(["integrators", "--samples", "64", "--sample-block", "32", "--proposal-window", "16"])
    assert "must be < --samples" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra_before_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # as if matplotlib were not installed
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'itnet_scale[bench]'")):
        import_pyplot()

    def measure_anything(*args, **kwargs):
        raise AssertionError("the suite ran before finding matplotlib missing")

    monkeypatch.setattr(integrators, "run_integrator_benchmark", measure_anything)
    with pytest.raises(SystemExit) as stop:
        _cli().main(["integrators", *TINY, "--plot", str(tmp_path / "plot.png")])
    assert stop.value.code == 2  # a usage error, before the run
    assert "--plot draws with matplotlib" in capsys.readouterr().err


def _results(times: dict[tuple[int, str], tuple[float, float]], errors: dict[tuple[int, str], float]):
    res = IntegratorResults(IntegratorBenchConfig())
    for (n, method), (fwd, train) in times.items():
        res.cases.append(Case(n, method, Measurement(seconds=[fwd / 1e3]), Measurement(seconds=[train / 1e3])))
    res.errors = [{"n": n, "method": m, "rel_error": e, "note": ""} for (n, m), e in errors.items()]
    return res


def test_targets_follow_the_figures() -> None:
    good = _results({(32768, "sdpa_causal"): (1000, 4000), (32768, "lowrank_causal"): (50, 200),
                     (4096, "lowrank_causal"): (10, 40), (65536, "lowrank_causal"): (160, 640),
                     (16384, "exact"): (4000, 20000), (16384, "montecarlo"): (150, 900)},
                    {(16384, "montecarlo"): 0.02})
    assert [t.status for t in evaluate_targets(good)] == ["met", "met", "met"]
    assert growth_power(good, "lowrank_causal", "fwd", 4096, 65536) == pytest.approx(1.0, abs=0.01)
    bad = _results({(32768, "sdpa_causal"): (1000, 1500), (32768, "lowrank_causal"): (50, 200),
                    (4096, "lowrank_causal"): (10, 40), (65536, "lowrank_causal"): (400, 2000),
                    (16384, "exact"): (4000, 20000), (16384, "montecarlo"): (150, 900)},
                   {(16384, "montecarlo"): 0.2})
    assert [t.status for t in evaluate_targets(bad)] == ["not met", "not met", "not met"]
    assert [t.status for t in evaluate_targets(_results({}, {}))] == ["not evaluated"] * 3
