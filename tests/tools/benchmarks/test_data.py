"""The data suite runs on a small generated image–text set and reports every reader with positive rates."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from benchmarks import SuiteUsageError, load_suite


def write_digit_pairs(directory: Path, count: int = 120, per_shard: int = 40) -> Path:
    """An image_text shard set: sklearn's digits upsampled to 32×32 RGB PNGs with captions, plus its index.json."""
    digits = load_digits()
    directory.mkdir()
    shards = []
    for start in range(0, count, per_shard):
        name = f"shard-{len(shards):06d}.tar"
        with wds.TarWriter(str(directory / name), encoder=False) as sink:
            for i in range(start, min(start + per_shard, count)):
                gray = np.kron(digits.images[i] * (255 / 16), np.ones((4, 4))).astype(np.uint8)
                rgb = np.stack([gray, 255 - gray, np.full_like(gray, 40 * (digits.target[i] % 6))], axis=-1)
                buffer = io.BytesIO()
                Image.fromarray(rgb).save(buffer, format="PNG")
                sink.write({"__key__": f"{i:06d}", "png": buffer.getvalue(),
                            "txt": f"a handwritten digit {digits.target[i]}".encode()})
        shards.append({"name": name, "samples": min(per_shard, count - start),
                       "bytes": (directory / name).stat().st_size})
    (directory / "index.json").write_text(json.dumps({
        "format": "itnet-shards/1", "kind": "image_text", "keys": ["png", "txt"], "shards": shards,
        "samples": count, "bytes": sum(s["bytes"] for s in shards)}))
    return directory


def run_suite(options: list[str]):
    suite = load_suite("data")
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    return suite.run(parser.parse_args(options))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_digit_pairs(tmp_path_factory.mktemp("bench") / "pairs")


def test_quick_run_on_given_shards(pairs):
    report = run_suite(["--shards", str(pairs), "--workers", "0", "1", "--quick"])
    rows = {row[0]: row for row in report.tables[0].rows}
    assert set(rows) == {"ceiling: bare decode loop (1 process)", "StreamingDataset, 0 worker(s)",
                         "StreamingDataset, 1 worker(s)"}
    assert all(float(rows[name][1]) > 0 and float(rows[name][2]) > 0 for name in rows)
    assert report.data["ceiling_samples_per_s"] > 0 and all(v > 0 for v in report.data["loader"].values())
    assert [t.name for t in report.targets] == ["loader ≥ 80% of the ceiling"]
    assert report.notes[-1].startswith("consumer not measured")


def test_given_consumer_rate_is_compared(pairs):
    report = run_suite(["--shards", str(pairs), "--workers", "0", "--quick", "--consumer-samples-per-s", "25"])
    rows = {row[0]: row for row in report.tables[0].rows}
    assert rows["consumer: given (--consumer-samples-per-s)"][1] == "25.0"
    assert report.data["consumer_samples_per_s"] == 25.0
    consumer_target = report.targets[-1]
    assert consumer_target.name == "loader ≥ 10× the model's consumption"
    assert consumer_target.detail.startswith(f"{report.data['loader'][0] / 25:.1f}×")
    with pytest.raises(SuiteUsageError, match=r"--consumer-samples-per-s must be > 0, got 0.0"):
        run_suite(["--shards", str(pairs), "--workers", "0", "--quick", "--consumer-samples-per-s", "0"])
