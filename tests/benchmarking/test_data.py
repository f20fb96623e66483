"""The data suite runs on a small generated image–text set and reports every reader with positive rates."""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from itnet_scale.benchmarking import load_suite
from itnet_scale.data.demo import digit_caption, digit_images
from itnet_scale.data.shards import ShardSetWriter


def test_quick_run_on_given_shards(tmp_path):
    images, labels = digit_images(16)
    rng = np.random.default_rng(0)
    with ShardSetWriter(tmp_path / "pairs", "image_text", max_count=40, max_bytes=None) as writer:
        for image, label in zip(images[:120], labels[:120]):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            writer.write({"png": buffer.getvalue(), "txt": digit_caption(int(label), rng)})
    suite = load_suite("data")
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    report = suite.run(parser.parse_args(["--shards", str(tmp_path / "pairs"), "--workers", "0", "1",
                                          "--repeats", "1"]))
    rows = {row[0]: row for row in report.tables[0].rows}
    assert set(rows) == {"ceiling: bare decode loop (1 process)", "StreamingDataset, 0 worker(s)",
                         "StreamingDataset, 1 worker(s)"}
    assert report.data["ceiling_samples_per_s"] > 0 and all(v > 0 for v in report.data["loader"].values())
    assert [t.name for t in report.targets] == ["loader ≥ 80% of the ceiling"]
    assert report.notes == ["consumer not measured (no tokenizer: give --tokenizer, or run without --shards)"]
