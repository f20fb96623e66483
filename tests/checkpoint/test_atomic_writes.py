"""Atomic writes: a folder or a file appears whole or not at all, and an error leaves nothing behind."""

from __future__ import annotations

import pytest

from itnet_scale.checkpoint.atomic_writes import atomic_directory, write_text_atomically


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
