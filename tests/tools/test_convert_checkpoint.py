"""tools/convert_checkpoint.py: DeepSpeed checkpoints (ZeRO 0–3 at 2 ranks, universal) → the library format with the
engine's outputs, ``--verify`` and ``--dtype``, continued training from a library folder (``init_from``), and bad
input rejected naming the file and the tensor, never leaving a half-written output."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from itnet_scale.checkpoint import library
from itnet_scale.checkpoint.deepspeed_checkpoint import convert_to_universal, read_client_state, step_tag
from itnet_scale.checkpoint.inspection import inspect_checkpoint
from itnet_scale.checkpoint.library import CONFIG_FILE, INDEX_FILE, LibraryFolder, read_library_config
from itnet_scale.checkpoint.verification import model_outputs, verification_batches
from itnet_scale.models import ITNetForPretraining, ITNetModel, create_model
from itnet_scale_tools.convert_checkpoint import convert_main
from tests.checkpoint.permissions import UMASKS, assert_honours_umask, umask
from tests.distributed import REPO, run_deepspeed
from tests.pretrain_fixtures import small_demo_data
from tests.tools.handmade_checkpoints import SMALL, zero0_checkpoint, zero3_stub

TOOL = REPO / "tools" / "convert_checkpoint.py"
WORKER = Path(__file__).with_name("convert_worker.py")


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


def convert(*args: object) -> tuple[int, str, str]:
    """``convert_main`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = convert_main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    one, two = a.state_dict(), b.state_dict()
    assert list(one) == list(two)
    for name in one:
        assert torch.equal(one[name], two[name]), name


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# -- fast: hand-made ZeRO-0 checkpoints ---------------------------------------------------------------------------


def test_a_deepspeed_checkpoint_converts_verified_in_every_dtype(tmp_path):
    """A run's checkpoint folder (its ``latest`` followed) → library: the model's weights, the run's provenance,
    ``--verify`` passing; bf16/fp16 hold the weights rounded; ``--task backbone`` the ITNetModel alone; shards with
    an index above ``--max-shard-size``."""
    torch.manual_seed(3)
    model = create_model(SMALL)
    zero0_checkpoint(tmp_path / "run" / "checkpoints", model, step=5)
    status, out, err = convert("library", tmp_path / "run" / "checkpoints", tmp_path / "lib", "--verify")
    assert status == 0, err
    assert "verified: max abs diff 0 over 11 outputs" in out and "init_from=" in out
    assert_same_weights(model, ITNetForPretraining.from_pretrained(tmp_path / "lib"))
    config = read_library_config(tmp_path / "lib")
    assert config.source["step"] == 5 and config.source["consumed"]["text"]["samples"] == 24
    assert config.source["zero_stage"] == 0 and config.model == SMALL
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        status, out, err = convert("library", tmp_path / "run" / "checkpoints" / step_tag(5), tmp_path / dtype,
                                   "--dtype", dtype, "--verify")
        assert status == 0 and "verified: max abs diff 0" in out, err
        stored = LibraryFolder(tmp_path / dtype).state_dict()
        for name, value in model.state_dict().items():
            assert torch.equal(stored[name], value.to(torch_dtype)), (dtype, name)
    status, out, err = convert("library", tmp_path / "run" / "checkpoints", tmp_path / "backbone", "--task",
                               "backbone", "--verify", "--max-shard-size", "60KB")
    assert status == 0, err
    assert read_library_config(tmp_path / "backbone").task == "backbone"
    assert (tmp_path / "backbone" / INDEX_FILE).is_file()
    assert_same_weights(model.itnet, ITNetModel.from_pretrained(tmp_path / "backbone"))
    status, out, err = convert("library", tmp_path / "lib", tmp_path / "resharded", "--max-shard-size", "50KB",
                               "--verify")  # a library folder re-written (re-sharded or re-typed)
    assert status == 0 and "verified" in out, err
    assert_same_weights(model, ITNetForPretraining.from_pretrained(tmp_path / "resharded"))


@pytest.mark.parametrize("value", UMASKS)
def test_converted_folders_honour_the_umask(tmp_path, value):
    """A converted library folder (sharded, verified in its temporary folder) gets the umask's permissions, like
    DeepSpeed's own checkpoint files: 0755/0644 under umask 022, 0700/0600 under 077."""
    zero0_checkpoint(tmp_path / "run", step=5)
    with umask(value):
        status, out, err = convert("library", tmp_path / "run", tmp_path / "lib", "--verify", "--max-shard-size",
                                   "50KB")
    assert status == 0 and "verified" in out, err
    assert (tmp_path / "lib" / INDEX_FILE).is_file()
    assert_honours_umask(tmp_path / "lib", value)


def test_bad_deepspeed_input_is_refused_naming_the_file_and_tensor(tmp_path):
    zero0_checkpoint(tmp_path / "run", step=5)
    tag = tmp_path / "run" / step_tag(5)
    cases = []

    truncated = tmp_path / "truncated"
    shutil.copytree(tag, truncated)
    data = (truncated / "mp_rank_00_model_states.pt").read_bytes()
    (truncated / "mp_rank_00_model_states.pt").write_bytes(data[: len(data) // 2])
    cases.append((truncated, r"truncated/mp_rank_00_model_states\.pt: unreadable checkpoint file \(truncated"))

    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "latest").write_text(step_tag(9))
    cases.append((dangling, rf"dangling/latest names checkpoint '{step_tag(9)}', but .*{step_tag(9)} does not exist"))
    empty = tmp_path / "empty"
    (empty / step_tag(1)).mkdir(parents=True)
    cases.append((empty, rf"empty: not a DeepSpeed checkpoint .* nor a run's checkpoint folder with a latest file; "
                         rf"tags here: \['{step_tag(1)}'\]"))
    cases.append((tmp_path / "nowhere", r"nowhere: no such checkpoint"))

    for name, config, message in (
            ("wider", dataclasses.replace(SMALL, dim=48),
             r"mp_rank_00_model_states\.pt: tensor 'itnet\.encoder\.[^']+' has shape \[(60, )?32\], not the "
             r"\[(60, )?48\] of the model the checkpoint's client_state\['model_config'\] describes"),
            ("deeper", dataclasses.replace(SMALL, depth=3),
             r"no tensor 'itnet\.backbone\.blocks\.2\..*' \[.*\], which the model the checkpoint's "
             r"client_state\['model_config'\] describes has")):
        zero0_checkpoint(tmp_path / name, create_model(SMALL), step=5, config=config)
        cases.append((tmp_path / name, message))
    state = create_model(SMALL).state_dict()
    zero0_checkpoint(tmp_path / "extra", step=5, module={**state, "itnet.stray.weight": torch.zeros(3)})
    cases.append((tmp_path / "extra", r"mp_rank_00_model_states\.pt: tensor 'itnet\.stray\.weight' is not a "
                                      r"parameter of the model the checkpoint's client_state\['model_config'\]"))
    zero3_stub(tmp_path / "zero3" / step_tag(3), world=2, missing="zero_pp_rank_1_mp_rank_00_optim_states.pt")
    cases.append((tmp_path / "zero3" / step_tag(3), r"zero_pp_rank_1_mp_rank_00_optim_states\.pt: missing; this "
                                                    r"ZeRO-3 checkpoint of 2 ranks needs every rank's file"))
    for source, message in cases:
        status, out, err = convert("library", source, tmp_path / "out")
        assert status == 2 and err.startswith("error: "), (source, out, err)
        assert re.search(message, err), (message, err)
        assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folders left

    assert convert("library", tmp_path / "run", tmp_path / "out")[0] == 0
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    status, _, err = convert("library", tmp_path / "run", tmp_path / "out")
    assert status == 2 and "out exists; choose another output folder or overwrite it (--overwrite)" in err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert convert("library", tmp_path / "run", tmp_path / "out", "--overwrite", "--dtype", "bf16")[0] == 0
    assert read_library_config(tmp_path / "out").dtype == "bfloat16"


def test_a_failed_verification_exits_1_printing_the_difference_and_writes_nothing(tmp_path, monkeypatch):
    """A conversion whose written weights differ from the source (a corrupted write, simulated) fails --verify:
    exit status 1, the max abs diff printed, no output folder and no temporary one. ``verify`` against another
    checkpoint fails the same way."""
    zero0_checkpoint(tmp_path / "run", step=5)
    real = library.save_file

    def corrupting(tensors, path, metadata=None):
        tensors = dict(tensors)
        name = "itnet.encoder.text.embedding.weight"
        tensors[name] = tensors[name] * 1.01
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(library, "save_file", corrupting)
    status, out, err = convert("library", tmp_path / "run", tmp_path / "lib", "--verify")
    assert status == 1, (out, err)
    assert "verification FAILED" in err and "max abs diff" in err and "tolerance 1e-05" in err
    assert siblings(tmp_path / "run") == ["run"]
    monkeypatch.setattr(library, "save_file", real)
    assert convert("library", tmp_path / "run", tmp_path / "lib")[0] == 0
    torch.manual_seed(9)
    zero0_checkpoint(tmp_path / "other", step=5)
    status, out, err = convert("verify", tmp_path / "other", tmp_path / "lib")
    assert status == 1 and "verification FAILED" in err, (out, err)
    status, out, err = convert("verify", tmp_path / "run", tmp_path / "lib")
    assert status == 0 and "verified: max abs diff 0" in out


# -- slow: real DeepSpeed checkpoints of every ZeRO stage at 2 ranks ------------------------------------------------


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One launch (2 ranks): 2 steps at each ZeRO stage with the engine's outputs, then init_from runs (see the
    worker's doc)."""
    data = small_demo_data(tmp_path_factory.mktemp("demo"))
    out = tmp_path_factory.mktemp("convert")
    process = run_deepspeed(WORKER, ["run", str(data), str(out)], timeout=900)
    assert process.returncode == 0, process.stdout[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_zero_stage_at_two_ranks_converts_to_the_engines_outputs(launched, tmp_path):
    """ZeRO 0, 1, 2, 3 (2 ranks) → library (``--verify``) → the model read back gives the engine's own outputs on
    every modality (max abs diff ≤ 1e-5; in fact equal); inspect reads each checkpoint's step and data position;
    a universal checkpoint converts to the same weights; a truncated or missing rank file is named."""
    batches = None
    for stage in (0, 1, 2, 3):
        checkpoints_dir = launched / f"zero{stage}" / "checkpoints"
        status, out, err = convert("library", checkpoints_dir, tmp_path / f"lib{stage}", "--verify")
        assert status == 0, err
        assert "verified: max abs diff 0" in out
        model = ITNetForPretraining.from_pretrained(tmp_path / f"lib{stage}")
        batches = batches or verification_batches(model.itnet.config)
        engine = load_file(launched / f"zero{stage}" / "engine_outputs.safetensors")
        got = model_outputs(model, batches)
        assert set(got) == set(engine) and len(got) == 11
        for name, value in engine.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=f"ZeRO-{stage} {name}")
        report = inspect_checkpoint(checkpoints_dir)
        client = read_client_state(checkpoints_dir / step_tag(2))
        assert report["step"] == 2 and report["deepspeed"]["zero_stage"] == stage
        assert report["deepspeed"]["world_size"] == 2 and report["objectives"] == ["itc", "mlm", "mpm", "mpp"]
        assert report["consumed"]["text"] == {"units": client["data"]["text"]["units"],
                                              "samples": client["data"]["text"]["samples"]}
        assert report["parameters"] == sum(p.numel() for p in model.parameters())
    reference = LibraryFolder(tmp_path / "lib2").state_dict()
    for stage in (2, 3):
        universal = convert_to_universal(launched / f"zero{stage}" / "checkpoints" / step_tag(2),
                                         tmp_path / f"universal{stage}")
        status, out, err = convert("library", universal, tmp_path / f"ulib{stage}", "--verify", "--dtype", "bf16")
        assert status == 0, err
        converted = LibraryFolder(tmp_path / f"ulib{stage}").state_dict()
        same = LibraryFolder(tmp_path / f"lib{stage}").state_dict()
        assert set(converted) == set(same) == set(reference)
        for name, value in same.items():
            assert torch.equal(converted[name], value.bfloat16()), (stage, name)

    broken = tmp_path / "broken" / step_tag(2)
    shutil.copytree(launched / "zero2" / "checkpoints" / step_tag(2), broken)
    victim = broken / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    victim.write_bytes(victim.read_bytes()[:1000])
    status, _, err = convert("library", broken, tmp_path / "never")
    assert status == 2 and f"{victim}: unreadable checkpoint file (truncated or corrupt?)" in err, err
    broken3 = tmp_path / "broken3" / step_tag(2)
    shutil.copytree(launched / "zero3" / "checkpoints" / step_tag(2), broken3)
    (broken3 / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    status, _, err = convert("library", broken3, tmp_path / "never")
    assert status == 2 and "zero_pp_rank_1_mp_rank_00_model_states.pt: missing" in err, err
    assert not (tmp_path / "never").exists()

    script = subprocess.run([sys.executable, str(TOOL), "library", str(launched / "zero1" / "checkpoints"),
                             str(tmp_path / "script"), "--verify"], capture_output=True, text=True, cwd=REPO,
                            timeout=300, env={**os.environ, "ITNET_COMPILE": "0"})
    assert script.returncode == 0 and "verified: max abs diff 0" in script.stdout, script.stderr[-3000:]
    assert (tmp_path / "script" / CONFIG_FILE).is_file()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_init_from_a_library_folder_starts_from_its_weights(launched):
    """``init_from`` a folder the converter made (ZeRO-3 → library, continued at ZeRO-3 on 2 ranks): before the
    first step every weight equals the library's, and the first loss equals the library model's loss on that batch.
    ``init_from`` a backbone made by ``ITNetModel.save_pretrained`` (ZeRO-1): the backbone is the library's, the
    heads the run's own fresh initialization."""
    results = json.loads((launched / "init.json").read_text())
    converted, backbone = results["converted"], results["backbone"]
    assert converted["backbone_diff"] == 0 and converted["head_diff"] == 0 and converted["steps"] == 1
    assert converted["head_diff_to_fresh"] > 1e-4 and converted["backbone_diff_to_fresh"] > 1e-4
    assert converted["engine_total"] == pytest.approx(converted["library_total"], rel=1e-6)
    assert backbone["backbone_diff"] == 0 and backbone["head_diff"] == 0 and backbone["steps"] == 1
    assert backbone["backbone_diff_to_fresh"] > 1e-2
