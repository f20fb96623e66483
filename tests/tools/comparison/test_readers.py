"""The real data sets' readers on fixtures written in the exact formats their packages install: gzip idx files
(Fashion-MNIST) and an R package's lazy-load data base (janeaustenr), and the tasks built from them."""

import gzip

import numpy as np
import pytest

from comparison.readers import read_idx, read_r_lazyload
from comparison.tasks import AUSTEN_NOVELS, FASHION_FILES, TaskSizes, build_task
from tests.tools.comparison.readers_fixtures import write_idx, write_lazyload

rdata = pytest.importorskip("rdata")


def test_read_idx_round_trips_images_and_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", np.arange(5, dtype=np.uint8))
    assert (read_idx(tmp_path / "images.gz") == images).all()
    assert read_idx(tmp_path / "labels.gz").tolist() == [0, 1, 2, 3, 4]


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "plain").write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(ValueError, match="not a gzip-compressed idx"):
        read_idx(tmp_path / "plain")
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "magic.gz")
    write_idx(tmp_path / "short.gz", np.zeros((2, 3), np.uint8))
    (tmp_path / "short.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "short.gz").read_bytes())[:-1]))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(FileNotFoundError, match=r"missing\.gz"):
        read_idx(tmp_path / "missing.gz")


def test_fashion_mnist_task_from_idx_fixtures(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for split, count in (("train", 40), ("test", 20)):
        write_idx(folder / FASHION_FILES[f"{split}_images"], rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / FASHION_FILES[f"{split}_labels"], rng.integers(0, 10, count))
    task = build_task("fashion-mnist", TaskSizes(train=24, val=16, test=12), tmp_path)
    assert task.train.inputs.shape == (24, 1, 14, 14) and len(task.val) == 16 and len(task.test) == 12
    assert float(task.train.inputs.min()) >= 0.0 and float(task.train.inputs.max()) <= 1.0


def test_r_lazyload_reader_and_austen_task(tmp_path):
    sentence = "{name} said that the weather was {i} times finer than it had been."
    vectors = {name: ["CHAPTER 1", ""] + [sentence.format(name=name.title(), i=i) for i in range(20)]
               for name in AUSTEN_NOVELS}
    folder = tmp_path / "janeaustenr" / "data"
    write_lazyload(folder, vectors, tmp_path)
    assert read_r_lazyload(folder) == vectors
    task = build_task("austen", TaskSizes(train=48, val=24, test=24), tmp_path)
    assert task.train.inputs.shape == (48, 40) and task.classes == 6
    first = task.texts["train"][0]
    assert AUSTEN_NOVELS[int(task.train.targets[0])].title() in first  # each sentence keeps its novel's label


def test_r_lazyload_reader_rejects_a_corrupt_base(tmp_path):
    folder = tmp_path / "data"
    write_lazyload(folder, {"emma": ["a line"]}, tmp_path)
    (folder / "Rdata.rdb").write_bytes(b"\x00\x00\x00\x10garbage")
    with pytest.raises(ValueError, match=r"runs past the end|not zlib"):
        read_r_lazyload(folder)
