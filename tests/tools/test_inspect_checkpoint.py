"""tools/inspect_checkpoint.py: step, consumed samples, objectives, model config, parameter count and per-module
sizes of a DeepSpeed checkpoint (ZeRO-0 and ZeRO-3 layouts) or a library folder, as text and as JSON. (Real
checkpoints of every ZeRO stage at 2 ranks are inspected in tests/tools/test_convert_checkpoint.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from itnet_scale.checkpoint.conversion import convert_to_library
from itnet_scale.checkpoint.deepspeed_checkpoint import step_tag
from itnet_scale.models import create_model
from itnet_scale_tools.inspect_checkpoint import inspect_main
from tests.distributed import REPO
from tests.tools.handmade_checkpoints import DATA, SMALL, zero0_checkpoint, zero3_stub

TOOL = REPO / "tools" / "inspect_checkpoint.py"


def inspect(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = inspect_main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def unique_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


def test_a_deepspeed_checkpoint_reports_its_run_and_model(tmp_path):
    model = create_model(SMALL)
    zero0_checkpoint(tmp_path / "run", model, step=5)
    status, out, err = inspect(tmp_path / "run", "--json")  # the run folder: its latest tag
    assert status == 0, err
    report = json.loads(out)
    assert report["format"] == "deepspeed" and report["deepspeed"]["zero_stage"] == 0
    assert report["deepspeed"]["tag"] == step_tag(5) and report["step"] == 5
    assert report["consumed"] == DATA and report["objectives"] == ["itc", "mlm", "mpm"]
    assert report["model_class"] == "ITNetForPretraining" and report["model_config"]["dim"] == 32
    assert report["parameters"] == unique_parameters(model)
    assert report["tensors"] == len([*model.parameters(), *model.buffers()])
    assert report["buffers"] == sum(b.numel() for b in model.buffers()) == 4 * SMALL.dim  # the ITC statistics
    assert report["tied_weights"] == {"mlm.decoder.weight": "itnet.encoder.text.embedding.weight"}
    modules = report["modules"]
    assert sum(modules[name]["parameters"] for name in ("itnet", "mlm", "itc", "mpm", "mpp")) == report["parameters"]
    assert modules["itnet.backbone"]["parameters"] == sum(p.numel() for p in model.itnet.backbone.parameters())
    assert modules["itnet"]["bytes"] == 4 * modules["itnet"]["parameters"]
    assert report["pretrain_config"] == {"run_dir": "runs/handmade"}
    status, text, _ = inspect(tmp_path / "run" / step_tag(5))
    assert status == 0
    assert "step: 5" in text and "consumed samples: 48 = text 24 (6 units), image_text 16 (4 units)" in text
    assert "objectives: itc, mlm, mpm" in text and f"{report['parameters']:,} parameters" in text
    assert "itnet.backbone" in text and "model config:" in text and "  dim: 32" in text


def test_a_zero3_layout_is_read_from_its_metadata(tmp_path):
    """ZeRO-3 partitions are not read: the parameter shapes come from the model-states records."""
    tag = zero3_stub(tmp_path / step_tag(3), world=2)
    status, out, err = inspect(tag, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["deepspeed"]["zero_stage"] == 3 and report["deepspeed"]["world_size"] == 2
    assert report["parameters"] == unique_parameters(create_model(SMALL)) and report["step"] == 3


def test_library_folders_report_their_provenance(tmp_path):
    model = create_model(SMALL)
    zero0_checkpoint(tmp_path / "run", model, step=7)
    convert_to_library(tmp_path / "run", tmp_path / "lib", dtype="bf16")
    status, out, err = inspect(tmp_path / "lib", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["format"] == "library" and report["step"] == 7 and report["consumed"] == DATA
    assert report["dtypes"] == ["bfloat16"] and report["bytes"] == 2 * (report["parameters"] + report["buffers"])
    assert report["parameters"] == unique_parameters(model) and report["source"]["zero_stage"] == 0
    assert set(report["files"]) == {"config.yaml", "model.safetensors"}
    classifier = create_model(SMALL, task="classification", classes=4)
    classifier.save_pretrained(tmp_path / "cls", max_shard_size="50KB")
    status, text, _ = inspect(tmp_path / "cls")
    assert status == 0
    assert "ITNetForClassification (task classification, 4 labels)" in text and "step: unknown" in text
    assert f"{unique_parameters(classifier):,} parameters" in text and "head.fc" in text


def test_bad_paths_exit_2(tmp_path):
    status, _, err = inspect(tmp_path / "nowhere")
    assert status == 2 and "nowhere: no such checkpoint" in err
    zero3_stub(tmp_path / "broken", missing="zero_pp_rank_1_mp_rank_00_model_states.pt")
    status, _, err = inspect(tmp_path / "broken")
    assert status == 2 and "zero_pp_rank_1_mp_rank_00_model_states.pt: missing" in err


@pytest.mark.slow
def test_the_script_runs_from_a_checkout(tmp_path):
    zero0_checkpoint(tmp_path / "run", step=5)
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "run"), "--json"], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["step"] == 5
