"""Atomic writes: a folder or a file appears whole or not at all, an error leaves nothing behind, and what is written
has the umask's permissions even when the writer (safetensors) stages through mkstemp."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from itnet_scale.checkpoint import atomic_writes
from itnet_scale.checkpoint.atomic_writes import atomic_directory, fresh_directory, write_text_atomically
from tests.checkpoint.permissions import UMASK_MODES, UMASKS, assert_honours_umask, mode, umask


@pytest.mark.parametrize("value", UMASKS)
def test_a_staged_folder_and_its_files_honour_the_umask(tmp_path, value):
    with umask(value):
        with atomic_directory(tmp_path / "out") as staging:
            assert mode(staging) == UMASK_MODES[value][0]  # not mkdtemp's 0700
            (staging / "config.yaml").write_text("a: 1\n")
            save_file({"w": torch.ones(2)}, staging / "model.safetensors")  # safetensors leaves 0600
        write_text_atomically(tmp_path / "latest", "step000000001")
    assert_honours_umask(tmp_path / "out", value)
    assert_honours_umask(tmp_path / "latest", value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "out"]  # no staging leftovers


def test_a_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "a").write_text("old")
    exists = r"out exists; choose another output folder or overwrite it"
    with pytest.raises(FileExistsError, match=exists), atomic_directory(tmp_path / "out"):
        pytest.fail("nothing may be staged for an existing folder without overwrite")
    with pytest.raises(RuntimeError, match="interrupted"), \
            atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "a").write_text("new")
        raise RuntimeError("interrupted")
    assert (tmp_path / "out" / "a").read_text() == "old"
    with atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "b").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"file exists and is not a folder"), \
            atomic_directory(tmp_path / "file", overwrite=True):
        pytest.fail("a file is never replaced by a folder")


def test_write_text_atomically_replaces_the_file_whole(tmp_path):
    write_text_atomically(tmp_path / "latest", "one")
    write_text_atomically(tmp_path / "latest", "two")
    assert (tmp_path / "latest").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_a_fresh_folder_gets_a_new_name_or_a_clear_error(tmp_path, monkeypatch):
    first, second = fresh_directory(tmp_path, ".x-"), fresh_directory(tmp_path, ".x-")
    assert first != second and first.name.startswith(".x-") and not list(first.iterdir())
    monkeypatch.setattr(atomic_writes.secrets, "token_hex", lambda _: "same")
    fresh_directory(tmp_path, ".y-")
    with pytest.raises(FileExistsError, match=r"no free name for a temporary folder \.y-\* after 100 tries"):
        fresh_directory(tmp_path, ".y-")
