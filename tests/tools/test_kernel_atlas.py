"""The kernel atlas end to end: a short pretraining run under ZeRO-3 with ``logging.atlas_every`` writes the atlas
images and scores to TensorBoard; tools/kernel_atlas.py reads that run's checkpoint (its own config.yaml) and a
library-format folder; bad input is one ``error:`` line and exit status 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from itnet_scale.models import create_model
from tests.distributed import run_deepspeed
from tests.pretrain_fixtures import DEMO_CONFIG, REPO, fast_overrides, small_demo_data

LAUNCH = REPO / "launch" / "pretrain.py"
TOOL = REPO / "tools" / "kernel_atlas.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("kernel_atlas", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = _load_tool().main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


@pytest.mark.slow
def test_pretraining_logs_the_atlas_and_the_tool_reads_its_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    process = run_deepspeed(LAUNCH, ["--config", str(DEMO_CONFIG), *fast_overrides(
        data, run, 2, **{"deepspeed.zero_stage": 3, "logging.atlas_every": 2, "logging.atlas_samples": 3})], ranks=1)
    assert process.returncode == 0, process.stdout[-6000:]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    for stream in ("text", "image", "points"):
        assert {f"atlas/{stream}/summary", f"atlas/{stream}/kernels_0", f"atlas/{stream}/kernels_1"} <= set(images)
    assert "atlas/image_text/kernels_3" in images  # image alone, then text alone, through the 2 layers
    summary = events.Images("atlas/image/summary")
    assert [e.step for e in summary] == [2] and summary[0].encoded_image_string.startswith(b"\x89PNG")
    scalars = set(events.Tags()["scalars"])
    assert "atlas/text/itnet.backbone.blocks.0.mixer/head1/locality" in scalars
    assert "atlas/image/itnet.backbone.blocks.1.mixer/head0/content" in scalars

    # the tool on the run's ZeRO-3 checkpoint folder, the config found beside it
    out = tmp_path / "atlas"
    assert main([str(run / "checkpoints"), "--out", str(out), "--streams", "image", "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| itnet.backbone.blocks.1.mixer | 1 |" in printed
    saved = json.loads((out / "image" / "atlas.json").read_text())
    assert len(saved["layers"]) == 2 and len(saved["layers"][0]["heads"]) == 2
    assert sorted(p.name for p in (out / "image").iterdir()) == ["atlas.json", "kernels_0.png", "kernels_1.png",
                                                                 "summary.png"]


def test_tool_on_a_library_folder(data, tmp_path, capsys):
    folder = tmp_path / "model"
    create_model("tiny", vocab_size=400, dim=32, depth=2, heads=2, contrastive_dim=16).save_pretrained(folder)
    overrides = fast_overrides(data, tmp_path / "unused", 1)
    assert main([str(folder), "--config", str(DEMO_CONFIG), *overrides, "--out", str(tmp_path / "out"),
                 "--streams", "text", "--queries", "1,4", "--radius", "2"]) == 0
    assert "kernel atlas of" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "text" / "atlas.json").read_text())
    assert saved["settings"]["radius"] == 2.0 and not (tmp_path / "out" / "image").exists()


@pytest.mark.parametrize("case", ["missing", "backbone", "no config", "queries", "streams", "samples"])
def test_bad_input_is_one_line_and_exit_2(case, data, tmp_path, capsys):
    checkpoint = tmp_path / "model"
    if case == "missing":
        checkpoint = tmp_path / "missing"
    else:
        task = "backbone" if case == "backbone" else "pretraining"
        create_model("tiny", task=task, vocab_size=400, dim=32, depth=2, heads=2).save_pretrained(checkpoint)
    config = [] if case == "no config" else ["--config", str(DEMO_CONFIG), *fast_overrides(data, tmp_path / "r", 1)]
    extra = {"queries": ["--queries", "1,x"], "streams": ["--streams", "text,nope"], "samples": ["--samples", "1"]}
    assert main([str(checkpoint), *config, *extra.get(case, []), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    expected = {"missing": "no such checkpoint", "backbone": "holds a 'backbone' model",
                "no config": "pass --config PRETRAIN_YAML", "queries": "--queries must be comma-separated",
                "streams": "--streams names ['nope']", "samples": "--samples must be >= 2"}[case]
    assert len(errors) == 1 and expected in errors[0]


def test_the_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing"), "--config", str(DEMO_CONFIG)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'missing'}: no such checkpoint"]
