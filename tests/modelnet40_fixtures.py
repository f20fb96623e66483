"""ModelNet40's three archives in their exact formats, with a few shapes of a few classes (each class one procedural
shape, randomly rotated, scaled and moved, so a model can tell them apart). Shared by the benchmark's tests and any
test that fine-tunes on ModelNet40."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from itnet_scale.data.meshes import SHAPES, Mesh, box, cone, cylinder, random_rotation, sample_surface, torus
from itnet_scale.tasks.modelnet40 import SHAPE_NAMES

#: The fixture's classes (names with underscores included) and the procedural shape each class is (any other class
#: is one of the demo's shapes, by its index).
FIXTURE_MESHES = {"airplane": box, "flower_pot": cylinder, "night_stand": cone, "tv_stand": torus}


def official_ids(train_per_class: int, test_per_class: int,
                 classes: Sequence[str] = tuple(FIXTURE_MESHES)) -> tuple[list[str], list[str]]:
    """Shape ids numbered as ModelNet40 numbers them: a class's training shapes first (``_0001`` …), its test
    shapes after them; lists in class order, as the archives' id lists are."""
    train = [f"{name}_{i:04d}" for name in classes for i in range(1, train_per_class + 1)]
    test = [f"{name}_{i:04d}" for name in classes
            for i in range(train_per_class + 1, train_per_class + test_per_class + 1)]
    return train, test


def class_of(shape_id: str) -> str:
    return shape_id.rsplit("_", 1)[0]


def fixture_mesh(shape_id: str) -> Mesh:
    """The shape's mesh: its class's shape, rotated, anisotropically scaled (×10 to ×40, as the raw meshes' units
    are) and moved off the origin, all fixed by the id."""
    rng = np.random.default_rng(zlib.crc32(shape_id.encode()))
    name = class_of(shape_id)
    make = FIXTURE_MESHES.get(name) or list(SHAPES.values())[SHAPE_NAMES.index(name) % len(SHAPES)]
    mesh = make().transformed(random_rotation(rng) @ np.diag(rng.uniform(10, 40, 3)))
    return Mesh(mesh.vertices + rng.uniform(-50, 50, 3), mesh.triangles)


def fixture_cloud(shape_id: str, rows: int) -> np.ndarray:
    """``[rows, 6]`` points with unit normals on the shape's surface (what the resampled archive stores)."""
    rng = np.random.default_rng(zlib.crc32(shape_id.encode()) + 1)
    return sample_surface(fixture_mesh(shape_id), rows, rng, normals=True).astype(np.float64)


def write_normal_resampled(folder: Path, train_ids: Sequence[str], test_ids: Sequence[str],
                           rows: int = 10000) -> Path:
    """``modelnet40_normal_resampled/``: shape-name and id lists, ``<class>/<id>.txt`` with ``rows`` lines of
    ``x,y,z,nx,ny,nz`` (6 decimals, as the archive's), and the ModelNet10 lists the archive also holds."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(SHAPE_NAMES) + "\n")
    (folder / "modelnet10_shape_names.txt").write_text("bathtub\nbed\nchair\ndesk\ndresser\nmonitor\nnight_stand\n"
                                                       "sofa\ntable\ntoilet\n")
    (folder / "modelnet40_train.txt").write_text("\n".join(train_ids) + "\n")
    (folder / "modelnet40_test.txt").write_text("\n".join(test_ids) + "\n")
    (folder / "filelist.txt").write_text("\n".join(f"{class_of(i)}/{i}.txt" for i in [*train_ids, *test_ids]) + "\n")
    for shape_id in [*train_ids, *test_ids]:
        (folder / class_of(shape_id)).mkdir(exist_ok=True)
        np.savetxt(folder / class_of(shape_id) / f"{shape_id}.txt", fixture_cloud(shape_id, rows), fmt="%.6f",
                   delimiter=",")
    return folder


def write_hdf5(folder: Path, train_ids: Sequence[str], test_ids: Sequence[str], files: tuple[int, int] = (2, 1),
               id_files: bool = True) -> Path:
    """``modelnet40_ply_hdf5_2048/``: the shapes shuffled into ``files`` ``ply_data_{train,test}N.h5`` per split
    (``data`` float32 ``[N, 2048, 3]``, ``label`` uint8 ``[N, 1]``, ``normal`` float32, ``faceId`` int32), their
    ``ply_data_{split}_N_id2file.json`` (unless not ``id_files``), ``{split}_files.txt`` (paths from the archive's
    parent, ``data/modelnet40_ply_hdf5_2048/…``) and ``shape_names.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shape_names.txt").write_text("\n".join(SHAPE_NAMES) + "\n")
    rng = np.random.default_rng(7)
    for split, ids, count in (("train", train_ids, files[0]), ("test", test_ids, files[1])):
        order = rng.permutation(len(ids))
        listed = []
        for part, rows in enumerate(np.array_split(order, count)):
            chosen = [ids[i] for i in rows]
            clouds = np.stack([fixture_cloud(shape_id, 2048) for shape_id in chosen]).astype(np.float32)
            with h5py.File(folder / f"ply_data_{split}{part}.h5", "w") as file:
                file.create_dataset("data", data=clouds[:, :, :3])
                file.create_dataset("faceId", data=np.zeros(clouds.shape[:2], dtype=np.int32))
                file.create_dataset("label", data=np.array(
                    [[SHAPE_NAMES.index(class_of(i))] for i in chosen], dtype=np.uint8))
                file.create_dataset("normal", data=clouds[:, :, 3:])
            if id_files:
                (folder / f"ply_data_{split}_{part}_id2file.json").write_text(
                    json.dumps([f"{class_of(i)}/{i}.ply" for i in chosen]))
            listed.append(f"data/modelnet40_ply_hdf5_2048/ply_data_{split}{part}.h5")
        (folder / f"{split}_files.txt").write_text("\n".join(listed) + "\n")
    return folder


def off_text(mesh: Mesh, variant: int) -> str:
    """The mesh as an OFF file with triangle faces, in one of the raw archive's variants: 0 plain ``OFF``, 1 the
    counts fused onto the header (``OFF490 518 0``), 2 ``#`` comment lines, 3 ``COFF`` (RGBA after each vertex)."""
    counts = f"{len(mesh.vertices)} {len(mesh.triangles)} 0"
    colour = " 128 128 128 255" if variant == 3 else ""
    vertices = [f"{x:.6g} {y:.6g} {z:.6g}{colour}" for x, y, z in mesh.vertices]
    faces = [f"3 {a} {b} {c}" for a, b, c in mesh.triangles]
    header = {0: ["OFF", counts], 1: [f"OFF{counts}"], 2: ["OFF", "# exported mesh", counts, "# vertices"],
              3: ["COFF", counts]}[variant]
    return "\n".join([*header, *vertices, *faces]) + "\n"


def write_raw_off(folder: Path, train_ids: Sequence[str], test_ids: Sequence[str]) -> Path:
    """``ModelNet40/<class>/{train,test}/<id>.off``, the variants of :func:`off_text` in turn."""
    for number, (split, shape_id) in enumerate([*(("train", i) for i in train_ids), *(("test", i) for i in test_ids)]):
        path = folder / class_of(shape_id) / split / f"{shape_id}.off"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(off_text(fixture_mesh(shape_id), number % 4))
    return folder
