"""Shard sets: webdataset tar shards plus an ``index.json``, and writers from real data formats.

A *shard set* is a folder (local, or served over ``http(s)://``) of ``.tar`` shards and ``index.json``::

    {"format": "itnet-shards/1", "kind": "image", "keys": ["cls", "png"],
     "shards": [{"name": "shard-000000.tar", "samples": 256, "bytes": 1054720}, ...],
     "samples": 1797, "bytes": 7413760, "source": "sklearn.datasets.load_digits", "classes": ["0", ...], "skipped": {}}

An index may also list ``members``: every member extension its samples hold, with the number of samples that
hold it (``{"jpg": 9, "txt": 9, "json": 9}``); members a set declares there but no kind decodes (img2dataset's
``json``) are ignored quietly when streamed.

Kinds and their members (one ``__key__`` per sample, unique within a set):

- ``text``: ``txt`` (UTF-8);
- ``image``: ``png``, ``jpg`` or ``webp`` (RGB or L) + ``cls`` (ASCII decimal class index);
- ``image_text``: ``png``, ``jpg`` or ``webp`` + ``txt`` (caption);
- ``points``: ``npy`` (float32 ``[P, 3]``, saved without pickle) + ``cls``;
- ``text_label``: ``txt`` + ``cls`` or ``score`` (a regression target: an ASCII decimal float, e.g. ``3.8``);
- ``text_pair``: ``txt`` (the first text) + ``pair.txt`` (the second, UTF-8) + ``cls`` or ``score``.

Member names are webdataset extensions: ``pair.txt`` is stored as ``{key}.pair.txt``, so generic webdataset tools
see a second text member; fine-tuning sets (``itnet_scale.tasks``) write the last two kinds.

:class:`ShardSetWriter` writes a set; ``write_*_shards`` build one from plain text files, image folders,
image–caption jsonl files and point-cloud folders (``.npy``, ModelNet-style ``.txt``, ``.off`` meshes);
:func:`index_existing_shards` indexes tars written by other tools (img2dataset, open_clip corpora) in place. Bad
inputs are skipped, counted per reason in the index and logged with the file (and line) at fault.

Reading: :func:`read_index` reads and validates a set's index from a folder or URL; :func:`read_shard` yields one
shard's raw samples (``{"__key__", "__url__", ext: bytes}``; nothing is ever decoded or unpickled) and raises
:class:`BadShardError` naming the shard when it is missing, answers with an HTTP error, is cut off, or its size
disagrees with the index. Locations are local paths, ``file://``, ``http://`` and ``https://`` URLs;
``pipe:`` commands only where the caller passes ``allow_pipe_urls=True`` (a command-line flag, never a config).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import itertools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import webdataset as wds
from PIL import Image

from itnet_scale.data.meshes import read_off, sample_surface

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = "itnet-shards/1"

#: Members of each kind: a sample holds exactly one extension from each group.
KIND_MEMBERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "text": (("txt",),),
    "image": (("png", "jpg", "webp"), ("cls",)),
    "image_text": (("png", "jpg", "webp"), ("txt",)),
    "points": (("npy",), ("cls",)),
    "text_label": (("txt",), ("cls", "score")),
    "text_pair": (("txt",), ("pair.txt",), ("cls", "score")),
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
POINT_SUFFIXES = (".npy", ".txt", ".off")
# Encoded formats stored as they are (PIL format name -> member extension).
_STORED_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png"}
# A shard is a plain file name in its set's folder: no path, no scheme (so an index can never name a command).
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar$")
#: Seconds an HTTP request may wait for the server (per connection attempt and per read).
HTTP_TIMEOUT = 60.0


@dataclass(frozen=True)
class ShardSetSummary:
    """What a finished shard set holds: ``samples`` in ``shards`` tar files of ``bytes`` in all, ``skipped`` inputs
    per reason."""

    directory: Path
    kind: str
    samples: int
    shards: int
    bytes: int
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> ShardSetSummary:
        """The summary of the finished set in ``directory`` (validated by :func:`read_index`)."""
        index = read_index(directory)
        return cls(Path(directory), index["kind"], index["samples"], len(index["shards"]), index["bytes"],
                   dict(index.get("skipped", {})))

    def describe(self) -> str:
        """One line for logs and CLIs."""
        skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.kind}: {self.samples} samples in {self.shards} shards, {self.bytes} bytes -> {self.directory} "
                f"(skipped: {skipped})")


def check_sample_members(kind: str, members: Iterable[str], where: str = "sample") -> None:
    """Raise ``ValueError`` naming ``where`` unless ``members`` (extensions) are exactly those of ``kind``."""
    if kind not in KIND_MEMBERS:
        raise ValueError(f"unknown shard-set kind {kind!r}; expected one of {sorted(KIND_MEMBERS)}")
    members = set(members)
    groups = KIND_MEMBERS[kind]
    allowed = {ext for group in groups for ext in group}
    if members - allowed or any(len(members & set(group)) != 1 for group in groups):
        expected = " + ".join(" or ".join(group) for group in groups)
        raise ValueError(f"{where}: a {kind!r} sample holds {expected}, got members {sorted(members)}")


class ShardSetWriter:
    """Write samples into ``directory/{prefix}-%06d.tar`` shards and, on a clean close, ``index.json``.

    A thin layer over ``webdataset.ShardWriter``: it rolls over to a new shard once the current one holds
    ``max_count`` samples or at least ``max_bytes`` bytes of payload (so a shard exceeds ``max_bytes`` by at
    most one sample). Shards are written in a staging folder and moved into ``directory`` only when complete;
    if the ``with`` block raises, the open shard is discarded and no ``index.json`` is written, so a half-written
    set is never taken for a complete one. Keys are assigned in order (``000000000``, ``000000001``, …).

    ``info`` holds extra index fields (``classes``, ``source``); :meth:`skip` counts and logs a skipped input.
    """

    def __init__(self, directory: str | Path, kind: str, *, prefix: str = "shard", max_count: int | None = None,
                 max_bytes: int | None = 500_000_000, info: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        if kind not in KIND_MEMBERS:
            raise ValueError(f"unknown shard-set kind {kind!r}; expected one of {sorted(KIND_MEMBERS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"prefix {prefix!r} must be letters, digits, '_', '.' or '-'")
        for name, limit in (("max_count", max_count), ("max_bytes", max_bytes)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {limit}")
        self.directory = Path(directory)
        self.kind = kind
        self.prefix = prefix
        self.info: dict[str, Any] = dict(info or {})
        self.skipped: Counter[str] = Counter()
        self._shards: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._samples = 0
        self._shard_samples = 0
        self._failed = False
        self.summary: ShardSetSummary | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clear_previous(overwrite)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-staging-", dir=self.directory))
        self._writer = wds.ShardWriter(str(self._staging / f"{prefix}-%06d.tar"),
                                       maxcount=max_count or float("inf"), maxsize=max_bytes or float("inf"),
                                       post=self._shard_done, verbose=0,
                                       encoder=False, mtime=0.0, user="itnet", group="itnet")

    def _clear_previous(self, overwrite: bool) -> None:
        previous = sorted(self.directory.glob(f"{self.prefix}-*.tar"))
        index = self.directory / INDEX_FILE
        if index.exists():
            previous.append(index)
        if previous and not overwrite:
            raise FileExistsError(f"{self.directory} already holds a shard set ({previous[0].name}); "
                                  "choose an empty directory or pass overwrite=True")
        for path in previous:
            path.unlink()

    def _shard_done(self, staged: str) -> None:
        """``ShardWriter``'s ``post`` hook: move a finished shard into place (or drop it if empty or failed)."""
        staged_path = Path(staged)
        if self._failed or self._shard_samples == 0:
            staged_path.unlink()
            return
        final = self.directory / staged_path.name
        os.replace(staged_path, final)
        self._shards.append({"name": final.name, "samples": self._shard_samples, "bytes": final.stat().st_size})
        self._shard_samples = 0

    def write(self, members: Mapping[str, bytes | str]) -> str:
        """Write one sample (extension → bytes, or str stored as UTF-8) and return its key."""
        check_sample_members(self.kind, members, where=f"{self.directory}: sample {self._samples}")
        key = f"{self._samples:09d}"
        sample: dict[str, Any] = {"__key__": key}
        for ext, value in members.items():
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"{self.directory}: sample {key} member {ext!r} must be bytes or str, "
                                f"got {type(value).__name__}")
            sample[ext] = bytes(value)
        self._writer.write(sample)
        self._keys.update(members)
        self._samples += 1
        self._shard_samples += 1
        return key

    def skip(self, reason: str, message: str) -> None:
        """Count one skipped input under ``reason`` and log ``message`` (which names the file, line)."""
        self.skipped[reason] += 1
        logger.warning("skipped (%s): %s", reason, message)

    def close(self) -> ShardSetSummary:
        """Finish the last shard, write ``index.json`` and return the summary (also kept as ``self.summary``).

        Raises ``ValueError`` if no sample was written (then there is no index).
        """
        self._writer.close()
        self._staging.rmdir()
        if not self._shards:
            raise ValueError(f"{self.directory}: no samples were written (skipped: {dict(self.skipped) or 'none'}); "
                             f"no {INDEX_FILE} written")
        index = {
            "format": INDEX_FORMAT,
            "kind": self.kind,
            "keys": sorted(self._keys),
            "shards": self._shards,
            "samples": sum(s["samples"] for s in self._shards),
            "bytes": sum(s["bytes"] for s in self._shards),
            **self.info,
            "skipped": dict(sorted(self.skipped.items())),
        }
        _write_index(self.directory, index)
        self.summary = ShardSetSummary(self.directory, self.kind, index["samples"], len(self._shards),
                                       index["bytes"], dict(self.skipped))
        return self.summary

    def abort(self) -> None:
        """Discard the open shard and the staging folder; write no ``index.json``."""
        self._failed = True
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardSetError(ValueError):
    """A shard set's location, index or one of its shards is unusable; the message names it and the problem."""


class BadShardError(ShardSetError):
    """A shard that cannot be read as its index says: ``shard`` is its location, ``problem`` what is wrong."""

    def __init__(self, shard: str, problem: str) -> None:
        super().__init__(f"{shard}: {problem}")
        self.shard, self.problem = shard, problem


class ShardFile(NamedTuple):
    """One shard as its set's index lists it: its location (a path or URL), samples and bytes."""

    location: str
    samples: int
    bytes: int


PIPE_PREFIX = "pipe:"
_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def location_kind(location: str, *, allow_pipe_urls: bool = False) -> str:
    """What ``location`` (a shard set, or a file in one) is: ``"local"`` (a path or ``file://`` URL), ``"http"``
    (``http://``, ``https://``) or ``"pipe"``. ``pipe:COMMAND`` runs a shell command whose stdout is the file, with
    ``{name}`` where a shard set's file name goes (``pipe:aws s3 cp s3://bucket/set/{name} -``); it is refused unless
    ``allow_pipe_urls`` (which only a command-line flag may set: nothing in a config may run code). Raises
    :class:`ShardSetError` saying why a location is refused."""
    if location.startswith(PIPE_PREFIX):
        if not allow_pipe_urls:
            raise ShardSetError(f"{location!r}: a pipe: location runs a shell command, and nothing in a config may run "
                                "code; pass --allow_pipe_urls on the command line to allow it")
        return "pipe"
    match = _URL_SCHEME.match(location)
    scheme = match["scheme"].lower() if match else "file"
    if scheme == "file":
        return "local"
    if scheme in ("http", "https"):
        return "http"
    raise ShardSetError(f"{location!r}: unsupported scheme {scheme!r}; a shard set is a local folder or a file://, "
                        "http:// or https:// URL")


def _in_set(location: str, kind: str, name: str) -> str:
    """The location of file ``name`` (a plain file name) of the set at ``location`` of ``kind``."""
    if kind == "pipe":
        if "{name}" not in location:
            raise ShardSetError(f"{location!r}: a pipe: shard set is a command that writes one file of the set to "
                                "stdout, with {name} where the file name goes (e.g. "
                                "'pipe:aws s3 cp s3://bucket/set/{name} -')")
        return location.replace("{name}", name)
    if kind == "http" or _URL_SCHEME.match(location):
        return f"{location.rstrip('/')}/{name}"
    return str(Path(location) / name)


def _local_path(location: str) -> Path:
    """The path of a local location (a path or ``file://`` URL)."""
    return Path(urllib.request.url2pathname(location[len("file://"):])) if _URL_SCHEME.match(location) \
        else Path(location)


class _Unavailable(Exception):
    """A file that could not be opened: ``problem`` says why; ``missing`` when it does not exist (or 404s)."""

    def __init__(self, problem: str, missing: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.missing = problem, missing


def _open_location(location: str, kind: str) -> tuple[IO[bytes], int | None]:
    """Open a file of a set for reading: the stream and the size its source announces (``None`` when unknown).
    Raises :class:`_Unavailable`."""
    if kind == "local":
        try:
            stream = _local_path(location).open("rb")
        except FileNotFoundError:
            raise _Unavailable("does not exist", missing=True) from None
        except OSError as error:
            raise _Unavailable(f"cannot be opened ({error.strerror or error})") from None
        return stream, os.fstat(stream.fileno()).st_size
    if kind == "http":
        try:
            response = urllib.request.urlopen(location, timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as error:
            raise _Unavailable(f"HTTP {error.code} ({error.reason})", missing=error.code in (404, 410)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Unavailable(f"cannot be fetched ({getattr(error, 'reason', error)})") from None
        length = response.headers.get("Content-Length", "")
        return response, int(length) if length.isdigit() else None
    from webdataset.gopen import gopen_pipe  # only ever reached for a pipe: the caller allowed explicitly

    return gopen_pipe(location), None


class _CountingReader:
    """A read-only stream that counts the bytes read through it: a shard cut off at a tar block boundary reads
    as a complete, shorter tar, so only its length gives it away."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.count = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


# What reading a broken tar raises: tarfile's errors, I/O and transfer errors, a truncated compressed stream,
# and webdataset's own ValueError (a member name twice in one sample).
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, http.client.HTTPException, ValueError)


def _shard_samples(location: str, kind: str, expected_bytes: int | None) -> Iterator[dict[str, Any]]:
    try:
        stream, announced = _open_location(location, kind)
    except _Unavailable as error:
        raise BadShardError(location, error.problem) from None
    counted = _CountingReader(stream)
    try:
        if expected_bytes is not None and announced is not None and announced != expected_bytes:
            raise BadShardError(location, f"has {announced} bytes but its index says {expected_bytes}")
        try:
            files = wds.tariterators.tar_file_expander([{"url": location, "stream": counted}], eof_value=None)
            yield from wds.tariterators.group_by_keys(files)
            while counted.read(1 << 20):  # the end-of-archive padding: every byte must arrive
                pass
        except _READ_ERRORS as error:
            detail = error.args[0] if error.args else ""
            raise BadShardError(location, f"cannot be read after {counted.count} bytes "
                                          f"({type(error).__name__}: {detail})") from None
        if expected_bytes is not None and counted.count != expected_bytes:
            raise BadShardError(location, f"was cut off after {counted.count} of {expected_bytes} bytes"
                                if counted.count < expected_bytes else
                                f"has {counted.count} bytes but its index says {expected_bytes}")
    finally:
        with contextlib.suppress(OSError):  # a pipe's command exiting non-zero: what it failed to deliver shows above
            stream.close()


def read_shard(location: str, *, expected_bytes: int | None = None, allow_pipe_urls: bool = False,
               on_bad_shard: Callable[[BadShardError], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of one tar shard, in order: ``{"__key__": str, "__url__": location, ext: bytes}``
    (members are never decoded, so nothing is unpickled).

    ``location`` is a path or URL (see :func:`location_kind`; ``pipe:`` only with ``allow_pipe_urls``). A shard
    that is missing, answers with an HTTP error, is cut off or unreadable, or whose size is not ``expected_bytes``
    (its index's ``bytes``) raises :class:`BadShardError` — possibly after some samples were yielded — or, with
    ``on_bad_shard``, is handed to it and ends the iteration quietly (to skip the shard and go on).
    """
    kind = location_kind(location, allow_pipe_urls=allow_pipe_urls)
    try:
        yield from _shard_samples(location, kind, expected_bytes)
    except BadShardError as error:
        if on_bad_shard is None:
            raise
        on_bad_shard(error)


def read_index(location: str | Path, *, check_shards: bool = True, allow_pipe_urls: bool = False) -> dict[str, Any]:
    """Read and validate the index of the shard set at ``location``: a folder, or a URL (``index.json`` is read from
    the same place). With ``check_shards``, every shard of a local set must exist with the size its index records
    (a :class:`BadShardError` names the first that does not); a remote set's shards are checked as they are read
    (:func:`read_shard`). Indexes without ``members`` (written before it existed) are read as they are.

    Raises ``FileNotFoundError`` (no index there) or :class:`ShardSetError` naming the file and the field at fault.
    """
    location = str(location)
    kind = location_kind(location, allow_pipe_urls=allow_pipe_urls)
    path = _in_set(location, kind, INDEX_FILE)
    try:
        stream, _ = _open_location(path, kind)
        with stream:
            text = stream.read()
    except _Unavailable as error:
        if error.missing:
            raise FileNotFoundError(f"{path}: no shard-set index ({error.problem}; is {location} a shard set?)") \
                from None
        raise ShardSetError(f"{path}: the shard-set index {error.problem}") from None
    except (OSError, http.client.HTTPException) as error:
        raise ShardSetError(f"{path}: the shard-set index cannot be read ({error})") from None
    try:
        index = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardSetError(f"{path}: not valid JSON ({error})") from None

    def fail(field_name: str, problem: str) -> ShardSetError:
        return ShardSetError(f"{path}: field {field_name!r} {problem}")

    if not isinstance(index, dict):
        raise ShardSetError(f"{path}: expected a JSON object, got {type(index).__name__}")
    if index.get("format") != INDEX_FORMAT:
        raise fail("format", f"must be {INDEX_FORMAT!r}, got {index.get('format')!r}")
    if index.get("kind") not in KIND_MEMBERS:
        raise fail("kind", f"must be one of {sorted(KIND_MEMBERS)}, got {index.get('kind')!r}")
    keys = index.get("keys")
    allowed = {ext for group in KIND_MEMBERS[index["kind"]] for ext in group}
    if not isinstance(keys, list) or not keys or not set(keys) <= allowed:
        raise fail("keys", f"must list members of a {index['kind']!r} set ({sorted(allowed)}), got {keys!r}")
    members = index.get("members", {ext: 0 for ext in keys})
    if (not isinstance(members, dict) or not set(keys) <= set(members)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in members.values())):
        raise fail("members", f"must map every member extension (at least {keys}) to a sample count, got {members!r}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        raise fail("shards", "must be a non-empty list")
    for number, shard in enumerate(shards):
        where = f"shards[{number}]"
        if not isinstance(shard, dict):
            raise fail(where, "must be an object with name, samples, bytes")
        name = shard.get("name")
        if not isinstance(name, str) or not _SHARD_NAME.match(name):
            raise fail(f"{where}.name", f"must be a plain '.tar' file name in the set's folder, got {name!r}")
        for count in ("samples", "bytes"):
            if not isinstance(shard.get(count), int) or isinstance(shard[count], bool) or shard[count] < 0:
                raise fail(f"{where}.{count}", f"must be a non-negative integer, got {shard.get(count)!r}")
    for total in ("samples", "bytes"):
        expected = sum(shard[total] for shard in shards)
        if index.get(total) != expected:
            raise fail(total, f"is {index.get(total)!r} but the shards add up to {expected}")
    if check_shards and kind == "local":
        for shard in shard_files(location, index):
            path = _local_path(shard.location)
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                raise BadShardError(shard.location, f"does not exist ({INDEX_FILE} lists it)")
            if size != shard.bytes:
                raise BadShardError(shard.location, f"has {size} bytes but its index says {shard.bytes}")
    return index


def shard_files(location: str | Path, index: Mapping[str, Any], *, allow_pipe_urls: bool = False) -> list[ShardFile]:
    """The shards of the set at ``location`` whose index is ``index`` (from :func:`read_index`), in index order."""
    location = str(location)
    kind = location_kind(location, allow_pipe_urls=allow_pipe_urls)
    return [ShardFile(_in_set(location, kind, s["name"]), s["samples"], s["bytes"]) for s in index["shards"]]


def shard_paths(directory: str | Path) -> list[Path]:
    """The shard files of a validated local set, in index order."""
    return [Path(directory) / shard["name"] for shard in read_index(directory)["shards"]]


def iter_shard_samples(location: str | Path, *, allow_pipe_urls: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the samples of a shard set (a folder or URL) in order as raw ``{"__key__": str, ext: bytes, ...}`` (no
    decoding); a bad shard raises :class:`BadShardError`."""
    index = read_index(location, allow_pipe_urls=allow_pipe_urls)
    for shard in shard_files(location, index, allow_pipe_urls=allow_pipe_urls):
        yield from read_shard(shard.location, expected_bytes=shard.bytes, allow_pipe_urls=allow_pipe_urls)


def _write_index(directory: Path, index: Mapping[str, Any]) -> None:
    """Write ``directory/index.json`` atomically (staged, then renamed: a reader never sees half an index)."""
    staged = directory / f".{INDEX_FILE}.partial"
    staged.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, directory / INDEX_FILE)


def index_existing_shards(directory: str | Path, kind: str, *, overwrite: bool = False) -> ShardSetSummary:
    """Index the ``*.tar`` shards already in ``directory`` (as img2dataset and open_clip corpora are: ``00000.tar``
    … with ``jpg``/``webp``, ``txt`` and ``json`` members, ``_stats.json`` and parquet files beside them) in place:
    read each tar once and write ``index.json`` beside them — samples and bytes per shard, the member extensions
    (``members``: how many samples hold each). The tars and the other files are not touched.

    A tar that cannot be read, or whose name is not a plain ``.tar`` file name, is left out of the index, counted
    (``unreadable_shard``, ``unsupported_name``) and logged. Samples that lack a member ``kind`` needs stay in their
    shard's count (a reader skips them as ``missing_key``) and are logged in total. Raises ``ValueError`` if no
    shard is readable or no sample holds one of ``kind``'s member groups, ``FileExistsError`` if an index is
    there and not ``overwrite``.
    """
    directory = Path(directory)
    if kind not in KIND_MEMBERS:
        raise ValueError(f"unknown shard-set kind {kind!r}; expected one of {sorted(KIND_MEMBERS)}")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    if (directory / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{directory / INDEX_FILE} exists already; pass --overwrite (overwrite=True) to "
                              "replace it")
    groups = KIND_MEMBERS[kind]
    shards: list[dict[str, Any]] = []
    members: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    incomplete = 0
    for path in sorted(p for p in directory.iterdir() if p.suffix == ".tar" and p.is_file()):
        if not _SHARD_NAME.match(path.name):
            skipped["unsupported_name"] += 1
            logger.warning("skipped (unsupported_name): %s: a shard name is letters, digits, '_', '.', '-' + .tar",
                           path)
            continue
        size, samples, seen = path.stat().st_size, 0, Counter()
        try:
            for sample in read_shard(str(path), expected_bytes=size):
                extensions = [k for k in sample if not k.startswith("__")]
                seen.update(extensions)
                samples += 1
                incomplete += not all(set(group) & set(extensions) for group in groups)
        except BadShardError as error:
            skipped["unreadable_shard"] += 1
            logger.warning("skipped (unreadable_shard): %s", error)
            continue
        shards.append({"name": path.name, "samples": samples, "bytes": size})
        members.update(seen)
    if not shards:
        raise ValueError(f"{directory}: no readable .tar shards (skipped: {dict(skipped) or 'none'})")
    absent = [" or ".join(group) for group in groups if not set(group) & set(members)]
    if absent:
        raise ValueError(f"{directory}: no sample holds {', '.join(absent)}, so this is not a {kind!r} set "
                         f"(members found: {sorted(members)})")
    if incomplete:
        logger.warning("%s: %d samples lack a member a %r sample needs (%s); readers skip them (missing_key)",
                       directory, incomplete, kind, " + ".join(" or ".join(group) for group in groups))
    allowed = {ext for group in groups for ext in group}
    index = {"format": INDEX_FORMAT, "kind": kind, "keys": sorted(set(members) & allowed),
             "members": dict(sorted(members.items())), "shards": shards,
             "samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
             "source": str(directory), "skipped": dict(sorted(skipped.items()))}
    _write_index(directory, index)
    return ShardSetSummary(directory, kind, index["samples"], len(shards), index["bytes"], dict(skipped))


# --- Writers from real formats ---------------------------------------------------------------------------------


def split_documents(text: str) -> list[str]:
    """Split text into documents at blank lines; each is stripped, empty ones dropped."""
    return [doc.strip() for doc in re.split(r"\n[ \t\r\f\v]*\n", text) if doc.strip()]


def _files_with_suffix(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """``path`` itself if it is a file, else the files under it (recursively) with one of ``suffixes``, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def write_text_shards(source: str | Path, output: str | Path, **writer_options: Any) -> ShardSetSummary:
    """Write a ``text`` set from a ``.txt`` file or a folder of them (recursive), one document per blank-line
    separated paragraph. Files that are not UTF-8 are skipped (``undecodable_text``).

    ``writer_options`` go to :class:`ShardSetWriter` (``prefix``, ``max_count``, ``max_bytes``, ``overwrite``).
    """
    source = Path(source)
    files = _files_with_suffix(source, (".txt",))
    if not files:
        raise ValueError(f"{source}: no .txt files found")
    with ShardSetWriter(output, "text", info={"source": str(source)}, **writer_options) as writer:
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                writer.skip("undecodable_text", f"{path}: not UTF-8 ({error})")
                continue
            for document in split_documents(text):
                writer.write({"txt": document})
    return writer.summary


def encoded_image(path: Path) -> tuple[str, bytes]:
    """Return ``(extension, bytes)`` for an image file: JPEG/PNG in RGB or L mode as the file's own bytes,
    anything else PIL reads converted to RGB and encoded as PNG. Raises ``OSError``/``ValueError`` if unreadable.
    """
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode fully: truncated or corrupt files fail here, not in training
        if image.format in _STORED_IMAGE_FORMATS and image.mode in ("RGB", "L"):
            return _STORED_IMAGE_FORMATS[image.format], data
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return "png", buffer.getvalue()


def read_image_or_skip(writer: ShardSetWriter, path: Path, where: str) -> tuple[str, bytes] | None:
    """:func:`encoded_image` of ``path``, or ``None`` after counting it on ``writer`` as ``unreadable_image`` (the
    log line names ``where`` and the file)."""
    try:
        return encoded_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        writer.skip("unreadable_image", f"{where}: cannot read image {path} ({error})")
        return None


def class_folders(root: Path) -> list[Path]:
    """The class folders ``root/<class>/`` in sorted order (class index = position)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory of class folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected root/<class>/<files>)")
    return folders


def _class_files(writer: ShardSetWriter, root: Path, suffixes: Sequence[str]) -> Iterator[tuple[int, Path]]:
    """Yield ``(class index, file)`` over ``root/<class>/*``; files with other suffixes are skipped."""
    folders = class_folders(root)
    writer.info["classes"] = [folder.name for folder in folders]
    for label, folder in enumerate(folders):
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() in suffixes:
                yield label, path
            else:
                writer.skip("unsupported_file", f"{path}: suffix not one of {', '.join(suffixes)}")


def write_image_folder_shards(root: str | Path, output: str | Path, **writer_options: Any) -> ShardSetSummary:
    """Write an ``image`` set from ``root/<class>/*.jpg|*.jpeg|*.png`` (class index = sorted folder order;
    class names go to the index's ``classes``). Unreadable images are skipped (``unreadable_image``)."""
    root = Path(root)
    with ShardSetWriter(output, "image", info={"source": str(root)}, **writer_options) as writer:
        for label, path in _class_files(writer, root, IMAGE_SUFFIXES):
            image = read_image_or_skip(writer, path, str(path))
            if image is not None:
                writer.write({image[0]: image[1], "cls": str(label)})
    return writer.summary


def write_caption_shards(jsonl: str | Path, output: str | Path, *, image_root: str | Path | None = None,
                         **writer_options: Any) -> ShardSetSummary:
    """Write an ``image_text`` set from a jsonl file of ``{"image": path, "caption": text}`` lines.

    Relative image paths are resolved against ``image_root`` (default: the jsonl's folder). Lines that are not
    JSON objects (``bad_json``), lack a non-empty string field (``missing_field``), name a missing file
    (``missing_image``) or an unreadable one (``unreadable_image``) are skipped with their line number.
    """
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise FileNotFoundError(f"{jsonl}: no such caption file")
    base = Path(image_root) if image_root is not None else jsonl.parent
    with ShardSetWriter(output, "image_text", info={"source": str(jsonl)}, **writer_options) as writer, \
            jsonl.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            where = f"{jsonl}:{number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                writer.skip("bad_json", f"{where}: not JSON ({error})")
                continue
            if not isinstance(record, dict):
                writer.skip("bad_json", f"{where}: expected a JSON object")
                continue
            missing = [name for name in ("image", "caption")
                       if not isinstance(record.get(name), str) or not record[name].strip()]
            if missing:
                writer.skip("missing_field", f"{where}: missing or empty field(s) {', '.join(missing)}")
                continue
            path = base / record["image"]
            if not path.is_file():
                writer.skip("missing_image", f"{where}: image {path} does not exist")
                continue
            image = read_image_or_skip(writer, path, where)
            if image is not None:
                writer.write({image[0]: image[1], "txt": record["caption"].strip()})
    return writer.summary


def read_point_rows(path: Path, columns: int = 3, max_rows: int | None = None) -> np.ndarray:
    """Read a stored point cloud's first ``columns`` columns as float64 ``[P, columns]``: ``.npy`` ``[P, ≥columns]``
    or ``.txt`` rows (comma or space separated, as ModelNet's ``x,y,z,nx,ny,nz``). With ``max_rows``, only the first
    that many rows are read (of a ``.txt``, only those lines are parsed).

    Raises ``ValueError`` naming the file for unreadable data, a wrong shape or non-finite values.
    """
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".txt"):
        raise ValueError(f"{path}: unsupported stored point-cloud suffix {suffix!r}; expected .npy or .txt")
    try:
        if suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        else:
            with path.open(encoding="utf-8") as lines:
                text = "".join(itertools.islice(lines, max_rows)).replace(",", " ")
            points = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read points ({error})") from error
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < columns:
        raise ValueError(f"{path}: expected points of shape [P, >={columns}], got {list(points.shape)}")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"{path}: expected numeric points, got dtype {points.dtype}")
    points = points[:max_rows, :columns].astype(np.float64)
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: points contain NaN or infinity")
    return points


def load_points(path: Path, num_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """Read a point cloud as float32 ``[P, 3]``: ``.npy`` and ``.txt`` through :func:`read_point_rows` (xyz);
    ``.off`` meshes are surface-sampled. With ``num_points``, a stored cloud is subsampled without replacement (or
    topped up with repeats); ``.off`` needs ``num_points``.

    Raises ``ValueError`` naming the file for unreadable data, a wrong shape or non-finite values.
    """
    suffix = path.suffix.lower()
    if suffix == ".off":
        if num_points is None:
            raise ValueError(f"{path}: sampling a mesh needs num_points")
        return sample_surface(read_off(path), num_points, rng)  # read_off's errors name the file
    if suffix not in (".npy", ".txt"):
        raise ValueError(f"{path}: unsupported point-cloud suffix {suffix!r}; expected one of {POINT_SUFFIXES}")
    points = read_point_rows(path)
    if num_points is not None and len(points) != num_points:
        if len(points) > num_points:
            chosen = np.sort(rng.choice(len(points), size=num_points, replace=False))
        else:
            chosen = np.concatenate([np.arange(len(points)), rng.choice(len(points), num_points - len(points))])
        points = points[chosen]
    return points.astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes of ``array`` (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_point_cloud_shards(root: str | Path, output: str | Path, *, num_points: int | None = 1024, seed: int = 0,
                             **writer_options: Any) -> ShardSetSummary:
    """Write a ``points`` set from ``root/<class>/*.npy|*.txt|*.off`` (see :func:`load_points`); sampling uses
    ``numpy.random.default_rng(seed)``. Unreadable files are skipped (``unreadable_points``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = {"source": str(root), "num_points": num_points}
    with ShardSetWriter(output, "points", info=info, **writer_options) as writer:
        for label, path in _class_files(writer, root, POINT_SUFFIXES):
            try:
                points = load_points(path, num_points, rng)
            except (OSError, ValueError) as error:
                writer.skip("unreadable_points", str(error))
                continue
            writer.write({"npy": npy_bytes(points), "cls": str(label)})
    return writer.summary
