"""``tools/distill_kernel.py`` and :mod:`itnet_scale.nn.distill`: fitting feature maps to the exact kernel."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from itnet_scale.nn import IntegralTransform
from itnet_scale.nn.distill import fit_feature_maps, kernel_loss, relative_output_error, with_rank

TOOL = Path(__file__).resolve().parents[2] / "tools" / "distill_kernel.py"


def _tool():
    spec = importlib.util.spec_from_file_location("distill_kernel", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_fitting_lowers_the_error_and_touches_only_the_feature_maps(mode):
    torch.manual_seed(0)
    layer = IntegralTransform(16, 2, mode=mode, support="causal", decay=True, kernel_width=8, rank=8)
    exact_params = {n: p.clone() for n, p in layer.named_parameters() if not n.startswith("features.")}
    result = fit_feature_maps(layer, steps=40, seq=32, batch=2, seed=0)
    assert result.error_after < result.error_before
    assert sum(result.losses[-5:]) < sum(result.losses[:5])  # each step draws a fresh batch: compare averages
    assert all(torch.equal(p, exact_params[n]) for n, p in layer.named_parameters() if n in exact_params)
    assert all(p.requires_grad for p in layer.parameters()), "frozen flags must be restored"
    assert layer.integrator == "exact"


def test_loss_is_zero_where_the_low_rank_kernel_is_exact():
    layer = IntegralTransform(16, 2, mode="linear", support="causal", decay=True, kernel_width=0, rank=8)
    x = torch.randn(2, 20, 16)
    assert kernel_loss(layer, x).item() < 1e-10
    assert relative_output_error(layer, x) < 1e-5


def test_with_rank_replaces_the_feature_maps():
    layer = with_rank(IntegralTransform(16, 2, kernel_width=4), 5, "prf")
    assert layer.features.rank == 5 and layer.features.kind == "prf"
    layer.integrator = "lowrank"
    assert layer(torch.randn(1, 7, 16)).shape == (1, 7, 16)
    with pytest.raises(ValueError, match="rank=R"):
        fit_feature_maps(IntegralTransform(16, 2), steps=1)


@pytest.mark.slow
def test_cli_fits_each_rank_from_a_checkpoint_and_writes_json(tmp_path: Path, capsys):
    torch.manual_seed(1)
    config = {"dim": 16, "heads": 2, "support": "causal", "decay": True, "kernel_width": 8}
    layer = IntegralTransform(**config)
    save_file(layer.state_dict(), str(tmp_path / "layer.safetensors"))
    (tmp_path / "layer.json").write_text(json.dumps(config))
    out = _tool().main(["--checkpoint", str(tmp_path / "layer.safetensors"), "--layer-config",
                        str(tmp_path / "layer.json"), "--ranks", "2", "16", "--steps", "120", "--seq", "32",
                        "--json", str(tmp_path / "r.json"), "--save-dir", str(tmp_path / "fitted")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    by_rank = {r["rank"]: r for r in out["results"]}
    assert all(r["error_after"] < r["error_before"] for r in by_rank.values())
    assert by_rank[16]["error_after"] <= by_rank[2]["error_after"]
    assert (tmp_path / "fitted" / "layer_R16.safetensors").exists()
    assert "error before" in capsys.readouterr().out


def test_cli_names_a_bad_checkpoint_or_config(tmp_path: Path):
    config = {"dim": 16, "heads": 2}
    (tmp_path / "layer.json").write_text(json.dumps(config))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SystemExit, match=r"broken\.safetensors"):
        _tool().main(["--checkpoint", str(tmp_path / "broken.safetensors"), "--layer-config",
                      str(tmp_path / "layer.json")])
    other = IntegralTransform(16, 2, kernel_width=4)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(SystemExit, match=r"tensor 'a_proj\.\w+' has shape"):
        _tool().main(["--checkpoint", str(tmp_path / "other.safetensors"), "--layer-config",
                      str(tmp_path / "layer.json")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"bad\.json"):
        _tool().main(["--checkpoint", str(tmp_path / "other.safetensors"), "--layer-config",
                      str(tmp_path / "bad.json")])
