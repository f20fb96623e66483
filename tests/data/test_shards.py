"""itnet_scale.data.shards: the shard-set writer and index, and the writers from real formats (on generated files)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from itnet_scale.data.meshes import Mesh, box, parse_off, sample_surface
from itnet_scale.data.shards import (
    BadShardError,
    ShardSetSummary,
    ShardSetWriter,
    index_existing_shards,
    iter_shard_samples,
    read_index,
    read_point_rows,
    split_documents,
    write_caption_shards,
    write_image_folder_shards,
    write_point_cloud_shards,
    write_text_shards,
)
from tests.corpus_fixtures import write_img2dataset_folder

UNIT_CUBE_OFF = """OFF
# a unit cube, faces as quads
8 6 12
0 0 0
1 0 0
1 1 0
0 1 0
0 0 1
1 0 1
1 1 1
0 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 4 7 3
"""


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def test_rollover_by_count_names_shards_and_indexes_them(tmp_path: Path) -> None:
    texts = [f"document number {i}: " + "word " * i for i in range(10)]
    with ShardSetWriter(tmp_path, "text", max_count=3, max_bytes=None) as writer:
        keys = [writer.write({"txt": text}) for text in texts]
    summary = writer.summary
    assert summary == ShardSetSummary(tmp_path, "text", 10, 4, summary.bytes, {})
    assert summary.describe().startswith("text: 10 samples in 4 shards")
    index = json.loads((tmp_path / "index.json").read_text())
    names = [f"shard-{i:06d}.tar" for i in range(4)]
    assert [s["name"] for s in index["shards"]] == names
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3, 1]
    assert [s["bytes"] for s in index["shards"]] == [(tmp_path / n).stat().st_size for n in names]
    assert index["samples"] == 10 and index["bytes"] == sum(s["bytes"] for s in index["shards"])
    assert index["format"] == "itnet-shards/1" and index["kind"] == "text" and index["keys"] == ["txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", *names]  # no staging left
    assert tar_members(tmp_path / names[1]) == ["000000003.txt", "000000004.txt", "000000005.txt"]
    assert keys == [f"{i:09d}" for i in range(10)]
    # read back with webdataset directly and through iter_shard_samples
    direct = list(wds.WebDataset([str(tmp_path / n) for n in names], shardshuffle=False))
    assert [s["txt"].decode() for s in direct] == texts
    assert [(s["__key__"], s["txt"].decode()) for s in iter_shard_samples(tmp_path)] == list(zip(keys, texts))
    assert read_index(tmp_path) == index


def test_rollover_by_bytes(tmp_path: Path) -> None:
    """As webdataset's ShardWriter: a new shard starts once the payload reaches max_bytes."""
    with ShardSetWriter(tmp_path, "text", prefix="wiki", max_bytes=2500) as writer:
        for i in range(8):
            writer.write({"txt": f"{i}" * 1000})
    index = read_index(tmp_path)
    assert [s["name"] for s in index["shards"]] == ["wiki-000000.tar", "wiki-000001.tar", "wiki-000002.tar"]
    assert [s["samples"] for s in index["shards"]] == [3, 3, 2]
    assert tar_members(tmp_path / "wiki-000002.tar") == ["000000006.txt", "000000007.txt"]


def test_failure_midway_leaves_no_index(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"source broke"), \
            ShardSetWriter(tmp_path, "text", max_count=2) as writer:
        for i in range(5):
            writer.write({"txt": f"sample {i}"})
        raise RuntimeError("source broke")
    # the two complete shards are in place, the open third one is gone, and there is no index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(FileNotFoundError, match=r"index\.json: no shard-set index"):
        read_index(tmp_path)


def test_existing_sets_are_kept_unless_overwrite(tmp_path: Path) -> None:
    with ShardSetWriter(tmp_path, "text", max_count=1) as writer:
        for i in range(3):
            writer.write({"txt": f"old {i}"})
    with pytest.raises(FileExistsError, match=r"already holds a shard set"):
        ShardSetWriter(tmp_path, "text")
    with ShardSetWriter(tmp_path, "text", max_count=1, overwrite=True) as writer:
        writer.write({"txt": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-000000.tar"]
    assert [s["txt"] for s in iter_shard_samples(tmp_path)] == [b"new"]


def test_writer_rejects_bad_samples_and_empty_sets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown shard-set kind 'audio'"):
        ShardSetWriter(tmp_path / "a", "audio")
    with pytest.raises(ValueError, match=r"max_count must be >= 1"):
        ShardSetWriter(tmp_path / "b", "text", max_count=0)
    with pytest.raises(ValueError, match=r"prefix 'a/b' must be"):
        ShardSetWriter(tmp_path / "c", "text", prefix="a/b")
    missing_cls = r"sample 0: a 'image' sample holds png or jpg or webp \+ cls, got members \['png'\]"
    with pytest.raises(ValueError, match=missing_cls), ShardSetWriter(tmp_path / "d", "image") as writer:
        writer.write({"png": b"..."})
    with pytest.raises(ValueError, match=r"got members \['cls', 'jpg', 'png'\]"), \
            ShardSetWriter(tmp_path / "e", "image") as writer:
        writer.write({"png": b"...", "jpg": b"...", "cls": "1"})
    with pytest.raises(TypeError, match=r"member 'cls' must be bytes or str, got int"), \
            ShardSetWriter(tmp_path / "f", "image") as writer:
        writer.write({"png": b"...", "cls": 1})
    with pytest.raises(ValueError, match=r"no samples were written \(skipped: \{'unreadable_image': 1\}\)"), \
            ShardSetWriter(tmp_path / "g", "image") as writer:
        writer.skip("unreadable_image", "x.png: broken")
    assert not (tmp_path / "g" / "index.json").exists()


def test_labelled_text_kinds_take_a_class_or_a_score(tmp_path: Path) -> None:
    with ShardSetWriter(tmp_path / "pairs", "text_pair") as writer:
        writer.write({"txt": "A plane is taking off.", "pair.txt": "An air plane is taking off.", "score": "5.0"})
        writer.write({"txt": "Gays and lesbians.", "pair.txt": "Heterosexuals.", "cls": "2"})
    index = read_index(tmp_path / "pairs")
    assert index["kind"] == "text_pair" and index["keys"] == ["cls", "pair.txt", "score", "txt"]
    assert sorted(tar_members(tmp_path / "pairs" / "shard-000000.tar")[:3]) == [
        "000000000.pair.txt", "000000000.score", "000000000.txt"]
    assert [sample["pair.txt"] for sample in iter_shard_samples(tmp_path / "pairs")] == [
        b"An air plane is taking off.", b"Heterosexuals."]
    with pytest.raises(ValueError, match=r"a 'text_pair' sample holds txt \+ pair\.txt \+ cls or score, got members "
                                         r"\['cls', 'txt'\]"), ShardSetWriter(tmp_path / "a", "text_pair") as writer:
        writer.write({"txt": "no second text", "cls": "1"})
    with pytest.raises(ValueError, match=r"a 'text_label' sample holds txt \+ cls or score, got members "
                                         r"\['cls', 'score', 'txt'\]"), \
            ShardSetWriter(tmp_path / "b", "text_label") as writer:
        writer.write({"txt": "both labels", "cls": "1", "score": "1.0"})


def make_set(directory: Path) -> dict:
    with ShardSetWriter(directory, "text", max_count=2) as writer:
        for i in range(4):
            writer.write({"txt": f"text {i}"})
    return json.loads((directory / "index.json").read_text())


@pytest.mark.parametrize(("edit", "error", "message"), [
    (lambda index, d: index.update(format="itnet-shards/0"), ValueError, r"field 'format' must be 'itnet-shards/1'"),
    (lambda index, d: index.update(kind="video"), ValueError, r"field 'kind' must be one of"),
    (lambda index, d: index.update(keys=["jpg"]), ValueError, r"field 'keys' must list members of a 'text' set"),
    (lambda index, d: index.update(samples=5), ValueError, r"field 'samples' is 5 but the shards add up to 4"),
    (lambda index, d: index.update(shards=[]), ValueError, r"field 'shards' must be a non-empty list"),
    (lambda index, d: index["shards"][0].update(name="../shard-000000.tar"), ValueError,
     r"field 'shards\[0\]\.name' must be a plain '\.tar' file name in the set's folder"),
    (lambda index, d: index["shards"][0].update(name="pipe:touch x.tar"), ValueError,
     r"field 'shards\[0\]\.name' must be a plain '\.tar' file name"),
    (lambda index, d: index.update(members={"json": 4}), ValueError,
     r"field 'members' must map every member extension \(at least \['txt'\]\)"),
    (lambda index, d: index["shards"][1].update(samples=-1), ValueError,
     r"field 'shards\[1\]\.samples' must be a non-negative integer"),
])
def test_read_index_names_what_is_wrong(tmp_path: Path, edit, error: type[Exception], message: str) -> None:
    index = make_set(tmp_path)
    edit(index, tmp_path)
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(error, match=r"index\.json: .*" + message):
        read_index(tmp_path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: (d / "shard-000001.tar").unlink(), r"shard-000001\.tar: does not exist \(index\.json lists it\)"),
    (lambda d: (d / "shard-000000.tar").write_bytes(b"x" * 100),
     r"shard-000000\.tar: has 100 bytes but its index says \d+"),
])
def test_read_index_checks_local_shards_unless_told_not_to(tmp_path: Path, edit, message: str) -> None:
    """A missing shard or one of another size is a BadShardError naming it; ``check_shards=False`` (a streaming
    reader, which skips bad shards as it meets them) reads the index all the same."""
    index = make_set(tmp_path)
    edit(tmp_path)
    with pytest.raises(BadShardError, match=message):
        read_index(tmp_path)
    assert read_index(tmp_path, check_shards=False) == index


def test_read_index_rejects_invalid_json(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / "index.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"index\.json: not valid JSON"):
        read_index(tmp_path)


def test_text_writer_splits_documents_and_skips_undecodable_files(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "corpus"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("First paragraph,\nstill first.\n\n  \t\nSecond one.\n\n\n")
    (source / "sub" / "b.txt").write_text("\n\nOnly paragraph of b.")
    (source / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    (source / "notes.md").write_text("not a text file for this writer")
    with caplog.at_level(logging.WARNING):
        summary = write_text_shards(source, tmp_path / "out", max_count=2)
    assert summary.samples == 3 and summary.shards == 2 and summary.skipped == {"undecodable_text": 1}
    assert [s["txt"].decode() for s in iter_shard_samples(tmp_path / "out")] == [
        "First paragraph,\nstill first.", "Second one.", "Only paragraph of b."]
    assert "c.txt" in caplog.text and "undecodable_text" in caplog.text
    assert read_index(tmp_path / "out")["skipped"] == {"undecodable_text": 1}
    assert split_documents("\n \n") == []
    with pytest.raises(ValueError, match=r"no \.txt files found"):
        write_text_shards(tmp_path / "out", tmp_path / "again")


def write_image(path: Path, mode: str, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(12, 10, channels), dtype=np.uint8).squeeze()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path.read_bytes()


def test_image_folder_writer_keeps_encoded_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "images"
    originals = {
        ("cat", "a.JPEG"): write_image(root / "cat" / "a.JPEG", "RGB", "JPEG", 0),
        ("cat", "b.png"): write_image(root / "cat" / "b.png", "L", "PNG", 1),
        ("dog", "c.jpg"): write_image(root / "dog" / "c.jpg", "L", "JPEG", 2),
        ("dog", "d.png"): write_image(root / "dog" / "d.png", "RGBA", "PNG", 3),
    }
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    truncated = write_image(root / "emu" / "e.png", "RGB", "PNG", 4)
    (root / "emu" / "e.png").write_bytes(truncated[: len(truncated) // 2])
    (root / "emu" / "labels.csv").write_text("x")
    with caplog.at_level(logging.WARNING):
        summary = write_image_folder_shards(root, tmp_path / "out", max_count=3)
    assert summary.samples == 4 and summary.shards == 2
    assert summary.skipped == {"unreadable_image": 2, "unsupported_file": 1}
    assert "broken.jpg" in caplog.text and "e.png" in caplog.text and "labels.csv" in caplog.text
    index = read_index(tmp_path / "out")
    assert index["classes"] == ["cat", "dog", "emu"] and index["keys"] == ["cls", "jpg", "png"]
    samples = list(iter_shard_samples(tmp_path / "out"))
    assert [s["cls"] for s in samples] == [b"0", b"0", b"1", b"1"]
    assert samples[0]["jpg"] == originals["cat", "a.JPEG"]
    assert samples[1]["png"] == originals["cat", "b.png"]
    assert samples[2]["jpg"] == originals["dog", "c.jpg"]
    # RGBA is not a stored mode: converted to RGB and re-encoded losslessly as PNG
    converted = Image.open(io.BytesIO(samples[3]["png"]))
    assert converted.mode == "RGB"
    expected = np.asarray(Image.open(root / "dog" / "d.png").convert("RGB"))
    assert np.array_equal(np.asarray(converted), expected)


def test_caption_writer_skips_bad_lines_with_their_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = tmp_path / "coco"
    first = write_image(images / "train" / "1.jpg", "RGB", "JPEG", 0)
    second = write_image(tmp_path / "elsewhere" / "2.png", "RGB", "PNG", 1)
    lines = [
        json.dumps({"image": "train/1.jpg", "caption": " A red bus on a street. "}),
        json.dumps({"image": "train/1.jpg"}),
        "{not json",
        "",
        json.dumps({"image": "train/missing.jpg", "caption": "gone"}),
        json.dumps({"image": str(tmp_path / "elsewhere" / "2.png"), "caption": "Two dogs."}),
        json.dumps(["image", "caption"]),
    ]
    listing = images / "captions.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        summary = write_caption_shards(listing, tmp_path / "out")
    assert summary.samples == 2
    assert summary.skipped == {"missing_field": 1, "bad_json": 2, "missing_image": 1}
    assert "captions.jsonl:2" in caplog.text and "caption" in caplog.text
    assert "captions.jsonl:3" in caplog.text and "captions.jsonl:5" in caplog.text
    samples = list(iter_shard_samples(tmp_path / "out"))
    assert (samples[0]["jpg"], samples[0]["txt"]) == (first, b"A red bus on a street.")
    assert (samples[1]["png"], samples[1]["txt"]) == (second, b"Two dogs.")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such caption file"):
        write_caption_shards(tmp_path / "nope.jsonl", tmp_path / "none")


def test_off_parser_and_fan_triangulation() -> None:
    mesh = parse_off(UNIT_CUBE_OFF)
    assert mesh.vertices.shape == (8, 3) and mesh.triangles.shape == (12, 3)
    assert mesh.triangle_areas().sum() == pytest.approx(6.0)
    assert mesh.triangles[:2].tolist() == [[0, 3, 2], [0, 2, 1]]  # the first quad as a fan
    quirky = parse_off("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2 255 0 0\n")  # counts on the header, face colour
    assert quirky.triangles.tolist() == [[0, 1, 2]]
    assert quirky.triangle_areas().sum() == pytest.approx(0.5)


@pytest.mark.parametrize(("text", "message"), [
    ("PLY\n", r"cube\.off: not an OFF file"),
    ("OFF\n", r"missing the 'vertices faces edges' line"),
    ("OFF\nthree 1 0\n", r"cube\.off:2: expected 'vertices faces edges' counts"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n", r"declares 3 vertices and 1 faces but has 2 data lines"),
    ("OFF\n3 1 0\n0 0 0\n1 0 x\n0 1 0\n3 0 1 2\n", r"cube\.off:4: expected a vertex"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n", r"cube\.off:6: face indexes a vertex outside 0\.\.2"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n", r"cube\.off:6: a face needs k >= 3"),
])
def test_off_parser_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_off(text, source="cube.off")


def test_surface_sampler_is_area_uniform() -> None:
    rng = np.random.default_rng(0)
    points = sample_surface(box(), 6000, rng)
    assert points.dtype == np.float32 and points.shape == (6000, 3)
    on_face = np.isclose(np.abs(points), 0.5, atol=1e-6)
    assert on_face.any(axis=1).all() and (np.abs(points) <= 0.5 + 1e-6).all()
    face_counts = [(np.isclose(points[:, axis], side * 0.5, atol=1e-6)).sum() for axis in range(3) for side in (-1, 1)]
    assert all(abs(count - 1000) < 150 for count in face_counts)
    # a long thin triangle next to a small one: samples follow the areas (9 : 1)
    mesh = Mesh.from_polygons([(0, 0, 0), (9, 0, 0), (0, 1, 0), (0, 0, 5), (1, 0, 5), (0, 1, 5)],
                              [(0, 1, 2), (3, 4, 5)])
    z = sample_surface(mesh, 5000, rng)[:, 2]
    assert (z == 0).mean() == pytest.approx(0.9, abs=0.02)
    with pytest.raises(ValueError, match=r"no surface area"):
        sample_surface(Mesh.from_polygons([(0, 0, 0), (1, 0, 0), (2, 0, 0)], [(0, 1, 2)]), 10, rng)


def test_point_cloud_writer_reads_npy_txt_and_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "modelnet"
    rng = np.random.default_rng(1)
    (root / "airplane").mkdir(parents=True)
    (root / "cube").mkdir()
    with_normals = rng.normal(size=(300, 6))
    np.save(root / "airplane" / "a.npy", with_normals)
    rows = rng.normal(size=(50, 6))
    (root / "airplane" / "b.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    (root / "airplane" / "c.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in rows[:3]))
    (root / "cube" / "unit.off").write_text(UNIT_CUBE_OFF)
    np.save(root / "cube" / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(root / "cube" / "nan.npy", np.full((10, 3), np.nan))
    np.save(root / "cube" / "flat.npy", np.zeros((10, 2)))
    (root / "cube" / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n")
    with caplog.at_level(logging.WARNING):
        summary = write_point_cloud_shards(root, tmp_path / "out", num_points=64, seed=0)
    assert summary.samples == 4 and summary.skipped == {"unreadable_points": 4}
    for name in ("objects.npy", "nan.npy", "flat.npy", "broken.off"):
        assert name in caplog.text
    index = read_index(tmp_path / "out")
    assert index["classes"] == ["airplane", "cube"] and index["num_points"] == 64
    samples = list(iter_shard_samples(tmp_path / "out"))
    clouds = [load_npy(s["npy"]) for s in samples]
    assert [s["cls"] for s in samples] == [b"0", b"0", b"0", b"1"]
    assert all(c.shape == (64, 3) and c.dtype == np.float32 for c in clouds)
    # .npy: a subset of the rows' first three columns, without repeats
    source_rows = {tuple(r) for r in with_normals[:, :3].astype(np.float32)}
    assert all(tuple(r) in source_rows for r in clouds[0]) and len({tuple(r) for r in clouds[0]}) == 64
    # comma-separated .txt with 50 rows: every row once, topped up with repeats
    assert {tuple(r) for r in clouds[1]} == {tuple(r) for r in np.round(rows[:, :3], 6).astype(np.float32)}
    assert {tuple(r) for r in clouds[2]} == {tuple(r) for r in np.round(rows[:3, :3], 6).astype(np.float32)}
    # .off: sampled on the cube's surface
    cube = clouds[3]
    assert ((cube >= -1e-6) & (cube <= 1 + 1e-6)).all()
    assert (np.isclose(cube, 0, atol=1e-6) | np.isclose(cube, 1, atol=1e-6)).any(axis=1).all()
    # without num_points stored clouds keep every point, meshes cannot be sampled
    kept = write_point_cloud_shards(root, tmp_path / "all", num_points=None)
    assert kept.samples == 3 and kept.skipped["unreadable_points"] == 5
    assert [load_npy(s["npy"]).shape for s in iter_shard_samples(tmp_path / "all")] == [(300, 3), (50, 3), (3, 3)]


def test_read_point_rows_keeps_the_columns_and_rows_asked_for(tmp_path: Path) -> None:
    """ModelNet's ``x,y,z,nx,ny,nz`` rows: all six columns, or only the first rows (of a .txt, only those parsed)."""
    rows = np.round(np.random.default_rng(2).normal(size=(40, 6)), 6)
    text = tmp_path / "chair_0001.txt"
    text.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    np.save(tmp_path / "cloud.npy", rows.astype(np.float32))
    np.testing.assert_array_equal(read_point_rows(text, 6), rows)
    np.testing.assert_array_equal(read_point_rows(text, 3, max_rows=7), rows[:7, :3])
    np.testing.assert_array_equal(read_point_rows(tmp_path / "cloud.npy", 6, max_rows=5),
                                  rows[:5].astype(np.float32).astype(np.float64))
    # a malformed row after max_rows is never parsed; within them it is an error naming the file
    text.write_text(text.read_text() + "1,2,oops,4,5,6\n")
    assert read_point_rows(text, 6, max_rows=40).shape == (40, 6)
    with pytest.raises(ValueError, match=r"chair_0001\.txt: cannot read points"):
        read_point_rows(text, 6)
    with pytest.raises(ValueError, match=r"cloud\.npy: expected points of shape \[P, >=7\], got \[40, 6\]"):
        read_point_rows(tmp_path / "cloud.npy", 7)
    with pytest.raises(ValueError, match=r"unsupported stored point-cloud suffix '\.off'"):
        read_point_rows(tmp_path / "mesh.off")


def test_point_cloud_writer_is_seeded(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    (root / "cube").mkdir(parents=True)
    (root / "cube" / "unit.off").write_text(UNIT_CUBE_OFF)
    write_point_cloud_shards(root, tmp_path / "a", num_points=32, seed=3)
    write_point_cloud_shards(root, tmp_path / "b", num_points=32, seed=3)
    write_point_cloud_shards(root, tmp_path / "c", num_points=32, seed=4)
    data = {name: (tmp_path / name / "shard-000000.tar").read_bytes() for name in "abc"}
    assert data["a"] == data["b"] and data["a"] != data["c"]


def test_class_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing: not a directory of class folders"):
        write_image_folder_shards(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"flat: no class folders"):
        write_point_cloud_shards(tmp_path / "flat", tmp_path / "out")


def test_existing_img2dataset_tars_are_indexed_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """img2dataset's folder (2 tars of 5 samples, one image as WebP, ``_stats.json`` and parquet files beside them)
    plus a third tar cut off by a killed download: the readable tars are indexed — counts, member extensions,
    per-shard sizes — the cut one is left out and logged, and no file in the folder changes."""
    folder = tmp_path / "laion"
    write_img2dataset_folder(folder, webp_keys=("000010003",))
    with wds.TarWriter(str(folder / "00002.tar")) as sink:
        sink.write({"__key__": "000020000", "jpg": b"\xff\xd8" + b"x" * 4000, "txt": "cut off", "json": "{}"})
    (folder / "00002.tar").write_bytes((folder / "00002.tar").read_bytes()[:3000])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    summary = index_existing_shards(folder, "image_text")
    assert summary == ShardSetSummary(folder, "image_text", 10, 2, summary.bytes, {"unreadable_shard": 1})
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "index.json"} == before
    index = read_index(folder)
    assert index["shards"] == [{"name": n, "samples": 5, "bytes": len(before[n])} for n in ("00000.tar", "00001.tar")]
    assert index["keys"] == ["jpg", "txt", "webp"]
    assert index["members"] == {"jpg": 9, "json": 10, "txt": 10, "webp": 1}
    assert index["samples"] == 10 and index["skipped"] == {"unreadable_shard": 1}
    assert "00002.tar: cannot be read after" in caplog.text
    assert [s["__key__"] for s in iter_shard_samples(folder)] == [f"0000{s}000{i}" for s in (0, 1) for i in range(5)]

    with pytest.raises(FileExistsError, match=r"laion/index\.json exists already; pass --overwrite"):
        index_existing_shards(folder, "image_text")
    with pytest.raises(ValueError, match=r"no sample holds cls, so this is not a 'image' set \(members found: "
                                         r"\['jpg', 'json', 'txt', 'webp'\]\)"):
        index_existing_shards(folder, "image", overwrite=True)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"none: no readable \.tar shards"):
        index_existing_shards(tmp_path / "none", "image_text")
