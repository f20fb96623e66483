"""The protocol picks the learning rate on validation and repeats the seeds there; a tiny real run of the command
writes the table, the JSON and the plot; bad command lines get clear errors."""

import json

import pytest

from comparison.cli import main
from comparison.protocol import RunResult, run_protocol


def fake_trainer(val_by_lr: dict[float, float], calls: list[tuple[float, int]]):
    def train(lr: float, seed: int) -> RunResult:
        calls.append((lr, seed))
        val = val_by_lr[lr]
        return RunResult("t", "m", lr, seed, 10, 1.0, val, val + seed, 0.0)
    return train


@pytest.mark.parametrize(("higher", "chosen"), [(True, 3e-3), (False, 1e-4)])
def test_protocol_picks_the_lr_by_validation_then_runs_the_seeds(higher, chosen):
    calls: list[tuple[float, int]] = []
    # the test metric (val + seed) never decides: only validation does
    result = run_protocol("t", "m", fake_trainer({1e-4: 0.2, 1e-3: 0.5, 3e-3: 0.9}, calls), [1e-4, 1e-3, 3e-3],
                          [0, 1, 2], higher_is_better=higher)
    assert result.chosen == chosen
    assert calls == [(1e-4, 0), (1e-3, 0), (3e-3, 0), (chosen, 1), (chosen, 2)]
    assert [run.seed for run in result.seeds] == [0, 1, 2] and len(result.sweep) == 3


def test_protocol_passes_over_a_diverged_lr():
    calls: list[tuple[float, int]] = []
    result = run_protocol("t", "m", fake_trainer({1e-3: 0.4, 1e-2: float("nan")}, calls), [1e-3, 1e-2], [0],
                          higher_is_better=True)
    assert result.chosen == 1e-3


@pytest.mark.slow
def test_a_tiny_real_run_writes_table_json_and_plot(tmp_path):
    pytest.importorskip("mambapy")
    out = tmp_path / "out"
    assert main(["--quick", "--tasks", "parity", "digits", "--models", "itnet", "gru", "resnet", "logreg",
                 "--itnet", "k8:layer.kernel_width=8", "--steps", "3", "--lrs", "1e-3", "3e-3", "--seeds", "0", "1",
                 "--atlas", "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = {(row["task"], row["model"]) for row in payload["summary"]}
    assert rows == {("parity", "itnet"), ("parity", "gru"), ("parity", "itnet-k8"), ("digits", "itnet"),
                    ("digits", "resnet"), ("digits", "logreg"), ("digits", "itnet-k8")}
    neural = [run for run in payload["runs"] if run["model"] != "logreg"]
    assert len(neural) == 6 * 3  # 2 lrs at seed 0, then seed 1 at the chosen lr
    logreg = [run for run in payload["runs"] if run["model"] == "logreg"]
    assert sorted({run["hyper"] for run in logreg}) == [0.1, 1.0, 10.0]
    assert payload["settings"]["itnet_variants"] == {"itnet-k8": {"layer": {"kernel_width": 8}}}
    table = (out / "results.md").read_text()
    assert "| digits | logreg |" in table and "| parity | itnet-k8 |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --atlas: the ITNet rows' first-seed models at the chosen rate, not the specialists'
    chosen = {row["model"]: row for row in payload["summary"] if row["task"] == "digits"}
    atlas = json.loads((out / "atlas" / "digits" / "itnet" / "atlas.json").read_text())
    assert len(atlas["layers"]) == 3 and all(len(layer["heads"]) == 4 for layer in atlas["layers"])
    assert sorted(p.name for p in (out / "atlas").iterdir()) == ["digits", "parity"]
    assert sorted(p.name for p in (out / "atlas" / "parity").iterdir()) == ["itnet", "itnet-k8"]
    atlas_table = (out / "atlas.md").read_text()
    assert atlas_table.count("\n") == 2 + 4 and f"| digits | itnet | {chosen['itnet']['chosen']:g} |" in atlas_table


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", "mnist"], "unknown task 'mnist'"),
    (["--models", "lstm"], "unknown model"),
    (["--tasks", "fashion-mnist"], "make fashion-mnist"),
    (["--tasks", "parity", "--models", "fno"], "none of the models"),
    (["--tasks", "parity", "--itnet", "itnet-x"], "expected NAME:key=value"),
    (["--tasks", "parity", "--itnet", "lowrank:depth=2"], "clash"),
    (["--tasks", "parity", "--itnet", "w:layer.nope=1"], "nope"),
])
def test_bad_command_lines_get_clear_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
