"""itnet_scale.data.demo: the embedded demo sets hold the real digits, captions, shapes and text, reproducibly, and
held-out sets that share no sample with them."""

from __future__ import annotations

import hashlib
import io
import re
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from itnet_scale.data.demo import (
    CAPTION_TEMPLATES,
    DEMO_SETS,
    DIGIT_NAMES,
    HELDOUT_SETS,
    build_demo_data,
    digit_images,
    shape_point_cloud,
)
from itnet_scale.data.meshes import SHAPES
from itnet_scale.data.shards import iter_shard_samples, read_index
from itnet_scale.data.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer_config

SMALL = {"samples_per_kind": 90, "point_clouds_per_class": 15, "num_points": 1024, "shard_samples": 25,
         "tokenizer": TokenizerConfig(vocab_size=400)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_demo_data(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_four_sets_with_several_shards_and_their_heldout_sets(demo: dict[str, Path]) -> None:
    assert set(demo) == {*DEMO_SETS, *HELDOUT_SETS, "tokenizer"}
    expected_keys = {"text": ["txt"], "image": ["cls", "png"], "image_text": ["png", "txt"], "points": ["cls", "npy"]}
    # 90 of each kind (the points: 15 per shape, less the held-out 10%); held out: 5% of the paragraphs, 20% of
    # the digits, 10% of the point clouds, in proportion to the cap
    training = {"text": 90, "image": 90, "image_text": 90, "points": 81}
    heldout = {"text": 5, "image": 18, "image_text": 18, "points": 9}
    for name in DEMO_SETS:
        for folder, samples in ((demo[name], training[name]), (demo[f"heldout/{name}"], heldout[name])):
            index = read_index(folder)
            assert index["kind"] == name and index["keys"] == expected_keys[name]
            assert index["samples"] == samples and index["skipped"] == {}
    assert [s["samples"] for s in read_index(demo["text"])["shards"]] == [25, 25, 25, 15]


def test_text_is_pydoc_paragraphs(demo: dict[str, Path]) -> None:
    texts = [s["txt"].decode("utf-8") for s in iter_shard_samples(demo["text"])]
    corpus = "\n".join(topics.values())
    assert all(text in corpus for text in texts)
    assert len(set(texts)) > 80 and all(text == text.strip() and text for text in texts)


def upsampled_digits() -> dict[bytes, int]:
    """Every digit's pixels (bilinear 8 -> 32), as bytes, → its index in ``load_digits`` (all differ)."""
    small = np.round(load_digits().images * 255.0 / 16.0).astype(np.uint8)
    large = [np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR)) for image in small]
    return {image.tobytes(): i for i, image in enumerate(large)}


def test_digit_patches_have_texture_for_masked_patch_modeling() -> None:
    """Bilinear upsampling: a 4×4 patch with ink is not one flat value (its normalized target would be all 0)."""
    patches = digit_images(32)[0][:50].reshape(50, 8, 4, 8, 4).transpose(0, 1, 3, 2, 4).reshape(50, 64, 16)
    inked = patches.max(-1) > 0
    flat = patches.min(-1) == patches.max(-1)
    assert (flat & inked).sum() < 0.1 * inked.sum()


def digit_indices(folder: Path) -> list[int]:
    """The ``load_digits`` index of every image of a digit shard set (KeyError: an image that is no digit)."""
    digits = upsampled_digits()
    return [digits[np.asarray(Image.open(io.BytesIO(s["png"]))).tobytes()] for s in iter_shard_samples(folder)]


def test_images_decode_to_the_digits_and_the_heldout_ones_are_never_trained_on(demo: dict[str, Path]) -> None:
    targets = load_digits().target
    for name in ("image", "heldout/image"):
        samples = list(iter_shard_samples(demo[name]))
        for sample, index in zip(samples, digit_indices(demo[name]), strict=True):
            image = Image.open(io.BytesIO(sample["png"]))
            assert image.format == "PNG" and image.mode == "L" and image.size == (32, 32)
            assert int(sample["cls"]) == targets[index]
        assert read_index(demo[name])["classes"] == [str(d) for d in range(10)]
    trained = set(digit_indices(demo["image"])) | set(digit_indices(demo["image_text"]))
    heldout = set(digit_indices(demo["heldout/image"]))
    assert heldout == set(digit_indices(demo["heldout/image_text"])) and len(heldout) == 18
    assert not trained & heldout
    texts = {s["txt"] for s in iter_shard_samples(demo["text"])}
    assert not texts & {s["txt"] for s in iter_shard_samples(demo["heldout/text"])}


def test_captions_mention_the_right_digit(demo: dict[str, Path]) -> None:
    targets = load_digits().target
    samples = list(iter_shard_samples(demo["image_text"]))
    used_templates = set()
    for sample, index in zip(samples, digit_indices(demo["image_text"]), strict=True):
        caption = sample["txt"].decode()
        words = set(re.findall(r"\w+", caption))
        digit = int(targets[index])
        assert DIGIT_NAMES[digit] in words or str(digit) in words
        mentioned = {d for d in range(10) if DIGIT_NAMES[d] in words or str(d) in words}
        assert mentioned == {digit}, caption
        used_templates |= {t for t in CAPTION_TEMPLATES
                           if caption == t.format(name=DIGIT_NAMES[digit], numeral=digit)}
    assert len(used_templates) >= 4  # chosen among several templates, names and numerals both appear


def whitened_radius_histogram(points: np.ndarray) -> np.ndarray:
    """A feature invariant to any linear map of the shape: the histogram of radii after whitening."""
    centred = points - points.mean(0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    radii = np.linalg.norm(centred @ vectors / np.sqrt(values), axis=1)
    return np.histogram(radii, bins=12, range=(0.0, 3.0))[0] / len(points)


def test_point_clouds_have_the_shape_and_differ_by_class(demo: dict[str, Path]) -> None:
    samples = list(iter_shard_samples(demo["points"]))
    clouds = [np.load(io.BytesIO(s["npy"]), allow_pickle=False) for s in samples]
    labels = np.array([int(s["cls"]) for s in samples])
    assert all(c.shape == (1024, 3) and c.dtype == np.float32 for c in clouds)
    heldout = np.array([int(s["cls"]) for s in iter_shard_samples(demo["heldout/points"])])
    assert (np.bincount(labels, minlength=len(SHAPES)) + np.bincount(heldout, minlength=len(SHAPES))).tolist() == \
        [15] * len(SHAPES)
    assert read_index(demo["points"])["classes"] == list(SHAPES)
    # random scale and rotation per sample: two boxes differ ...
    boxes = [c for c, label in zip(clouds, labels) if label == 0]
    assert not np.allclose(np.sort(np.abs(boxes[0]).max(0)), np.sort(np.abs(boxes[1]).max(0)), atol=1e-2)
    # ... yet the class shows through any linear map: leave-one-out nearest neighbour on invariant features
    features = np.stack([whitened_radius_histogram(c) for c in clouds])
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    accuracy = (labels[distances.argmin(1)] == labels).mean()
    assert accuracy > 0.9


def test_a_shape_cloud_with_normals_is_the_same_cloud_plus_the_transformed_surfaces_unit_normals() -> None:
    plain = shape_point_cloud("box", 500, np.random.default_rng(3))
    cloud = shape_point_cloud("box", 500, np.random.default_rng(3), normals=True)
    assert cloud.shape == (500, 6) and cloud.dtype == np.float32
    np.testing.assert_array_equal(cloud[:, :3], plain)  # the same draws: the flag adds columns only
    np.testing.assert_allclose(np.linalg.norm(cloud[:, 3:], axis=1), 1.0, atol=1e-5)
    # a box (scaled, rotated) has six faces: the normals take six directions, opposite in pairs
    directions = np.unique(np.round(cloud[:, 3:], 3), axis=0)
    assert len(directions) == 6
    np.testing.assert_allclose(np.sort(directions.sum(0)), 0.0, atol=1e-2)


def test_tokenizer_is_trained_on_text_and_captions(demo: dict[str, Path]) -> None:
    tokenizer = Tokenizer.from_dir(demo["tokenizer"])
    assert tokenizer.vocab_size == 400 and tokenizer.pad_id == 0 and tokenizer.point_id == 6
    caption = next(iter_shard_samples(demo["image_text"]))["txt"].decode()
    ids = tokenizer.encode(caption)
    assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == caption
    inputs = load_tokenizer_config(demo["tokenizer"] / "tokenizer.yaml").inputs
    assert [Path(p).name for p in inputs] == ["text", "image_text"]


def test_rebuild_with_the_same_seed_is_byte_identical(demo: dict[str, Path], tmp_path: Path) -> None:
    out_dir = demo["text"].parent
    before = file_digests(out_dir)
    build_demo_data(out_dir, seed=0, overwrite=True, **SMALL)
    assert file_digests(out_dir) == before
    other = build_demo_data(tmp_path / "seed1", seed=1, **SMALL)
    after = file_digests(tmp_path / "seed1")
    changed = {name for name in (*DEMO_SETS, *HELDOUT_SETS)
               if before[f"{name}/shard-000000.tar"] != after[f"{name}/shard-000000.tar"]}
    assert changed == {*DEMO_SETS, *HELDOUT_SETS}  # the held-out split too depends on the seed
    assert other["tokenizer"].is_dir()


def test_existing_demo_is_kept_unless_overwrite(demo: dict[str, Path]) -> None:
    with pytest.raises(FileExistsError, match=r"text already holds a shard set"):
        build_demo_data(demo["text"].parent, **SMALL)


def test_without_scikit_learn_the_error_names_the_extra_and_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # as if scikit-learn were not installed
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'itnet_scale[demo]'")):
        build_demo_data(tmp_path / "demo", **SMALL)
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_full_default_build(tmp_path: Path) -> None:
    """The default build (what the CPU demo uses): every paragraph and digit, 600 shapes, the 3000-piece vocabulary."""
    folders = build_demo_data(tmp_path)
    counts = {name: read_index(folders[name])["samples"] + read_index(folders[f"heldout/{name}"])["samples"]
              for name in DEMO_SETS}
    assert counts == {"text": len([p for t in topics.values() for p in re.split(r"\n\s*\n", t) if p.strip()]),
                      "image": 1797, "image_text": 1797, "points": 600}
    assert read_index(folders["heldout/image"])["samples"] == 360  # 20% of the digits
    assert all(len(read_index(folders[name])["shards"]) >= 3 for name in DEMO_SETS)
    assert Tokenizer.from_dir(folders["tokenizer"]).vocab_size == TokenizerConfig().vocab_size == 3000
