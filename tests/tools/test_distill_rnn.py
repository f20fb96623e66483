"""tools/distill_rnn.py: a short GRU → ITNet distillation learns, and the CLI writes its figures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "distill_rnn.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("distill_rnn", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_distillation_reduces_error():
    tool = load_tool()
    res = tool.distill_rnn(steps=60, hidden=8, length=16, seed=0, in_dim=4, width=16, layers=1, heads=2, batch=16,
                       lr=1e-2, n_test=32, n_linear_train=64)
    assert res["itnet_rel_error"] < 0.6 * res["initial_rel_error"]
    assert res["itnet_rel_error"] < 1.0  # better than predicting zeros
    assert res["zeros_rel_error"] == 1.0
    assert 0.0 < res["linear_rel_error"] < 1.0


def test_linear_baseline_is_exact_on_a_linear_system():
    """The least-squares LTI filter recovers a causal linear filter (it is a real baseline, not a guess)."""
    tool = load_tool()
    g = torch.Generator().manual_seed(0)
    K = torch.randn(5, 3, 2, generator=g)  # lags 0..4, out 3, in 2

    def system(x):
        return sum(torch.nn.functional.pad(x, (0, 0, k, 0))[:, : x.shape[1]] @ K[k].T for k in range(5))

    x_tr, x_te = torch.randn(40, 12, 2, generator=g), torch.randn(8, 12, 2, generator=g)
    assert tool.linear_baseline(x_tr, system(x_tr), x_te, system(x_te)) < 1e-5


def test_cli_writes_json(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "res.json"
    res = tool.main(["--steps", "3", "--hidden", "4", "--length", "5", "--in-dim", "3", "--width", "8",
                     "--heads", "2", "--layers", "1", "--log-every", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["itnet_rel_error"] == pytest.approx(res["itnet_rel_error"])
    assert math.isfinite(saved["linear_rel_error"])
    assert "held-out relative error" in capsys.readouterr().out


def test_bad_arguments():
    tool = load_tool()
    with pytest.raises(ValueError, match="steps"):
        tool.distill_rnn(steps=-1)
    with pytest.raises(SystemExit):
        tool.main(["--teacher", "rnn"])
