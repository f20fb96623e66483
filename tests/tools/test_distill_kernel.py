"""``tools/distill_kernel.py``: fitting feature maps to the exact kernel lowers the error, more rank helps,
checkpoints go in and come back out, and bad inputs are named."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.ops import Exact, LowRank

TOOL = Path(__file__).resolve().parents[2] / "tools" / "distill_kernel.py"
FAST = {"steps": 60, "seq": 48, "batch": 4}


def load_tool():
    spec = importlib.util.spec_from_file_location("distill_kernel", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_state(layer: IntegralTransform) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in layer.state_dict().items() if not n.startswith("features.")}


@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_distill_lowers_the_error_more_with_more_rank_and_leaves_the_layer_alone(mode):
    tool = load_tool()
    torch.manual_seed(0)
    layer = IntegralTransform(16, 2, KernelConfig(mode=mode, support="causal", decay=True, width=8))
    before = kernel_state(layer)
    out = tool.distill(layer, [2, 32], **FAST)
    json.dumps(out, allow_nan=False)  # JSON-ready
    by_rank = {r["rank"]: r for r in out["results"]}
    assert set(by_rank) == {2, 32}
    for r in by_rank.values():
        assert r["error_after"] < r["error_before"]
        assert r["skipped_steps"] == 0 and r["loss_final"] < r["loss_first"]
    assert by_rank[32]["error_after"] <= by_rank[2]["error_after"]
    assert out["loss"] == ("kl_rows" if mode == "softmax" else "relative_mse")
    # a sweep fits copies: the layer keeps its (absent) feature maps and its kernel
    assert layer.features is None
    assert all(torch.equal(t, before[n]) for n, t in kernel_state(layer).items())


def test_distill_fits_the_layers_own_features_in_place():
    """``ranks=None`` is what a benchmark calls: the layer's own feature maps are fitted; nothing else moves."""
    tool = load_tool()
    torch.manual_seed(0)
    layer = IntegralTransform(16, 2, KernelConfig(support="causal", decay=True, width=8, rank=16),
                              LowRank(backend="reference"))
    before = kernel_state(layer)
    features_before = {n: p.clone() for n, p in layer.features.named_parameters()}
    x = torch.randn(2, 48, 16)
    with torch.no_grad():
        y_before = layer(x)
    out = tool.distill(layer, **FAST)
    (r,) = out["results"]
    assert r["rank"] == 16 and r["error_after"] < r["error_before"]
    assert layer.integrator == LowRank(backend="reference")
    assert all(p.requires_grad for p in layer.parameters()), "frozen flags must be restored"
    assert all(torch.equal(t, before[n]) for n, t in kernel_state(layer).items())
    assert any(not torch.equal(p, features_before[n]) for n, p in layer.features.named_parameters())
    with torch.no_grad():
        y_after = layer(x)
        layer.integrator = Exact()
        y_exact = layer(x)
    assert (y_after - y_exact).norm() < (y_before - y_exact).norm()
    with pytest.raises(ValueError, match="no feature maps to fit"):
        tool.distill(IntegralTransform(16, 2), steps=1)
    with pytest.raises(ValueError, match="ranks must be positive"):
        tool.distill(layer, [0], steps=1)


def test_steps_with_a_non_finite_loss_are_skipped(monkeypatch):
    import itnet_scale.nn.distill as library

    tool = load_tool()
    real = library.kernel_loss
    calls = {"n": 0}

    def sometimes_nan(layer, x):
        calls["n"] += 1
        loss = real(layer, x)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(library, "kernel_loss", sometimes_nan)
    torch.manual_seed(0)
    layer = IntegralTransform(16, 2, KernelConfig(support="causal", width=4, rank=4))
    (r,) = tool.distill(layer, steps=8, seq=16, batch=2)["results"]
    assert r["skipped_steps"] == 1
    assert math.isfinite(r["error_after"]) and all(torch.isfinite(p).all() for p in layer.features.parameters())


def test_cli_quick_writes_the_table_and_json(tmp_path: Path, capsys):
    tool = load_tool()
    out = tool.main(["--quick", "--json", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert [r["rank"] for r in saved["results"]] == [2, 32]
    assert saved["steps"] == 60 and saved["seq"] == 48 and saved["source"] == "random layer"
    assert all(r["error_after"] < r["error_before"] for r in saved["results"])
    assert saved["results"][1]["error_after"] <= saved["results"][0]["error_after"]
    printed = capsys.readouterr().out
    assert "error before" in printed and "error after" in printed


def test_checkpoint_round_trip(tmp_path: Path):
    """A saved layer is fitted from ``--checkpoint``; the fitted layer written by ``--save-dir`` reads back
    (``--own-features``, no steps) with the very error the fit reported."""
    tool = load_tool()
    torch.manual_seed(1)
    config = {"dim": 16, "heads": 2, "support": "causal", "decay": True, "kernel_width": 8}
    layer = tool.build_layer(config)
    with torch.no_grad():
        layer.beta.mul_(2.0)  # not the initialization: the checkpoint must really be read
    save_file(layer.state_dict(), str(tmp_path / "layer.safetensors"))
    (tmp_path / "layer.json").write_text(json.dumps(config))

    loaded = tool.load_layer(tmp_path / "layer.safetensors", json.dumps(config))  # inline JSON works too
    x = torch.randn(2, 20, 16)
    loaded.integrator = layer.integrator = Exact("reference")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)

    common = ["--steps", "40", "--seq", "32", "--batch", "2"]
    out = tool.main(["--checkpoint", str(tmp_path / "layer.safetensors"), "--layer-config",
                     str(tmp_path / "layer.json"), "--ranks", "2", "16", "--save-dir", str(tmp_path / "fitted"),
                     *common])
    assert out["source"] == str(tmp_path / "layer.safetensors")
    assert all(r["error_after"] < r["error_before"] for r in out["results"])
    fitted = tmp_path / "fitted"
    saved_config = json.loads((fitted / "layer_R16.json").read_text())
    assert saved_config == {**config, "rank": 16, "feature_map": "learned"}
    again = tool.main(["--checkpoint", str(fitted / "layer_R16.safetensors"), "--layer-config",
                       str(fitted / "layer_R16.json"), "--own-features", *common[:1], "0", *common[2:]])
    (r,) = again["results"]
    fitted_r16 = next(r for r in out["results"] if r["rank"] == 16)
    assert r["error_before"] == pytest.approx(fitted_r16["error_after"], rel=1e-6)
    assert r["error_after"] == r["error_before"]


def test_bad_checkpoints_and_configs_are_named(tmp_path: Path):
    tool = load_tool()
    config = {"dim": 16, "heads": 2}
    (tmp_path / "layer.json").write_text(json.dumps(config))

    def run(checkpoint: Path, layer_config: str) -> None:
        tool.main(["--checkpoint", str(checkpoint), "--layer-config", layer_config, "--steps", "0"])

    with pytest.raises(SystemExit, match=r"checkpoint .*missing\.safetensors: no such file"):
        run(tmp_path / "missing.safetensors", str(tmp_path / "layer.json"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SystemExit, match=r"broken\.safetensors: not a readable safetensors file"):
        run(tmp_path / "broken.safetensors", str(tmp_path / "layer.json"))
    save_file(IntegralTransform(16, 2, KernelConfig(width=4)).state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(SystemExit, match=r"tensor 'a_proj\.bias' has shape \(8,\), the layer config needs \(32,\)"):
        run(tmp_path / "other.safetensors", str(tmp_path / "layer.json"))
    save_file(IntegralTransform(16, 2, KernelConfig(bilinear=False)).state_dict(),
              str(tmp_path / "nobilinear.safetensors"))
    with pytest.raises(SystemExit, match=r"missing tensors \['beta', 'k_proj\.bias'"):
        run(tmp_path / "nobilinear.safetensors", str(tmp_path / "layer.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"bad\.json: cannot read a JSON object"):
        run(tmp_path / "other.safetensors", str(tmp_path / "bad.json"))
    with pytest.raises(SystemExit, match="needs a JSON object with at least 'dim' and 'heads'"):
        run(tmp_path / "other.safetensors", '{"dim": 16}')
    with pytest.raises(SystemExit, match="support"):
        run(tmp_path / "other.safetensors", '{"dim": 16, "heads": 2, "support": "nowhere"}')
    with pytest.raises(SystemExit, match=r"bad layer config key 'kernel_widht'"):
        run(tmp_path / "other.safetensors", '{"dim": 16, "heads": 2, "kernel_widht": 4}')
    with pytest.raises(SystemExit, match="no feature maps"):
        tool.main(["--checkpoint", str(tmp_path / "other.safetensors"), "--layer-config",
                   '{"dim": 16, "heads": 2, "kernel_width": 4}', "--own-features", "--steps", "0"])
    with pytest.raises(ValueError, match=r"missing\.safetensors"):  # the library raises ValueError
        tool.load_layer(tmp_path / "missing.safetensors", config)
    with pytest.raises(SystemExit):  # argparse: the two go together
        tool.main(["--checkpoint", str(tmp_path / "other.safetensors")])
