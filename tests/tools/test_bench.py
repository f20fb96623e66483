"""``tools/bench.py``: the CLI end to end on a tiny configuration, its errors, and the operator suite's logic.

The operator suite's ``triton`` and ``flex`` methods are timed on CUDA only: here their calls are checked against the
reference (Triton's interpreter, which ``tests/conftest.py`` turns on; FlexAttention uncompiled, forward), their
no-GPU paths (skipped rows, exit status 2) and failure path; a ``gpu``-marked test times them on a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

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
from itnet_scale.ops.triton import interpreting

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench.py"
# Small enough to run in seconds; --block 16 puts several tiles in each direction.
TINY = ["--n", "32", "48", "--repeats", "1", "--heads", "2", "--head-dim", "16", "--width", "4", "--block", "16"]
# The tiled backend may torch.compile its tiles; compiling would dominate a seconds-long test.
ENV = {**os.environ, "ITNET_COMPILE": "0"}
# What a skipped GPU method's row says on a CPU run (--device cpu) here.
CPU_SKIP_REASON = "device cpu, not CUDA" if torch.cuda.is_available() else "no CUDA device"
# The command a no-GPU run points to starts so (the tests run Triton's interpreter: a GPU run must turn it off).
GPU_COMMAND = ("TRITON_INTERPRET=0 " if interpreting() else "") + "python tools/bench.py operator"


def _pair_flops(heads: int, d: int, r: int) -> float:
    """Forward model FLOPs per visible pair and batch: 2·H·(d + e + 1.5·r), e = d (models/flops.py's count)."""
    return 2 * heads * (d + d + 1.5 * r)


def _load_cli():
    spec = importlib.util.spec_from_file_location("bench_cli", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One subprocess run with --markdown and --json: exit status, stdout, and the JSON."""
    out = tmp_path_factory.mktemp("bench") / "nested" / "operator.json"
    done = subprocess.run([sys.executable, str(BENCH), "operator", *TINY, "--device", "cpu", "--markdown",
                           "--json", str(out)],
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
    assert set(rows) == {(n, m) for n in (32, 48) for m in ("reference", "tiled", "sdpa", "triton", "flex")}
    for (n, method), row in rows.items():
        if method in ("triton", "flex"):  # timed on CUDA only: listed, not measured
            assert row["status"] == "skipped" and row["skip_reason"] == CPU_SKIP_REASON
            assert row["fwd"] is None and row["fwd_bwd"] is None and row["tflops"] == {"fwd": None, "fwd_bwd": None}
            continue
        assert row["status"] == "measured"
        pair = _pair_flops(2, 16, 0 if method == "sdpa" else 4)
        for phase, factor in (("fwd", 1), ("fwd_bwd", 3)):
            assert row[phase]["repeats"] == 1 and row[phase]["median_ms"] > 0
            assert all(s > 0 for s in row[phase]["seconds"])
            assert row["flops"][phase] == pytest.approx(factor * pair * n * n)  # support all: N sources per query
            assert row["tflops"][phase] == pytest.approx(row["flops"][phase] / row[phase]["median_seconds"] / 1e12)
    for entry in data["ratios"]:
        n = entry["n"]
        for phase in ("fwd", "fwd_bwd"):
            tiled = rows[n, "tiled"][phase]["median_ms"]
            for other, key in (("reference", "tiled_over_reference"), ("sdpa", "tiled_over_sdpa")):
                assert entry[key][phase] == pytest.approx(tiled / rows[n, other][phase]["median_ms"])
            assert entry["triton_over_sdpa"][phase] is None and entry["triton_over_tiled"][phase] is None
    assert data["not_measured"] == {"triton": CPU_SKIP_REASON, "flex": CPU_SKIP_REASON}
    assert data["gpu_command"].startswith(GPU_COMMAND + " --n 32 48") and "--device" not in data["gpu_command"]
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
    for column in ("fwd TFLOP/s", "fwd+bwd TFLOP/s", "triton/SDPA fwd+bwd", "triton/tiled fwd+bwd"):
        assert column in lines[header]
    assert sum(f"skipped ({CPU_SKIP_REASON})" in line for line in body) == 4  # triton and flex at both N
    assert "**Targets**" in done.stdout
    assert "score_mod β·q·k/√d + Σ_r w2_r σ(a_ir + b_jr)" in done.stdout
    note = next(line for line in lines if line.startswith(f"- no GPU for triton, flex ({CPU_SKIP_REASON}): not "))
    assert note.endswith(f"On a GPU run: {data['gpu_command']}")


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


@pytest.mark.parametrize("methods", [["tiled", "triton"], ["flex"], ["triton", "flex", "sdpa"]])
def test_cli_gpu_methods_without_a_gpu_exit_2_with_one_line(methods: list[str], capsys) -> None:
    """Naming triton or flex where they cannot be timed measures nothing: status 2, one line with the command."""
    argv = ["operator", "--n", "32", "--methods", *methods, "--device", "cpu", "--repeats", "1"]
    assert _load_cli().main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    asked = [m for m in ("triton", "flex") if m in methods]
    assert line == (f"no GPU for {', '.join(asked)} ({CPU_SKIP_REASON}): nothing measured. On a GPU run: "
                    f"{GPU_COMMAND} --n 32 --methods {' '.join(methods)} --repeats 1")


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
    argv = ["operator", "--n", "40", *TINY[3:], "--warmup", "0", "--causal", "--device", "cpu", "--json", str(out)]
    assert _load_cli().main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["causal"] is True
    assert data["tiled_vs_reference_max_abs_diff"][0]["max_abs_diff"] < 1e-4
    rows = {r["method"]: r for r in data["rows"]}
    assert all(rows[m]["status"] == "measured" for m in ("reference", "tiled", "sdpa"))
    assert rows["triton"]["status"] == rows["flex"]["status"] == "skipped"
    assert rows["tiled"]["flops"]["fwd"] == pytest.approx(_pair_flops(2, 16, 4) * 40 * 40 / 2)  # N/2 sources


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
    results = OperatorResults(config, max_abs_diff={"tiled": {40: 0.01}})
    assert "N=40: tiled and reference outputs DISAGREE" in operator.build_report(results, environment={}).render()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(("causal", "activation"), [(False, "relu"), (True, "gelu")])
def test_triton_and_flex_methods_compute_the_operator(causal: bool, activation: str, monkeypatch) -> None:
    """The triton method runs the Triton kernels (here under the interpreter) and the flex method's score_mod and
    block mask give the operator's output: both agree with the reference, as the pre-timing check sees them."""
    from benchmarks import operator

    config = OperatorBenchConfig(sizes=(40,), heads=2, head_dim=16, kernel_width=4, causal=causal,
                                 activation=activation)
    inputs, _ = operator.make_operator_inputs(config, 40)
    with torch.no_grad():
        inputs.beta.copy_(torch.tensor([0.5, 1.5]))  # the suite's β = 1 would hide a score_mod without it
    # Compiled FlexAttention takes seconds to build on a CPU; uncompiled it computes the same (forward only here).
    monkeypatch.setattr(operator, "_compiled_flex_attention", lambda: flex_attention)
    assert operator._max_abs_diff(inputs, config, "triton") < 1e-5
    assert operator._max_abs_diff(inputs, config, "flex") < 1e-5
    # Without the kernel MLP (w2 = 0) and with β = 1, flex is softmax attention: SDPA's output.
    with torch.no_grad():
        inputs.w2.zero_()
        inputs.beta.fill_(1.0)
        flex = operator.method_call("flex", inputs, config)()
        sdpa = operator.method_call("sdpa", inputs, config)()
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="covers β q·k/√d \\+ w2ᵀσ\\(a_i \\+ b_j\\) only"):
        operator.flex_score_mod(replace(inputs, pos_weight=torch.zeros(2, 4, 1)), config.spec)


def test_triton_method_refuses_a_call_its_kernels_do_not_cover() -> None:
    """backend "triton" would run torch for a call its kernels skip (a float attn_mask that needs its gradient):
    the method says so instead of timing it."""
    from benchmarks import operator

    config = OperatorBenchConfig(sizes=(16,), heads=1, head_dim=8, kernel_width=2)
    inputs, _ = operator.make_operator_inputs(config, 16)
    with pytest.raises(RuntimeError, match="do not cover this configuration"):
        operator.method_call("triton", replace(inputs, attn_mask=torch.zeros(16, 16, requires_grad=True)), config)


def test_gpu_command_drops_the_device_option() -> None:
    from benchmarks.operator import gpu_command

    argv = ["operator", "--device", "cpu", "--n", "64", "--device=cuda:1", "--causal"]
    assert gpu_command(argv) == f"{GPU_COMMAND} --n 64 --causal"
    assert gpu_command(None) == GPU_COMMAND


def test_a_failing_gpu_method_keeps_the_other_figures_and_exits_1(monkeypatch, capsys) -> None:
    """Where a GPU method raises (it is only ever run on a GPU), its row says so, the others are measured, the JSON
    is written and the exit status is 1."""
    from benchmarks import operator

    monkeypatch.setenv("ITNET_COMPILE", "0")
    monkeypatch.setattr(operator, "gpu_only_problem", lambda method, device: None)
    right = operator.method_call

    def flex_breaks(method, inputs, config):
        if method == "flex":
            raise RuntimeError("no kernel for this score_mod\nsecond line")
        return right(method, inputs, config)

    monkeypatch.setattr(operator, "method_call", flex_breaks)
    argv = ["operator", "--n", "32", *TINY[3:], "--warmup", "0", "--device", "cpu", "--methods", "sdpa", "flex"]
    assert _load_cli().main(argv) == 1
    captured = capsys.readouterr()
    assert "failed (RuntimeError)" in captured.out
    assert "N=32 flex: RuntimeError: no kernel for this score_mod (not measured)" in captured.out
    assert "failed: N=32 flex: RuntimeError: no kernel for this score_mod" in captured.err
    assert "second line" not in captured.out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_times_triton_and_flex(tmp_path: Path) -> None:
    """On a GPU (compiled Triton kernels): every method measured, triton and flex agree with the reference, and
    their TFLOP/s and ratios are filled in."""
    out = tmp_path / "operator-gpu.json"
    argv = ["--n", "256", "--repeats", "2", "--heads", "2", "--head-dim", "32", "--width", "8", "--causal"]
    done = subprocess.run([sys.executable, str(BENCH), "operator", *argv, "--json", str(out)], capture_output=True,
                          text=True, timeout=900, env={**ENV, "TRITON_INTERPRET": "0"}, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["environment"]["device"] == "cuda" and data["not_measured"] == {}
    rows = {r["method"]: r for r in data["rows"]}
    assert all(row["status"] == "measured" for row in rows.values())
    for method in ("tiled", "triton", "flex"):
        assert data[f"{method}_vs_reference_max_abs_diff"][0]["max_abs_diff"] < 1e-3
        assert rows[method]["tflops"]["fwd_bwd"] > 0
    assert all(value is not None for key in ("triton_over_sdpa", "triton_over_tiled")
               for value in data["ratios"][0][key].values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flex_gradients_match_the_reference_on_a_gpu() -> None:
    """Compiled FlexAttention's gradients reach β, w2, a and b through the score_mod: its forward + backward trains
    what the operator trains, so its timing is comparable."""
    from benchmarks import operator

    config = OperatorBenchConfig(sizes=(200,), heads=2, head_dim=32, kernel_width=8, causal=True, device="cuda")
    inputs, grad_out = operator.make_operator_inputs(config, 200)
    leaves = [t for t in inputs.tensors() if t is not None and t.requires_grad]
    operator.method_call("flex", inputs, config)().backward(grad_out)
    flex_grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    operator.method_call("reference", inputs, config)().backward(grad_out)
    for got, t in zip(flex_grads, leaves):
        torch.testing.assert_close(got, t.grad, atol=2e-4, rtol=2e-4)
