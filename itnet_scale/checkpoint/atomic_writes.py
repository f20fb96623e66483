"""Writes that appear whole or not at all, survive a crash once done, and honour the user's umask.

- :func:`write_text_atomically` (:func:`write_bytes_atomically`) replaces a file (a run's ``latest``, a weights'
  EMA): a temporary sibling, synced, renamed over the target, the rename synced.
- :func:`atomic_directory` stages a whole folder (a library folder) in a temporary sibling that is renamed into
  place when complete, or deleted on error.

Files and folders written here get the permissions any new file of the user gets (``0666`` / ``0777`` less the
umask: ``0644`` / ``0755`` under the usual ``022``), like DeepSpeed's own checkpoint files, so that a team sharing
a group can read them. ``tempfile.mkdtemp`` (``0700``) and writers that stage through ``mkstemp`` (safetensors'
``save_file`` leaves ``0600``) do not; the staging folder here is made with ``os.mkdir`` and the files in it are
given the folder's permissions less the execute bits before the rename.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Tries at a fresh random name before giving up (as ``tempfile`` does).
_NAME_TRIES = 100


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's: its entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fresh_directory(parent: str | Path, prefix: str) -> Path:
    """Create and return a new, empty folder ``parent/{prefix}{random}`` with the umask's permissions (what
    ``tempfile.mkdtemp`` does, but not ``0700``)."""
    for _ in range(_NAME_TRIES):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: no free name for a temporary folder {prefix}* after {_NAME_TRIES} tries")


def honour_umask(folder: Path) -> None:
    """Give every file directly in ``folder`` the permissions of a new file under the current umask: the folder's
    own (made by :func:`fresh_directory`, so ``0777`` less the umask) without the execute bits."""
    file_mode = stat.S_IMODE(folder.stat().st_mode) & 0o666
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(file_mode)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` atomically: readers see the old content or the new one, never
    a mix, and the new one survives a crash once this returns."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data`` atomically (as :func:`write_text_atomically`)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)  # make the rename itself durable


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target`` to write into; on success it replaces ``target`` (its files
    given the umask's permissions and synced, renamed into place, the rename synced), on any error it is deleted.
    An existing ``target`` raises ``FileExistsError`` before anything is written, unless ``overwrite``."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another output folder or overwrite it (--overwrite)")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = fresh_directory(target.parent, f".{target.name}.tmp-")
    try:
        yield temporary
        honour_umask(temporary)
        for path in temporary.iterdir():
            fsync_path(path)
        old = None
        if target.exists():  # overwrite: move the old folder aside, put the new one in place, then delete the old
            old = fresh_directory(target.parent, f".{target.name}.old-")
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
