"""Readers of the real data sets' files, as their packages install them.

- :func:`read_idx`: the gzip-compressed idx files of (Fashion-)MNIST (``train-images-idx3-ubyte.gz``, …; the
  format: two zero bytes, a type code, the number of dimensions, each dimension as a big-endian uint32, then
  the values in C order). Written here because it is a dozen lines of NumPy and the libraries that read it
  (torchvision, tensorflow-datasets) would each pull in a framework.
- :func:`read_r_lazyload`: the character vectors of an R package's ``data/Rdata.rdb`` lazy-load data base
  (e.g. Debian's ``r-cran-janeaustenr``): the index ``Rdata.rdx`` is a gzip-compressed serialized R list whose
  ``variables`` map each name to ``(offset, length)`` in ``Rdata.rdb``, where each object is a 4-byte big-endian
  uncompressed length followed by zlib data. The R serialization itself is parsed by the ``rdata`` package
  (pure Python, no code from the file is ever run).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

#: idx type codes → NumPy dtypes (big-endian).
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in a gzip-compressed idx file (``[count, rows, cols]`` images or ``[count]`` labels). A file
    that is missing, not gzip, or not a whole idx array raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file {path} does not exist")
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: not a gzip-compressed idx file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: idx header says shape {shape} ({expected} bytes) but the file holds {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _unserialize(data: bytes, where: str) -> object:
    """A serialized R object (XDR, possibly gzip-compressed) as Python values, by ``rdata``."""
    try:
        import rdata
    except ImportError:
        raise ImportError("reading R data needs the 'rdata' package: pip install -e '.[compare]'") from None
    try:
        return rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))
    except Exception as error:  # rdata raises a variety of types on a corrupt stream
        raise ValueError(f"{where}: not a serialized R object ({type(error).__name__}: {error})") from None


def read_r_lazyload(data_dir: str | Path) -> dict[str, list[str]]:
    """Every character vector in the lazy-load data base ``data_dir/Rdata.{rdx,rdb}``, by name."""
    data_dir = Path(data_dir)
    index_path, base_path = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    for path in (index_path, base_path):
        if not path.is_file():
            raise FileNotFoundError(f"R lazy-load data base file {path} does not exist")
    raw_index = index_path.read_bytes()
    index = _unserialize(gzip.decompress(raw_index) if raw_index[:2] == b"\x1f\x8b" else raw_index, str(index_path))
    if not isinstance(index, dict) or "variables" not in index:
        raise ValueError(f"{index_path}: expected an R list with 'variables', got {type(index).__name__}")
    base = base_path.read_bytes()
    vectors = {}
    for name, (offset, length) in index["variables"].items():
        chunk = base[int(offset): int(offset) + int(length)]
        if len(chunk) != int(length) or len(chunk) < 4:
            raise ValueError(f"{base_path}: object {name!r} at {offset}+{length} runs past the end of the file")
        size = int.from_bytes(chunk[:4], "big")
        try:
            payload = zlib.decompress(chunk[4:])
        except zlib.error as error:
            raise ValueError(f"{base_path}: object {name!r} is not zlib data ({error})") from None
        if len(payload) != size:
            raise ValueError(f"{base_path}: object {name!r} holds {len(payload)} bytes, its header says {size}")
        value = _unserialize(payload, f"{base_path}[{name}]")
        if isinstance(value, np.ndarray) and value.dtype.kind in "US":
            vectors[str(name)] = [str(line) for line in value]
    return vectors
