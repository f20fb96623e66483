"""What every file and folder the checkpoint package writes must have: the permissions of any new file of the user,
0666 / 0777 less the umask (DeepSpeed's own checkpoint files honour it too)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: umask → (folder mode, file mode) that new folders and files get under it.
UMASK_MODES = {0o022: (0o755, 0o644), 0o077: (0o700, 0o600)}
#: The umasks, as parameters of a test (``umask022``, ``umask077``).
UMASKS = [pytest.param(value, id=f"umask{value:03o}") for value in UMASK_MODES]


@contextmanager
def umask(value: int) -> Iterator[None]:
    """Run the block under umask ``value`` (the process's; restored after)."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_honours_umask(path: Path, value: int) -> None:
    """``path`` (a file, or a folder and everything in it) has the modes ``value`` gives new files and folders."""
    folder_mode, file_mode = UMASK_MODES[value]
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    assert entries
    for entry in entries:
        expected = folder_mode if entry.is_dir() else file_mode
        assert mode(entry) == expected, f"{entry}: {oct(mode(entry))}, expected {oct(expected)} under umask {value:03o}"
