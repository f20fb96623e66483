"""ModelNet40 on its three archives written in their exact formats: layouts, points, splits, metrics, voting,
submission and shards."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from itnet_scale.data.meshes import read_off, sample_surface
from itnet_scale.data.shards import read_index, read_shard, shard_files
from itnet_scale.nn.encoders import farthest_point_sampling
from itnet_scale.tasks import BENCHMARKS, get_benchmark, metrics
from itnet_scale.tasks.modelnet40 import (
    SHAPE_NAMES,
    VOTE_SCALE_RANGE,
    ModelNet40,
    ModelNet40Settings,
    farthest_point_indices,
    find_layout,
    normalize_to_unit_sphere,
    validation_mask,
    vote,
    write_modelnet40_shards,
)
from tests.modelnet40_fixtures import class_of, official_ids, write_hdf5, write_normal_resampled, write_raw_off

TRAIN_IDS, TEST_IDS = official_ids(train_per_class=6, test_per_class=2)
ARCHIVES = {"normal_resampled": "modelnet40_normal_resampled", "hdf5": "modelnet40_ply_hdf5_2048",
            "off": "ModelNet40"}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the three archives side by side, under their own names."""
    root = tmp_path_factory.mktemp("modelnet40")
    write_normal_resampled(root / ARCHIVES["normal_resampled"], TRAIN_IDS, TEST_IDS)
    write_hdf5(root / ARCHIVES["hdf5"], TRAIN_IDS, TEST_IDS)
    write_raw_off(root / ARCHIVES["off"], TRAIN_IDS, TEST_IDS)
    return root


def label_of(shape_id: str) -> int:
    return SHAPE_NAMES.index(class_of(shape_id))


def stored_rows(folder: Path, shape_id: str) -> np.ndarray:
    return np.loadtxt(folder / class_of(shape_id) / f"{shape_id}.txt", delimiter=",")


def test_registered_with_its_classes_and_metric() -> None:
    benchmark = get_benchmark("modelnet40")
    assert isinstance(benchmark, ModelNet40) and BENCHMARKS["modelnet40"] is benchmark
    assert benchmark.modality == "points" and benchmark.num_outputs == 40 and not benchmark.regression
    assert len(set(SHAPE_NAMES)) == 40 and list(SHAPE_NAMES) == sorted(SHAPE_NAMES)
    assert benchmark.label_names[15] == "flower_pot" and benchmark.primary_metric == "overall_accuracy"
    assert benchmark.settings == ModelNet40Settings()


# --- The three layouts ----------------------------------------------------------------------------------------


def test_normal_resampled_takes_the_first_points_normalized(archives: Path) -> None:
    folder = archives / ARCHIVES["normal_resampled"]
    test = ModelNet40().read(folder, "test")
    assert [e.id for e in test.examples] == TEST_IDS and test.skipped == {}
    assert test.labels().tolist() == [label_of(i) for i in TEST_IDS]
    assert test.labels().tolist()[2:4] == [SHAPE_NAMES.index("flower_pot")] * 2  # an underscore in the class
    for example in test.examples:
        points = example.inputs["points"]
        assert points.dtype == np.float32 and points.shape == (1024, 3)
        np.testing.assert_allclose(points.mean(0), 0, atol=1e-5)
        assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    stored = stored_rows(folder, TEST_IDS[0])
    expected = stored[:1024, :3] - stored[:1024, :3].mean(0)
    np.testing.assert_allclose(test.examples[0].inputs["points"], expected / np.linalg.norm(expected, axis=1).max(),
                               rtol=1e-5, atol=1e-6)
    # with normals: the stored ones, after the normalized xyz
    with_normals = ModelNet40(ModelNet40Settings(normals=True, num_points=512)).read(folder, "test").examples[0]
    assert with_normals.inputs["points"].shape == (512, 6)
    np.testing.assert_allclose(with_normals.inputs["points"][:, 3:], stored[:512, 3:], atol=1e-6)


def test_farthest_point_indices_match_the_encoders_sampler() -> None:
    """The reader's numpy loop picks what the model's batched sampler picks."""
    cloud = np.random.default_rng(4).normal(size=(3000, 6)) * [1.0, 2.0, 0.5, 1, 1, 1]
    ours = farthest_point_indices(cloud, 200)
    theirs = farthest_point_sampling(torch.from_numpy(cloud[None, :, :3]), 200)[0].numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours[0] == 0 and len(set(ours.tolist())) == 200
    with pytest.raises(ValueError, match=r"cannot pick 3001 farthest points from a cloud of 3000"):
        farthest_point_indices(cloud, 3001)


def test_farthest_point_sampling_over_the_whole_cloud(archives: Path) -> None:
    folder = archives / ARCHIVES["normal_resampled"]
    settings = ModelNet40Settings(num_points=256, sampling="farthest")
    example = ModelNet40(settings).read(folder, "test").examples[5]
    stored = stored_rows(folder, example.id)[:, :3]
    chosen = farthest_point_indices(stored, 256)
    np.testing.assert_allclose(example.inputs["points"], normalize_to_unit_sphere(stored[chosen]), atol=1e-6)

    def reach(rows: np.ndarray) -> float:
        """The farthest any stored point is from its nearest chosen point."""
        return float(np.sqrt(((stored[:, None] - rows[None]) ** 2).sum(-1)).min(1).max())

    assert reach(stored[chosen]) < 0.6 * reach(stored[:256])  # why one would pick it: it covers the shape


def test_hdf5_rows_with_ids_from_the_id2file_lists(archives: Path) -> None:
    folder = archives / ARCHIVES["hdf5"]
    train = ModelNet40(ModelNet40Settings(normals=True)).read(folder, "train")
    test = ModelNet40(ModelNet40Settings(normals=True)).read(folder, "test")
    assert sorted(e.id for e in test.examples) == sorted(TEST_IDS)
    assert all(e.label == label_of(e.id) for e in [*train.examples, *test.examples])
    with h5py.File(folder / "ply_data_test0.h5") as file:  # the examples are the file's rows, in order
        data, normal = file["data"][()], file["normal"][()]
    ids = json.loads((folder / "ply_data_test_0_id2file.json").read_text())
    assert [e.id for e in test.examples] == [Path(name).stem for name in ids]
    for row in (0, len(ids) - 1):
        points = test.examples[row].inputs["points"]
        assert points.dtype == np.float32 and points.shape == (1024, 6)
        np.testing.assert_allclose(points[:, :3], normalize_to_unit_sphere(data[row, :1024].astype(np.float64)),
                                   atol=1e-6)
        np.testing.assert_array_equal(points[:, 3:], normal[row, :1024])


def test_raw_meshes_with_the_archive_quirks_are_sampled_per_shape(archives: Path) -> None:
    folder = archives / ARCHIVES["off"]
    train = ModelNet40(ModelNet40Settings(validation_fraction=0.5)).read(folder, "train")
    test = ModelNet40().read(folder, "test")
    assert [e.id for e in test.examples] == TEST_IDS  # sorted class folders, sorted files
    first_lines = {(folder / class_of(i) / split / f"{i}.off").read_text().split("\n", 1)[0]
                   for split, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)) for i in ids}
    assert {"OFF", "COFF"} <= first_lines and any(line.startswith("OFF") and line[3:] for line in first_lines)
    assert any(line.startswith("#") for i in TEST_IDS
               for line in (folder / class_of(i) / "test" / f"{i}.off").read_text().splitlines())
    for example in [*train.examples, *test.examples]:
        path = folder / class_of(example.id) / ("test" if example.id in TEST_IDS else "train") / f"{example.id}.off"
        rng = np.random.default_rng([0, zlib.crc32(example.id.encode())])  # the seed and the id, nothing else
        expected = normalize_to_unit_sphere(sample_surface(read_off(path), 1024, rng))
        np.testing.assert_array_equal(example.inputs["points"], expected)
    other_seed = ModelNet40(ModelNet40Settings(seed=1)).read(folder, "test")
    assert not np.array_equal(other_seed.examples[0].inputs["points"], test.examples[0].inputs["points"])
    with_normals = ModelNet40(ModelNet40Settings(normals=True, num_points=64)).read(folder, "test").examples[0]
    np.testing.assert_allclose(np.linalg.norm(with_normals.inputs["points"][:, 3:], axis=1), 1.0, rtol=1e-6)


def test_raw_meshes_skip_stray_files_and_refuse_unknown_classes(tmp_path: Path) -> None:
    train_ids, test_ids = official_ids(2, 1, classes=("night_stand",))
    folder = write_raw_off(tmp_path / "ModelNet40", train_ids, test_ids)
    (folder / "night_stand" / "train" / "notes.txt").write_text("not a mesh\n")
    (folder / "night_stand" / "train" / ".DS_Store").write_bytes(b"\0\0")
    read = ModelNet40(ModelNet40Settings(num_points=32)).read(tmp_path, "train")  # the archive under the root
    assert len(read.examples) == 1 and read.skipped == {"not an .off file": 1}
    (folder / "night_stand" / "test" / "night_stand_0003.off").write_text("OFF\n3 1 0\n0 0 0\n")
    with pytest.raises(ValueError, match=r"night_stand_0003\.off: declares 3 vertices and 1 faces"):
        ModelNet40().read(folder, "test")
    (folder / "__MACOSX").mkdir()
    assert ModelNet40(ModelNet40Settings(num_points=32)).read(folder, "train").skipped == {
        "not an .off file": 1, "not a class folder": 1}
    (folder / "bookcase" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"bookcase: holds train/ meshes but is not one of ModelNet40's 40 classes"):
        ModelNet40().read(folder, "train")


# --- Layout detection -----------------------------------------------------------------------------------------


def test_each_archive_is_found_at_or_under_the_root(archives: Path, tmp_path: Path) -> None:
    for layout, name in ARCHIVES.items():
        assert find_layout(archives / name) == (layout, archives / name)
        assert find_layout(archives, layout) == (layout, archives / name)
    alone = tmp_path / "data"
    shutil.copytree(archives / ARCHIVES["normal_resampled"], alone / ARCHIVES["normal_resampled"])
    assert find_layout(alone) == ("normal_resampled", alone / ARCHIVES["normal_resampled"])


def test_an_ambiguous_root_names_what_it_holds(archives: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ambiguous ModelNet40 root.*normal_resampled at .*modelnet40_normal_resampled"
                                         r"; hdf5 at .*modelnet40_ply_hdf5_2048; off at .*ModelNet40"):
        ModelNet40().read(archives, "test")
    mixed = tmp_path / "mixed"
    shutil.copytree(archives / ARCHIVES["normal_resampled"], mixed)
    shutil.copy(archives / ARCHIVES["hdf5"] / "ply_data_test0.h5", mixed)
    with pytest.raises(ValueError, match=r"ambiguous.*normal_resampled at .*mixed; hdf5 at .*mixed"):
        find_layout(mixed)
    assert find_layout(mixed, "normal_resampled") == ("normal_resampled", mixed)
    picked = ModelNet40(ModelNet40Settings(layout="hdf5", num_points=16)).read(archives, "test")
    assert sorted(e.id for e in picked.examples) == sorted(TEST_IDS)


def test_an_unknown_root_names_what_it_holds(archives: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "readme.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"not a ModelNet40 layout .*found: images/, readme\.txt"):
        ModelNet40().read(tmp_path, "train")
    with pytest.raises(ValueError, match=r"not the 'hdf5' ModelNet40 layout"):
        find_layout(archives / ARCHIVES["off"], "hdf5")
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such ModelNet40 folder"):
        find_layout(tmp_path / "nowhere")


# --- Splits ---------------------------------------------------------------------------------------------------


def test_validation_is_carved_from_train_per_class_with_a_seed(archives: Path) -> None:
    folder = archives / ARCHIVES["normal_resampled"]
    benchmark = ModelNet40(ModelNet40Settings(num_points=8, validation_fraction=0.3))
    splits = {name: [e.id for e in benchmark.read(folder, name).examples] for name in ("train", "validation", "test")}
    assert splits["test"] == TEST_IDS
    assert not set(splits["train"]) & set(splits["validation"])
    assert sorted(splits["train"] + splits["validation"]) == sorted(TRAIN_IDS)
    assert [class_of(i) for i in splits["validation"]] == [c for c in ("airplane", "flower_pot", "night_stand",
                                                                        "tv_stand") for _ in range(2)]  # 0.3 · 6
    assert splits["train"] == [i for i in TRAIN_IDS if i in splits["train"]]  # file order kept
    again = [e.id for e in benchmark.read(folder, "validation").examples]
    reseeded = ModelNet40(ModelNet40Settings(num_points=8, validation_fraction=0.3, seed=1)).read(folder, "validation")
    assert again == splits["validation"] and [e.id for e in reseeded.examples] != splits["validation"]
    # the draw depends on the ids alone: every archive holds out the same shapes
    for layout in ("hdf5", "off"):
        other = ModelNet40(ModelNet40Settings(num_points=8, validation_fraction=0.3)).read(
            archives / ARCHIVES[layout], "validation")
        assert sorted(e.id for e in other.examples) == sorted(splits["validation"])


def test_validation_mask_counts_and_order_independence() -> None:
    ids = [f"chair_{i:04d}" for i in range(1, 890)] + [f"bowl_{i:04d}" for i in range(1, 65)] + ["cup_0001"]
    labels = [8] * 889 + [6] * 64 + [10]
    mask = validation_mask(labels, ids, 0.1, seed=3)
    held = {ids[i] for i in np.flatnonzero(mask)}
    assert sum(i.startswith("chair") for i in held) == 89 and sum(i.startswith("bowl") for i in held) == 6
    assert "cup_0001" not in held  # a class of one shape stays in train
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = validation_mask([labels[i] for i in order], [ids[i] for i in order], 0.1, seed=3)
    assert {ids[order[i]] for i in np.flatnonzero(shuffled)} == held
    assert validation_mask([1, 1], ["a_1", "a_2"], 0.01, seed=0).sum() == 1  # at least one of a class of two
    assert validation_mask([1, 1], ["a_1", "a_2"], 0.99, seed=0).sum() == 1  # and never all of it


# --- Bad input ------------------------------------------------------------------------------------------------


def small_resampled(tmp_path: Path, rows: int = 40) -> Path:
    train_ids, test_ids = official_ids(2, 1, classes=("glass_box", "range_hood"))
    return write_normal_resampled(tmp_path / "modelnet40_normal_resampled", train_ids, test_ids, rows=rows)


def test_normal_resampled_errors_name_the_file(tmp_path: Path) -> None:
    folder = small_resampled(tmp_path)
    small = ModelNet40(ModelNet40Settings(num_points=32))
    assert [e.id for e in small.read(folder, "test").examples] == ["glass_box_0003", "range_hood_0003"]
    with pytest.raises(ValueError, match=r"shape glass_box_0003: holds 40 points, fewer than modelnet40\.num_points"
                                         r"=1024"):
        ModelNet40().read(folder, "test")
    with pytest.raises(ValueError, match=r"modelnet40 has splits \('train', 'validation', 'test'\), not 'val'"):
        small.read(folder, "val")
    (folder / "range_hood" / "range_hood_0003.txt").write_text("0.1,0.2\n" * 40)
    with pytest.raises(ValueError, match=r"range_hood_0003\.txt: expected points of shape \[P, >=3\], got \[32, 2\]"):
        small.read(folder, "test")
    (folder / "range_hood" / "range_hood_0003.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"range_hood_0003\.txt: missing \(modelnet40_test\.txt line 2 "
                                                r"lists range_hood_0003\)"):
        small.read(folder, "test")
    (folder / "modelnet40_test.txt").write_text("glass_box_0003\nrangehood\n")
    with pytest.raises(ValueError, match=r"modelnet40_test\.txt:2: 'rangehood' is not a ModelNet40 shape id"):
        small.read(folder, "test")
    (folder / "modelnet40_test.txt").write_text("glass_box_0003\nglass_box_0003\n")
    with pytest.raises(ValueError, match=r"shape id 'glass_box_0003' appears 2 times"):
        small.read(folder, "test")
    (folder / "modelnet40_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"modelnet40_test\.txt: missing"):
        small.read(folder, "test")
    (folder / "modelnet40_shape_names.txt").write_text((folder / "modelnet10_shape_names.txt").read_text())
    with pytest.raises(ValueError, match=r"modelnet40_shape_names\.txt: not ModelNet40's 40 classes \(10 names; "
                                         r"name 1 is 'bathtub', expected 'airplane'\)"):
        small.read(folder, "train")


def test_every_point_the_same_is_an_error(tmp_path: Path) -> None:
    folder = small_resampled(tmp_path)
    (folder / "glass_box" / "glass_box_0003.txt").write_text("0.5,0.5,0.5,0,0,1\n" * 40)
    with pytest.raises(ValueError, match=r"shape glass_box_0003: every point is the same point"):
        ModelNet40(ModelNet40Settings(num_points=32)).read(folder, "test")


def small_hdf5(tmp_path: Path, **options: object) -> Path:
    train_ids, test_ids = official_ids(2, 2, classes=("cup", "xbox"))
    return write_hdf5(tmp_path / "modelnet40_ply_hdf5_2048", train_ids, test_ids, **options)


def test_hdf5_without_id_lists_names_rows_by_file(tmp_path: Path) -> None:
    folder = small_hdf5(tmp_path, id_files=False)
    test = ModelNet40(ModelNet40Settings(num_points=16)).read(folder, "test")
    assert [e.id for e in test.examples] == [f"ply_data_test0.h5#{row}" for row in range(4)]
    assert sorted(test.labels().tolist()) == [SHAPE_NAMES.index("cup")] * 2 + [SHAPE_NAMES.index("xbox")] * 2


def test_hdf5_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = small_hdf5(tmp_path)
    small = ModelNet40(ModelNet40Settings(num_points=16))
    ids = json.loads((folder / "ply_data_test_0_id2file.json").read_text())
    (folder / "ply_data_test_0_id2file.json").write_text(json.dumps(ids[:3]))
    with pytest.raises(ValueError, match=r"ply_data_test_0_id2file\.json: expected a list of 4 shape files \(one per "
                                         r"row of ply_data_test0\.h5\), got 3"):
        small.read(folder, "test")
    swapped = ["xbox/xbox_0003.ply" if name.startswith("cup") else "cup/cup_0003.ply" for name in ids]
    (folder / "ply_data_test_0_id2file.json").write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match=r"ply_data_test_0_id2file\.json: entry 0 is '.*' but row 0 of "
                                         r"ply_data_test0\.h5 is labelled"):
        small.read(folder, "test")
    with h5py.File(folder / "ply_data_train1.h5", "r+") as file:
        file["label"][0, 0] = 40
    with pytest.raises(ValueError, match=r"ply_data_train1\.h5: labels must be integers in 0\.\.39"):
        small.read(folder, "validation")
    with h5py.File(folder / "ply_data_train0.h5", "r+") as file:
        del file["normal"]
    with pytest.raises(ValueError, match=r"ply_data_train0\.h5: no 'normal' dataset \(has \['data', 'faceId', "
                                         r"'label'\]\)"):
        ModelNet40(ModelNet40Settings(normals=True)).read(folder, "train")
    (folder / "ply_data_train0.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"ply_data_train0\.h5: not a readable HDF5 file"):
        small.read(folder, "train")
    (folder / "ply_data_train0.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"ply_data_train0\.h5: missing \(train_files\.txt lists "
                                                r"data/modelnet40_ply_hdf5_2048/ply_data_train0\.h5\)"):
        small.read(folder, "train")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(ImportError, match=r"needs h5py: pip install 'itnet_scale\[modelnet\]'"):
        small.read(folder, "test")


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_points": 0}, r"modelnet40\.num_points must be an integer >= 1, got 0"),
    ({"sampling": "random"}, r"modelnet40\.sampling must be one of \('first', 'farthest'\), got 'random'"),
    ({"normals": "yes"}, r"modelnet40\.normals must be true or false"),
    ({"validation_fraction": 0.0}, r"modelnet40\.validation_fraction must be in \(0, 1\), got 0\.0"),
    ({"validation_fraction": 1.0}, r"modelnet40\.validation_fraction must be in \(0, 1\)"),
    ({"validation_fraction": "0.1"}, r"modelnet40\.validation_fraction must be in \(0, 1\), got '0\.1'"),
    ({"seed": 1.5}, r"modelnet40\.seed must be an integer >= 0, got 1\.5"),
    ({"seed": -1}, r"modelnet40\.seed must be an integer >= 0, got -1"),
    ({"layout": "ply"}, r"modelnet40\.layout must be 'auto' or one of \('normal_resampled', 'hdf5', 'off'\)"),
])
def test_settings_name_the_bad_key(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelNet40Settings(**settings)


# --- Metrics and submission -----------------------------------------------------------------------------------


def test_evaluate_reports_overall_and_mean_class_accuracy() -> None:
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(90, int), np.full(10, 39)])
    scores = rng.normal(size=(100, 40))
    scores[np.arange(100), labels] += np.where(labels == 0, 3.0, 0.0)  # the large class is easy, the small hard
    result = ModelNet40().evaluate(scores, labels)
    assert set(result) == {"overall_accuracy", "mean_class_accuracy"}
    assert result["overall_accuracy"] == metrics.accuracy(scores, labels)
    assert result["mean_class_accuracy"] == metrics.mean_class_accuracy(scores, labels)
    assert result["overall_accuracy"] > result["mean_class_accuracy"]


def test_submission_is_a_csv_of_shape_ids_and_class_names(tmp_path: Path) -> None:
    scores = np.zeros((3, 40))
    scores[[0, 1, 2], [0, 15, 36]] = 1.0
    ids = ["airplane_0627", "flower_pot_0150", "bed_0516"]
    path = ModelNet40().write_submission(tmp_path / "out", "test", ids, scores)
    assert path == tmp_path / "out" / "modelnet40_test.csv"
    assert path.read_text() == ("shape_id,predicted_class\nairplane_0627,airplane\nflower_pot_0150,flower_pot\n"
                                "bed_0516,tv_stand\n")
    assert list(csv.DictReader(io.StringIO(path.read_text())))[1] == {"shape_id": "flower_pot_0150",
                                                                      "predicted_class": "flower_pot"}
    assert ModelNet40().write_submission(tmp_path, "validation", ids[:1], np.array([2])).read_text() == \
        "shape_id,predicted_class\nairplane_0627,bed\n"
    with pytest.raises(ValueError, match=r"3 shape ids but predictions of shape \[2, 40\]"):
        ModelNet40().write_submission(tmp_path, "test", ids, scores[:2])
    with pytest.raises(ValueError, match=r"predictions must score the 40 classes, got 10 columns"):
        ModelNet40().write_submission(tmp_path, "test", ids, np.zeros((3, 10)))
    with pytest.raises(ValueError, match=r"predicted classes must be in 0\.\.39, got 0 to 40"):
        ModelNet40().write_submission(tmp_path, "test", ids, np.array([0, 1, 40]))


# --- Voting ---------------------------------------------------------------------------------------------------


class ShapeStatistics(torch.nn.Module):
    """A small fixed classifier of a cloud's per-axis spread and extent (so anisotropic scaling changes its
    scores); it records every batch it is given."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        self.seen.append(points.clone())
        xyz = points[..., :3]
        return self.linear(torch.cat([xyz.std(1), xyz.abs().amax(1)], dim=-1))


def clouds(batch: int, columns: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return torch.randn(batch, 128, columns, generator=generator)


def test_one_vote_is_the_softmax_of_the_plain_prediction() -> None:
    model, points = ShapeStatistics(), clouds(6)
    plain = model(points).softmax(-1)
    voted = vote(model, points, votes=1, seed=0)
    assert voted.dtype == torch.float32 and voted.shape == (6, 5)
    torch.testing.assert_close(voted, plain, rtol=0, atol=0)
    assert torch.equal(model.seen[-1], points)


def test_votes_are_seeded_scalings_independent_of_the_batch() -> None:
    model, points = ShapeStatistics(), clouds(6)
    voted = vote(model, points, votes=5, seed=3)
    views = model.seen[-5:]
    assert torch.equal(views[0], points)
    for view in views[1:]:
        factors = view / points  # one factor per axis, the same for every point of every shape
        per_axis = factors[0, 0]
        torch.testing.assert_close(factors, per_axis.expand_as(factors))
        assert ((per_axis >= VOTE_SCALE_RANGE[0]) & (per_axis <= VOTE_SCALE_RANGE[1])).all()
        assert not torch.allclose(per_axis, torch.ones(3))
    torch.testing.assert_close(voted, torch.stack([model(v).softmax(-1) for v in views]).mean(0))
    assert torch.equal(vote(model, points, votes=5, seed=3), voted)
    assert not torch.allclose(vote(model, points, votes=5, seed=4), voted)
    halves = torch.cat([vote(model, points[:2], votes=5, seed=3), vote(model, points[2:], votes=5, seed=3)])
    torch.testing.assert_close(halves, voted)


def test_voting_keeps_normals_normal_to_the_scaled_surface() -> None:
    """A tilted plane's points with its normal: after scaling, the normal is still unit and perpendicular."""
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 3, generator=generator)
    uv = torch.rand(1, 64, 2, generator=generator)
    plane = uv[..., :1] * u + uv[..., 1:] * v
    normal = torch.linalg.cross(u, v)
    points = torch.cat([plane, (normal / normal.norm()).expand(1, 64, 3)], dim=-1)
    model = ShapeStatistics()
    vote(model, points, votes=3, seed=1)
    for view in model.seen[-2:]:
        normals = view[0, :, 3:]
        torch.testing.assert_close(normals.norm(dim=-1), torch.ones(64))
        tangent = view[0, 1:, :3] - view[0, :1, :3]
        torch.testing.assert_close((tangent * normals[1:]).sum(-1), torch.zeros(63), atol=1e-5, rtol=0)


def test_vote_errors() -> None:
    model = ShapeStatistics()
    with pytest.raises(ValueError, match=r"votes must be >= 1, got 0"):
        vote(model, clouds(2), votes=0, seed=0)
    with pytest.raises(ValueError, match=r"points must be float \[batch, points, 3 or 6\], got \[2, 128, 4\]"):
        vote(model, clouds(2, 4), votes=2, seed=0)
    with pytest.raises(ValueError, match=r"predict must return scores \[batch=2, classes\], got \[2\]"):
        vote(lambda points: points.sum((1, 2)), clouds(2), votes=2, seed=0)


# --- Shards ---------------------------------------------------------------------------------------------------


def test_a_split_round_trips_through_a_points_shard_set(archives: Path, tmp_path: Path) -> None:
    folder = archives / ARCHIVES["normal_resampled"]
    settings = ModelNet40Settings(num_points=256, validation_fraction=0.5)
    summary = write_modelnet40_shards(folder, "validation", tmp_path / "shards", settings, max_count=5)
    expected = ModelNet40(settings).read(folder, "validation")
    assert summary.kind == "points" and summary.samples == 12 and summary.shards == 3
    index = read_index(tmp_path / "shards")
    assert index["classes"] == list(SHAPE_NAMES) and index["split"] == "validation" and index["num_points"] == 256
    assert index["ids"] == [e.id for e in expected.examples]
    samples = [sample for shard in shard_files(tmp_path / "shards", index)
               for sample in read_shard(shard.location, expected_bytes=shard.bytes)]
    assert [int(s["cls"]) for s in samples] == expected.labels().tolist()
    for sample, example in zip(samples, expected.examples, strict=True):
        points = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        assert points.dtype == np.float32 and points.shape == (256, 3)
        np.testing.assert_array_equal(points, example.inputs["points"])
    with pytest.raises(ValueError, match=r"a 'points' shard set holds xyz \[P, 3\] only"):
        write_modelnet40_shards(folder, "test", tmp_path / "normals", ModelNet40Settings(normals=True))
