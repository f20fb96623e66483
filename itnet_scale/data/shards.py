"""Shard sets: webdataset tar shards plus an ``index.json``, and writers from real data formats.

A *shard set* is a directory of ``{prefix}-%06d.tar`` shards and ``index.json``::

    {"format": "itnet-shards/1", "kind": "image", "keys": ["cls", "png"],
     "shards": [{"name": "shard-000000.tar", "samples": 256, "bytes": 1054720}, ...],
     "samples": 1797, "bytes": 7413760, "source": "sklearn.datasets.load_digits", "classes": ["0", ...], "skipped": {}}

Kinds and their members (one ``__key__`` per sample, unique within a set):

- ``text``: ``txt`` (UTF-8);
- ``image``: ``png`` or ``jpg`` (RGB or L) + ``cls`` (ASCII decimal class index);
- ``image_text``: ``png`` or ``jpg`` + ``txt`` (caption);
- ``points``: ``npy`` (float32 ``[P, 3]``, saved without pickle) + ``cls``.

:class:`ShardSetWriter` writes a set; ``write_*_shards`` build one from plain text files, image
folders, image–caption jsonl files and point-cloud folders (``.npy``, ModelNet-style ``.txt``,
``.off`` meshes). Bad inputs are skipped, counted per reason in the index and logged with the
file (and line) at fault. :func:`read_index` validates a set; :func:`iter_shard_samples` reads it
back in order (raw bytes; nothing is ever unpickled).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "image": (("png", "jpg"), ("cls",)),
    "image_text": (("png", "jpg"), ("txt",)),
    "points": (("npy",), ("cls",)),
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
POINT_SUFFIXES = (".npy", ".txt", ".off")
# Encoded formats stored as they are (PIL format name -> member extension).
_STORED_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png"}
_SHARD_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_.-]+)-(?P<number>\d{6})\.tar$")


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
        staged_index = self.directory / f".{INDEX_FILE}.partial"
        staged_index.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        os.replace(staged_index, self.directory / INDEX_FILE)
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


def read_index(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``directory/index.json``; every listed shard must exist with the recorded size.

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file and the field at fault.
    """
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard-set index (is {Path(directory)} a shard set?)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None

    def fail(field_name: str, problem: str) -> ValueError:
        return ValueError(f"{path}: field {field_name!r} {problem}")

    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(index).__name__}")
    if index.get("format") != INDEX_FORMAT:
        raise fail("format", f"must be {INDEX_FORMAT!r}, got {index.get('format')!r}")
    if index.get("kind") not in KIND_MEMBERS:
        raise fail("kind", f"must be one of {sorted(KIND_MEMBERS)}, got {index.get('kind')!r}")
    keys = index.get("keys")
    allowed = {ext for group in KIND_MEMBERS[index["kind"]] for ext in group}
    if not isinstance(keys, list) or not keys or not set(keys) <= allowed:
        raise fail("keys", f"must list members of a {index['kind']!r} set ({sorted(allowed)}), got {keys!r}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        raise fail("shards", "must be a non-empty list")
    for number, shard in enumerate(shards):
        where = f"shards[{number}]"
        if not isinstance(shard, dict):
            raise fail(where, "must be an object with name, samples, bytes")
        name = shard.get("name")
        if not isinstance(name, str) or not _SHARD_NAME.match(name):
            raise fail(f"{where}.name", f"must be a file name '<prefix>-NNNNNN.tar', got {name!r}")
        for count in ("samples", "bytes"):
            if not isinstance(shard.get(count), int) or isinstance(shard[count], bool) or shard[count] < 0:
                raise fail(f"{where}.{count}", f"must be a non-negative integer, got {shard.get(count)!r}")
        shard_path = path.parent / name
        if not shard_path.is_file():
            raise FileNotFoundError(f"{path}: {where} names {name}, which does not exist")
        if shard_path.stat().st_size != shard["bytes"]:
            raise fail(f"{where}.bytes", f"is {shard['bytes']} but {name} has {shard_path.stat().st_size} bytes")
    for total in ("samples", "bytes"):
        expected = sum(shard[total] for shard in shards)
        if index.get(total) != expected:
            raise fail(total, f"is {index.get(total)!r} but the shards add up to {expected}")
    return index


def shard_paths(directory: str | Path) -> list[Path]:
    """The shard files of a validated set, in index order."""
    return [Path(directory) / shard["name"] for shard in read_index(directory)["shards"]]


def iter_shard_samples(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the samples of a shard set in order as raw ``{"__key__": str, ext: bytes, ...}`` (no decoding)."""
    pipeline = wds.DataPipeline(wds.SimpleShardList([str(p) for p in shard_paths(directory)]),
                                wds.tarfile_to_samples())
    yield from pipeline


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


def _read_image_or_skip(writer: ShardSetWriter, path: Path, where: str) -> tuple[str, bytes] | None:
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
            image = _read_image_or_skip(writer, path, str(path))
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
            image = _read_image_or_skip(writer, path, where)
            if image is not None:
                writer.write({image[0]: image[1], "txt": record["caption"].strip()})
    return writer.summary


def load_points(path: Path, num_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """Read a point cloud as float32 ``[P, 3]``: ``.npy`` ``[P, ≥3]`` and ``.txt`` rows (comma or space separated)
    keep their first 3 columns; ``.off`` meshes are surface-sampled. With ``num_points``, a stored cloud is
    subsampled without replacement (or topped up with repeats); ``.off`` needs ``num_points``.

    Raises ``ValueError`` naming the file for unreadable data, a wrong shape or non-finite values.
    """
    suffix = path.suffix.lower()
    if suffix == ".off":
        if num_points is None:
            raise ValueError(f"{path}: sampling a mesh needs num_points")
        return sample_surface(read_off(path), num_points, rng)  # read_off's errors name the file
    if suffix not in (".npy", ".txt"):
        raise ValueError(f"{path}: unsupported point-cloud suffix {suffix!r}; expected one of {POINT_SUFFIXES}")
    try:
        if suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8").replace(",", " ")
            points = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read points ({error})") from error
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < 3:
        raise ValueError(f"{path}: expected points of shape [P, >=3], got {list(points.shape)}")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"{path}: expected numeric points, got dtype {points.dtype}")
    points = points[:, :3]
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: points contain NaN or infinity")
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
