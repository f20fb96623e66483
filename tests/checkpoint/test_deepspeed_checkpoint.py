"""DeepSpeed checkpoints: atomic `latest`, retention, weights-only loading, per-rank state, and a save killed midway."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from itnet_scale.checkpoint.deepspeed_checkpoint import (
    LATEST_FILE,
    checkpoint_tags,
    discard_uncommitted,
    load_weights_only,
    prune_checkpoints,
    read_latest,
    step_tag,
    weights_only_loads,
    write_latest,
)
from itnet_scale.train.rng import capture_rng_state, restore_rng_state
from tests.checkpoint.permissions import UMASKS, assert_honours_umask, umask
from tests.distributed import run_deepspeed

WORKER = Path(__file__).with_name("deepspeed_checkpoint_worker.py")


def make_tags(save_dir: Path, steps: list[int]) -> None:
    for step in steps:
        (save_dir / step_tag(step)).mkdir(parents=True)
        (save_dir / step_tag(step) / "mp_rank_00_model_states.pt").write_bytes(b"x")


def test_tags_sort_by_step_and_latest_is_replaced_whole(tmp_path):
    make_tags(tmp_path, [100, 5, 20])
    (tmp_path / "not-a-step").mkdir()
    assert checkpoint_tags(tmp_path) == [step_tag(5), step_tag(20), step_tag(100)]
    assert read_latest(tmp_path) is None
    write_latest(tmp_path, step_tag(20))
    assert read_latest(tmp_path) == step_tag(20)
    write_latest(tmp_path, step_tag(100))
    assert (tmp_path / LATEST_FILE).read_text() == step_tag(100)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [LATEST_FILE]  # no temp file left


@pytest.mark.parametrize("value", UMASKS)
def test_latest_honours_the_umask(tmp_path, value):
    make_tags(tmp_path, [1])
    with umask(value):
        write_latest(tmp_path, step_tag(1))
    assert_honours_umask(tmp_path / LATEST_FILE, value)


def test_latest_naming_a_missing_tag_is_an_error(tmp_path):
    (tmp_path / LATEST_FILE).write_text(step_tag(7))
    with pytest.raises(FileNotFoundError, match=r"latest names checkpoint 'step000000007', but .* does not exist"):
        read_latest(tmp_path)


def test_retention_keeps_the_newest_and_the_protected(tmp_path):
    make_tags(tmp_path, [1, 2, 3, 4])
    assert prune_checkpoints(tmp_path, 0, protect=step_tag(4)) == []
    assert prune_checkpoints(tmp_path, 2, protect=step_tag(4)) == [step_tag(1), step_tag(2)]
    assert checkpoint_tags(tmp_path) == [step_tag(3), step_tag(4)]
    assert prune_checkpoints(tmp_path, 1, protect=step_tag(3)) == []  # the protected tag survives
    with pytest.raises(ValueError, match=r"keep_last must be >= 0"):
        prune_checkpoints(tmp_path, -1, protect=step_tag(4))


def test_saves_newer_than_latest_are_discarded(tmp_path):
    make_tags(tmp_path, [2, 4, 6])
    write_latest(tmp_path, step_tag(4))
    assert discard_uncommitted(tmp_path) == [step_tag(6)]
    assert checkpoint_tags(tmp_path) == [step_tag(2), step_tag(4)]


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    torch.save({"rng": capture_rng_state()}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(7)  # move every generator on
    loaded = load_weights_only(str(tmp_path / "state.pt"))
    restore_rng_state(loaded["rng"])
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"rng state is malformed"):
        restore_rng_state({"python": loaded["rng"]["python"]})


class Payload:
    """Unpickling this would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles_and_names_bad_files(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"state": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        load_weights_only(str(tmp_path / "evil.pt"))
    assert not marker.exists()
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt: unreadable checkpoint file"):
        load_weights_only(str(tmp_path / "truncated.pt"))
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: checkpoint file is missing"):
        load_weights_only(str(tmp_path / "absent.pt"))
    # what DeepSpeed's own loaders call inside a load is weights-only too
    with weights_only_loads(), pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert torch.load is not load_weights_only and not marker.exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_save_killed_midway_resumes_from_the_previous_checkpoint(tmp_path):
    """2 ranks, ZeRO-2: save at steps 3 and 5 (keep 1); a rank dies while writing step 6; the restart resumes
    step 5 exactly (weights, client state, each rank's random generators) and drops the partial step 6."""
    def run(mode: str, expect_ok: bool = True) -> str:
        process = run_deepspeed(WORKER, [mode, str(tmp_path)])
        assert (process.returncode == 0) == expect_ok, process.stdout[-4000:]
        return process.stdout

    run("train")
    assert checkpoint_tags(tmp_path) == [step_tag(5)] and read_latest(tmp_path) == step_tag(5)
    run("crash", expect_ok=False)
    assert read_latest(tmp_path) == step_tag(5) and step_tag(6) in checkpoint_tags(tmp_path)
    output = run("resume")
    assert "rank 0: resumed step000000005 exactly" in output and "rank 1: resumed step000000005 exactly" in output
    assert checkpoint_tags(tmp_path) == [step_tag(5)]
