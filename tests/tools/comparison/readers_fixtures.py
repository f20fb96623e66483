"""Files in the exact formats the real data sets' packages install, for the readers of ``comparison.readers`` and
what is built on them: gzip idx files (Fashion-MNIST) and an R package's lazy-load data base (janeaustenr)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as a gzip idx file: 0, 0, type 0x08, ndim, big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_lazyload(folder: Path, vectors: dict[str, list[str]], tmp: Path) -> None:
    """``vectors`` as R's ``Rdata.rdb`` (per object: 4-byte big-endian length + zlib of its XDR serialization)
    and ``Rdata.rdx`` (the gzip-compressed serialized index of offsets and lengths). Needs the ``rdata`` package."""
    import rdata

    folder.mkdir(parents=True)
    base, variables = b"", {}
    for name, lines in vectors.items():
        rdata.write_rds(tmp / "one.rds", np.array(lines, dtype=object), compression=None)
        payload = (tmp / "one.rds").read_bytes()
        chunk = len(payload).to_bytes(4, "big") + zlib.compress(payload)
        variables[name] = np.array([len(base), len(chunk)], dtype=np.int32)
        base += chunk
    (folder / "Rdata.rdb").write_bytes(base)
    rdata.write_rds(folder / "Rdata.rdx", {"variables": variables, "references": {}, "compressed": True},
                    compression="gzip")
