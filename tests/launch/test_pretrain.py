"""`deepspeed launch/pretrain.py` end to end on the CPU: config errors, ZeRO stages, kill and resume, universal
checkpoints on another world size, two nodes on loopback, a poisoned step, sequence parallelism."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from itnet_scale.checkpoint.deepspeed_checkpoint import (
    checkpoint_tags,
    convert_to_universal,
    read_client_state,
    step_tag,
)
from itnet_scale.data.shards import read_index
from itnet_scale.data.stream import StreamingDataset, load_data_config
from tests.distributed import REPO, free_port, run_deepspeed
from tests.pretrain_fixtures import DEMO_CONFIG, checkpoint_weights, fast_overrides, small_demo_data

LAUNCH = REPO / "launch" / "pretrain.py"
DEMO_DATA_CONFIG = REPO / "configs" / "data" / "demo.yaml"
WORKER = Path(__file__).with_name("pretrain_worker.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_demo_data(tmp_path_factory.mktemp("demo"))


def pretrain(data: Path, run_dir: Path, steps: int, ranks: int = 2, **overrides) -> str:
    """Run ``deepspeed --num_accelerators ranks launch/pretrain.py`` on the demo config; return its output."""
    process = run_deepspeed(LAUNCH, ["--config", str(DEMO_CONFIG), *fast_overrides(data, run_dir, steps, **overrides)],
                            ranks=ranks)
    assert process.returncode == 0, process.stdout[-6000:]
    return process.stdout


def logged(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    """A typo'd key, a wrong type, a bad model override and a micro-batch that is not whole units each exit with
    status 2 and a message naming the key, before any process group or model exists (no run folder)."""
    cases = {"deepspeed.zero_stag=1": r"zero_stag",
             "steps=many": r"steps",
             "model_overrides.dimm=64": r"dimm",
             "deepspeed.micro_batch_size=10": r"micro_batch_size=10 must be a multiple of the data config's "
                                              r"unit_size=4"}
    for override, message in cases.items():
        run_dir = tmp_path / "run"
        process = subprocess.run([sys.executable, str(LAUNCH), "--config", str(DEMO_CONFIG), f"run_dir={run_dir}",
                                  "data_overrides=[unit_size=4]", override], capture_output=True, text=True,
                                 cwd=REPO, timeout=120)
        assert process.returncode == 2, (override, process.stdout, process.stderr)
        assert process.stderr.startswith("error: ") and re.search(message, process.stderr), (override, process.stderr)
        assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero_stages_train_the_same_loss_curve(data, tmp_path):
    """2 ranks, 20 steps: ZeRO 1, 2 and 3 follow ZeRO 0's loss curve to float tolerance — their bucketed reductions
    sum in another order, which moves the total loss by ~1e-5 relative by step 20 (each objective, small ones like
    mpm ~ 0.01 especially, by up to ~1e-3) — and the loss falls. The held-out evaluation at the end agrees too."""
    process = run_deepspeed(WORKER, ["stages", str(data), str(tmp_path)], timeout=900)
    assert process.returncode == 0, process.stdout[-6000:]
    recorded = json.loads((tmp_path / "losses.json").read_text())
    curves = recorded["curves"]
    assert recorded["zero3_aliased_groups"] >= 1  # ZeRO-3's fp32 master partitions are the weights themselves
    reference = curves["0"]
    assert len(reference) == 20 and set(reference[0]) == {"mlm", "itc", "mpm", "mpp", "total"}
    for stage in ("1", "2", "3"):
        for step, (want, got) in enumerate(zip(reference, curves[stage]), start=1):
            for name in want:
                tolerance = {"rel": 1e-4} if name == "total" else {"rel": 1e-2, "abs": 1e-4}
                assert got[name] == pytest.approx(want[name], **tolerance), (stage, step, name)
    assert reference[-1]["total"] < 0.9 * reference[0]["total"]
    # the held-out evaluation after the last step runs at every stage (ZeRO-3: parameters gathered per module)
    # and gives ZeRO-0's losses
    evaluations = recorded["evaluations"]
    for stage in ("0", "1", "2", "3"):
        assert [e["step"] for e in evaluations[stage]] == [20], stage
        for name, value in evaluations["0"][0].items():
            if name.startswith("loss/"):
                assert evaluations[stage][0][name] == pytest.approx(value, rel=1e-2), (stage, name)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights(data, tmp_path):
    """ZeRO-3: an uninterrupted 12-step run, and the same run SIGKILLed at a random step and restarted with the same
    command: the final weights agree (fp32, ≤ 1e-6 relative), and the restart resumed from a checkpoint."""
    steps = 12
    settings = {"deepspeed.zero_stage": 3, "checkpoint.save_every": 3, "checkpoint.keep_last": 2}
    pretrain(data, tmp_path / "whole", steps, **settings)

    kill_at = random.Random().randint(4, steps - 2)
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", "2", "--master_port",
               str(free_port()), str(LAUNCH), "--config", str(DEMO_CONFIG),
               *fast_overrides(data, run_dir, steps, **settings)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        deadline = time.monotonic() + 600
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith(f"step {kill_at} "):
                os.killpg(process.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen[-50:])
        process.wait()
    assert any(line.startswith(f"step {kill_at} ") for line in seen), "".join(seen[-50:])
    restarted = pretrain(data, run_dir, steps, **settings)
    resumed = re.findall(r"^resumed from .* at step (\d+)$", restarted, flags=re.MULTILINE)
    last_saved = kill_at // 3 * 3  # killed after printing step kill_at: a save due at it may not have finished
    assert resumed and int(resumed[0]) in {last_saved, last_saved - 3}, (kill_at, resumed)

    whole = checkpoint_weights(tmp_path / "whole" / "checkpoints" / step_tag(steps))
    again = checkpoint_weights(run_dir / "checkpoints" / step_tag(steps))
    assert sorted(whole) == sorted(again) and len(whole) > 20
    for name, value in whole.items():
        torch.testing.assert_close(again[name], value, rtol=1e-6, atol=1e-7, msg=f"{name} differs after the restart")
    state = read_client_state(run_dir / "checkpoints" / step_tag(steps))
    assert state["step"] == steps and set(state["data"]) == {"text", "image_text", "image", "points"}
    assert state["data"]["text"]["units"] == steps * 2 * 1  # 12 steps × 2 ranks × 1 text unit per micro-batch
    assert "model_config" in state and "rng" not in state  # the random states are per rank, next to it
    assert checkpoint_tags(run_dir / "checkpoints") == [step_tag(9), step_tag(12)]  # keep_last=2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_universal_checkpoint_resumes_on_one_rank(data, tmp_path):
    """2 ranks at ZeRO 2 for 6 steps → DeepSpeed's universal checkpoint → 1 rank (2 micro-steps per step, the same
    global batch) continues to step 9: the step counter and data positions continue, and the loss goes on from
    where it was instead of starting over."""
    settings = {"deepspeed.zero_stage": 2, "checkpoint.save_every": 3, "checkpoint.keep_last": 0}
    pretrain(data, tmp_path / "two", 9, **settings)
    two = logged(tmp_path / "two")
    tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "universal"]
    converted = subprocess.run([*tool, str(tmp_path / "two" / "checkpoints" / step_tag(6)),
                                str(tmp_path / "one" / "checkpoints")], capture_output=True, text=True, cwd=REPO,
                               timeout=300)
    assert converted.returncode == 0, converted.stdout + converted.stderr
    assert (tmp_path / "one" / "checkpoints" / "latest").read_text() == step_tag(6)
    output = pretrain(data, tmp_path / "one", 9, ranks=1, **settings, **{"deepspeed.gradient_accumulation_steps": 2})
    assert f"resumed from {tmp_path / 'one' / 'checkpoints' / step_tag(6)} at step 6" in output
    one = logged(tmp_path / "one")
    assert [s for s, _ in one["loss/total"]] == [7, 8, 9]
    first, resumed = dict(two["loss/total"])[1], dict(one["loss/total"])[7]
    assert abs(resumed - dict(two["loss/total"])[7]) < 0.1 * (first - dict(two["loss/total"])[7]) + 0.05 * resumed
    state = read_client_state(tmp_path / "one" / "checkpoints" / step_tag(9))
    assert state["step"] == 9 and state["data"]["text"]["units"] == 9 * 2 * 1 and state["world_size"] == 1
    (tmp_path / "zero0").mkdir()
    with pytest.raises(ValueError, match=r"zero0: no ZeRO optimizer files .*a ZeRO-0 checkpoint already loads"):
        convert_to_universal(tmp_path / "zero0", tmp_path / "elsewhere")
    refused = subprocess.run([*tool, str(tmp_path / "nowhere"), str(tmp_path / "x")], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
    assert refused.returncode == 2 and "nowhere: no such checkpoint" in refused.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_nodes_on_loopback_train_five_steps(data, tmp_path):
    """DeepSpeed's multi-node launch with a hostfile, as on a cluster: two launchers (``--node_rank 0`` and ``1``,
    ``--no_ssh``), one rank each, meeting at 127.0.0.1; 5 steps train and save."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    overrides = fast_overrides(data, tmp_path / "run", 5, **{"checkpoint.save_every": 5})
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
         str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), str(LAUNCH), "--config",
         str(DEMO_CONFIG), *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for rank in (0, 1)]
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=600)[0])
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
    assert all(launcher.returncode == 0 for launcher in launchers), [o[-4000:] for o in outputs]
    assert "finished step 5" in outputs[0]
    state = read_client_state(tmp_path / "run" / "checkpoints" / step_tag(5))
    assert state["world_size"] == 2 and state["step"] == 5


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(data, tmp_path):
    """Rank 1's loss is NaN at step 4: both ranks skip that step (and only it), count it, log it; the save due at
    step 4 waits for the applied step 5, so no checkpoint comes from the poisoned step; the weights stay finite."""
    process = run_deepspeed(WORKER, ["nan", str(data), str(tmp_path)])
    assert process.returncode == 0, process.stdout[-6000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"nan-rank{rank}.json").read_text())
        assert seen["applied"] == [True, True, True, False, True, True], (rank, seen)
        assert seen["reasons"][3] == "nonfinite_loss" and seen["skipped"] == {"nonfinite_loss": 1}
        assert seen["finite"]
    assert checkpoint_tags(tmp_path / "run" / "checkpoints") == [step_tag(5), step_tag(6)]
    scalars = logged(tmp_path / "run")
    assert dict(scalars["skipped_steps"])[3] == 0 and dict(scalars["skipped_steps"])[4] == 1
    assert "skipping the optimizer step (nonfinite_loss)" in process.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sequence_parallel_pretraining_and_its_logs(data, tmp_path):
    """``sequence_parallel_size=2`` on 2 ranks (one data-parallel replica whose sequences are split) trains;
    TensorBoard holds every scalar the run promises."""
    pretrain(data, tmp_path / "run", 3, sequence_parallel_size=2,
             **{"checkpoint.save_every": 3, "logging.peak_flops_per_rank": 1e11})
    scalars = logged(tmp_path / "run")
    for name in ("loss/total", "loss/mlm", "loss/itc", "loss/mpm", "loss/mpp", "lr", "grad_norm", "skipped_steps",
                 "throughput/samples_per_s", "throughput/tokens_per_s", "throughput/data_wait_share",
                 "throughput/mfu", "memory/rss_gib", "time/step_s"):
        assert [s for s, _ in scalars[name]] == [1, 2, 3], name
    assert all(0 < value < 1 for _, value in scalars["throughput/mfu"])  # against a 100 GFLOP/s peak per rank
    assert all(value == value for _, value in scalars["loss/total"])
    state = read_client_state(tmp_path / "run" / "checkpoints" / step_tag(3))
    assert state["sequence_parallel_size"] == 2 and state["data"]["text"]["units"] == 3 * 1 * 1  # one replica


def damaged_copy(data: Path, directory: Path, avoid_units: int, visit_units: int) -> tuple[Path, Path]:
    """A copy of the demo data whose text shard read by none of 1 rank's first ``avoid_units`` text units but by one
    of the next ``visit_units`` is cut to half its size (its index keeps the full size). Returns (data, shard)."""
    copy = Path(shutil.copytree(data, directory))
    text = load_data_config(DEMO_DATA_CONFIG, [f"data_root={copy}", "unit_size=4"]).only("text")
    units = list(islice(StreamingDataset(text, rank=0, world_size=1).units(), avoid_units + visit_units))
    shard_of, first = {}, 0  # the writer's keys number the samples of the whole set: 000000000, 000000001, …
    for shard in read_index(copy / "text")["shards"]:
        shard_of.update({f"{i:09d}": shard["name"] for i in range(first, first + shard["samples"])})
        first += shard["samples"]
    early = {shard_of[s["__key__"]] for unit in units[:avoid_units] for s in unit["samples"]}
    later = {shard_of[s["__key__"]] for unit in units[avoid_units:] for s in unit["samples"]} - early
    shard = copy / "text" / sorted(later)[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return copy, shard


@pytest.mark.multiprocess
def test_a_bad_shard_under_strict_stops_every_rank_with_one_error_line(data, tmp_path):
    """2 ranks, ``strict: true``, a text shard cut to half its size: both ranks stop before training with exit
    status 2, and the output holds one ``error:`` line naming the shard and the problem, and no traceback."""
    copy, shard = damaged_copy(data, tmp_path / "data", 0, 8)
    overrides = fast_overrides(copy, tmp_path / "run", 2, data_overrides=f"[data_root={copy},unit_size=4,strict=true]")
    process = run_deepspeed(LAUNCH, ["--config", str(DEMO_CONFIG), *overrides], ranks=2)
    assert process.returncode == 2, process.stdout[-6000:]
    errors = [line for line in process.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1, process.stdout[-6000:]
    assert re.fullmatch(rf"error: streams\[0\] \(text\)\.path: {shard}: has \d+ bytes but its index says \d+",
                        errors[0]), errors
    assert "Traceback" not in process.stdout


@pytest.mark.multiprocess
def test_a_bad_shard_is_skipped_by_name_and_the_run_trains_on(data, tmp_path):
    """1 rank, a text shard cut to half its size (not the first one read): the run trains its 4 steps, and the
    shard is logged by name with its problem."""
    copy, shard = damaged_copy(data, tmp_path / "data", 2, 6)
    process = run_deepspeed(LAUNCH, ["--config", str(DEMO_CONFIG),
                                     *fast_overrides(copy, tmp_path / "run", 4, **{"checkpoint.save_every": 4})],
                            ranks=1)
    assert process.returncode == 0, process.stdout[-6000:]
    assert "finished step 4" in process.stdout
    assert re.search(rf"bad shard skipped: {shard}: has \d+ bytes but its index says \d+; its 24 unread sample "
                     r"slot\(s\) count as bad_shard", process.stdout), process.stdout[-6000:]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_bf16_is_one_config_switch(data, tmp_path):
    """``deepspeed.precision=bf16`` (the GPU setting) with activation checkpointing of every block: one step on 2
    CPU ranks at the demo's ZeRO-1 trains the weights in bfloat16 while the optimizer steps fp32 master weights
    with fp32 moments. This checks the plumbing only — one step, a small model: bf16 matmuls on a CPU are far too
    slow (~200×) to say anything about bf16 training itself."""
    process = run_deepspeed(WORKER, ["bf16", str(data), str(tmp_path)], timeout=600)
    assert process.returncode == 0, process.stdout[-6000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"bf16-rank{rank}.json").read_text())
        assert seen["bf16_enabled"] and seen["weight_dtypes"] == ["torch.bfloat16"], seen
        assert seen["master_dtypes"] == seen["stepped_dtypes"] == seen["moment_dtypes"] == ["torch.float32"], seen
        assert seen["checkpointed_blocks"] == [0, 1]
        assert seen["applied"] == [True] and all(map(math.isfinite, seen["losses"][0].values())), seen
        # Every fp32 master weight moved (a first-step update of ~lr/warmup is below bf16's resolution for weights
        # near 1, such as the norms': the master keeps it), and the bf16 weights are the masters rounded.
        assert seen["masters_changed"] == seen["parameters"] and seen["weights_are_rounded_masters"], seen


@pytest.mark.slow
@pytest.mark.multiprocess
def test_activation_checkpointing_under_zero3_trains_as_without(data, tmp_path):
    """``activation_checkpointing.every=1`` at ZeRO-3 (parameters gathered again for the recomputation), dropout and
    drop path on, 2 ranks: the same loss curve as without, step for step."""
    process = run_deepspeed(WORKER, ["checkpointing", str(data), str(tmp_path)], timeout=600)
    assert process.returncode == 0, process.stdout[-6000:]
    curves = json.loads((tmp_path / "checkpointing.json").read_text())
    assert len(curves["0"]) == 3 and curves["1"] == curves["0"]
