"""Shared by the data and tool tests: a folder of webdataset tars written the way img2dataset writes them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **({"lossless": True} if image_format == "WEBP" else {}))
    return buffer.getvalue()


def write_img2dataset_folder(directory: Path, shards: int = 2, per_shard: int = 5,
                             webp_keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """img2dataset's output layout: ``00000.tar`` … (its ``webdataset`` output format: webdataset's TarWriter with
    its default encoder), keys ``{shard:05d}{index:04d}`` with ``.jpg`` (``.webp`` for ``webp_keys``), ``.txt`` and
    ``.json`` members, and beside each tar the ``_stats.json`` and ``.parquet`` img2dataset writes. Returns the
    pixels each key's image was made from (16×16 RGB)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = {}
    for shard in range(shards):
        rows = []
        with wds.TarWriter(str(directory / f"{shard:05d}.tar")) as sink:
            for index in range(per_shard):
                key = f"{shard:05d}{index:04d}"
                ramp = np.add.outer(np.arange(16), np.arange(16))[..., None] * 3  # smooth: JPEG keeps it close
                pixels[key] = (rng.integers(0, 160, size=3) + ramp).astype(np.uint8)
                caption = f"a photo of thing number {shard * per_shard + index}"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key, "status": "success",
                        "error_message": None, "width": 16, "height": 16, "original_width": 640,
                        "original_height": 480, "exif": "{}", "sha256": f"{shard:064x}"}
                image = ("webp", encoded(pixels[key], "WEBP")) if key in webp_keys else \
                    ("jpg", encoded(pixels[key], "JPEG"))
                sink.write({"__key__": key, image[0]: image[1], "txt": caption, "json": json.dumps(meta, indent=4)})
                rows.append(meta)
        stats = {"count": per_shard, "successes": per_shard, "failed_to_download": 0, "failed_to_resize": 0,
                 "duration": 1.5, "status_dict": {"success": per_shard}}
        (directory / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))
        # The parquet file's contents are never read (only its presence matters: it is not a shard, and is left
        # alone); writing a real one would need pyarrow, so it is the format's magic bytes around the rows as JSON.
        (directory / f"{shard:05d}.parquet").write_bytes(b"PAR1" + json.dumps(rows).encode() + b"PAR1")
    return pixels
