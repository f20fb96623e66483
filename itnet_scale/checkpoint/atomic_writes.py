"""Writes that appear whole or not at all and survive a crash once done.

- :func:`write_text_atomically` replaces a small file (a run's ``latest``): a temporary sibling, synced, renamed over
  the target, the rename synced.
- :func:`atomic_directory` stages a whole folder (a library folder) in a temporary sibling that is renamed into
  place when complete, or deleted on error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's: its entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` atomically: readers see the old content or the new one, never
    a mix, and the new one survives a crash once this returns."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)  # make the rename itself durable


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target`` to write into; on success it replaces ``target`` (its files
    synced, renamed into place, the rename synced), on any error it is deleted.
    An existing ``target`` raises ``FileExistsError`` before anything is written, unless ``overwrite``."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another output folder or overwrite it (--overwrite)")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield temporary
        for path in temporary.iterdir():
            fsync_path(path)
        old = None
        if target.exists():  # overwrite: move the old folder aside, put the new one in place, then delete the old
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.replace(temporary, target)
        except BaseException:
            if old is not None:
                os.replace(old / target.name, target)
                old.rmdir()
            raise
        fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
