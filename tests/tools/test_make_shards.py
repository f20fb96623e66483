"""tools/make_shards.py as a subprocess: each subcommand on small generated inputs prints its summary line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itnet_scale.data.shards import read_index
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.tasks.imagenet import write_imagenet_layout
from tests.corpus_fixtures import write_img2dataset_folder
from tests.modelnet40_fixtures import official_ids, write_normal_resampled
from tests.tasks.glue_fixtures import write_glue_folder

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_shards.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def load_tool():
    spec = importlib.util.spec_from_file_location("make_shards", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_as_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("one\n\ntwo\n\nthree\n\nfour\n\nfive\n")
    result = run("text", str(tmp_path / "text"), "--output", str(tmp_path / "t"), "--max-count", "2",
                 "--prefix", "docs")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"text: 5 samples in 3 shards, {read_index(tmp_path / 't')['bytes']} bytes -> " \
                                    f"{tmp_path / 't'} (skipped: none)"
    assert [s["name"] for s in read_index(tmp_path / "t")["shards"]][-1] == "docs-000002.tar"


def test_modelnet40_writes_each_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_ids, test_ids = official_ids(4, 1, classes=("bed", "range_hood"))
    write_normal_resampled(tmp_path / "data" / "modelnet40_normal_resampled", train_ids, test_ids, rows=64)
    tool = load_tool()
    assert tool.main(["modelnet40", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--num-points", "32",
                      "--validation-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    for split, samples in (("train", 6), ("validation", 2), ("test", 2)):
        assert f"points: {samples} samples in 1 shards" in out
        index = read_index(tmp_path / "out" / split)
        assert index["split"] == split and index["num_points"] == 32 and len(index["ids"]) == samples
    assert read_index(tmp_path / "out" / "test")["ids"] == test_ids
    assert tool.main(["modelnet40", str(tmp_path / "data"), "--output", str(tmp_path / "one"), "--split", "test",
                      "--num-points", "16"]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["test"]
    with pytest.raises(SystemExit):
        tool.main(["modelnet40", str(tmp_path), "--output", str(tmp_path / "bad")])
    assert "not a ModelNet40 layout" in capsys.readouterr().err


def test_images_captions_points(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                caplog: pytest.LogCaptureFixture) -> None:
    tool = load_tool()
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "img" / label / "x.jpg")
    (tmp_path / "img" / "dog" / "y.png").write_bytes(b"garbage")
    assert tool.main(["images", str(tmp_path / "img"), "--output", str(tmp_path / "i"), "--max-bytes", "1"]) == 0
    out = capsys.readouterr().out
    assert "image: 2 samples in 2 shards" in out and "(skipped: unreadable_image=1)" in out
    assert "y.png" in caplog.text

    lines = [json.dumps({"image": "img/cat/x.jpg", "caption": "a red square"}), json.dumps({"caption": "no image"})]
    (tmp_path / "caps.jsonl").write_text("\n".join(lines))
    assert tool.main(["captions", str(tmp_path / "caps.jsonl"), "--output", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "image_text: 1 samples" in out and "missing_field=1" in out and "caps.jsonl:2" in caplog.text
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "caps.jsonl").write_text(lines[0])
    assert tool.main(["captions", str(tmp_path / "elsewhere" / "caps.jsonl"), "--output", str(tmp_path / "c2"),
                      "--image-root", str(tmp_path)]) == 0
    assert "image_text: 1 samples" in capsys.readouterr().out

    (tmp_path / "pts" / "blob").mkdir(parents=True)
    np.save(tmp_path / "pts" / "blob" / "a.npy", np.random.default_rng(0).normal(size=(100, 3)))
    assert tool.main(["points", str(tmp_path / "pts"), "--output", str(tmp_path / "p"), "--num-points", "16",
                      "--seed", "1"]) == 0
    assert "points: 1 samples in 1 shards" in capsys.readouterr().out
    assert read_index(tmp_path / "p")["num_points"] == 16


def test_imagenet_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A labelled split of an ImageNet tree (flat val labelled by its CSV), the wnids as classes; a flat val without
    its CSV exits with the reason."""
    tool = load_tool()
    gray = [np.full((8, 8), 60 * c, np.uint8) for c in range(3)]
    root = write_imagenet_layout(tmp_path / "imagenet", [(gray[c], c) for c in (0, 1, 2, 2)],
                                 [(gray[c], c) for c in (1, 2)], ["n01440764", "n01443537", "n01484850"],
                                 ["tench", "goldfish", "great white shark"])
    assert tool.main(["imagenet", str(root), "--split", "validation", "--output", str(tmp_path / "v")]) == 0
    assert "image: 2 samples in 1 shards" in capsys.readouterr().out
    index = read_index(tmp_path / "v")
    assert index["classes"] == ["n01440764", "n01443537", "n01484850"] and index["split"] == "validation"
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["imagenet", str(root), "--split", "validation", "--output", str(tmp_path / "v2")])
    assert exit_info.value.code == 2 and "LOC_val_solution.csv (looked in" in capsys.readouterr().err


def test_glue_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool()
    root = write_glue_folder(tmp_path / "glue")
    assert tool.main(["glue", str(root), "--task", "qqp", "--output", str(tmp_path / "qqp"), "--max-count", "3"]) == 0
    assert "text_pair: 4 samples in 2 shards" in capsys.readouterr().out
    assert read_index(tmp_path / "qqp")["skipped"] == {"too few columns": 2}
    assert tool.main(["glue", str(root), "--task", "mnli", "--split", "validation_matched",
                      "--output", str(tmp_path / "mnli")]) == 0
    assert "text_pair: 3 samples in 1 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["glue", str(root), "--task", "sst2", "--split", "test", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "sst2's 'test' split has no labels" in capsys.readouterr().err


def test_bad_input_exits_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["images", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "nowhere: not a directory of class folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["audio", str(tmp_path), "--output", str(tmp_path / "o")])
    assert "invalid choice: 'audio'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["demo", str(tmp_path), "--output", str(tmp_path / "o")])  # demo takes no INPUT
    assert "unrecognized arguments" in capsys.readouterr().err


def test_index_existing_tars_then_check_the_set(tmp_path: Path) -> None:
    """``index DIR --kind image_text`` on img2dataset's output prints the summary and writes index.json (a second run
    refuses to replace it); ``check`` reads every shard and names a bad one (exit status 2)."""
    folder = tmp_path / "laion"
    write_img2dataset_folder(folder)
    result = run("index", str(folder), "--kind", "image_text")
    assert result.returncode == 0, result.stderr
    total = read_index(folder)["bytes"]
    assert result.stdout.strip() == f"image_text: 10 samples in 2 shards, {total} bytes -> {folder} (skipped: none)"
    again = run("index", str(folder), "--kind", "image_text")
    assert again.returncode == 2 and "index.json exists already; pass --overwrite" in again.stderr
    assert run("index", str(folder), "--kind", "image_text", "--overwrite").returncode == 0

    checked = run("check", str(folder))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{folder}: image_text, 10 samples in 2 shards, {total} bytes: every shard " \
                                     "reads as its index says"
    shard = folder / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    checked = run("check", str(folder))
    assert checked.returncode == 2
    assert f"1 of 2 shards are bad:\n  {shard}: has 1000 bytes but its index says" in checked.stderr
    refused = run("check", f"pipe:cat {folder}/{{name}}")
    assert refused.returncode == 2 and "pass --allow_pipe_urls" in refused.stderr
    allowed = run("check", f"pipe:cat {folder}/{{name}}", "--allow_pipe_urls")
    assert allowed.returncode == 2 and "00001.tar: cannot be read after 1000 bytes" in allowed.stderr


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    result = run("demo", "--output", str(tmp_path), "--num-points", "128", "--shard-samples", "500")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"tokenizer -> {tmp_path / 'tokenizer'}"
    sets = ["text", "image", "image_text", "points"]
    assert [line.split(":")[0] for line in lines[1:]] == sets * 2  # the training sets, then the held-out ones
    assert "image: 1437 samples in 3 shards" in result.stdout and "points: 540 samples in 2 shards" in result.stdout
    assert any(line.startswith("image: 360 samples in 1 shards") and line.split(" -> ")[1].startswith(
        str(tmp_path / "heldout" / "image")) for line in lines)
    assert Tokenizer.from_dir(tmp_path / "tokenizer").vocab_size == 3000
