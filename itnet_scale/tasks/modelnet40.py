"""ModelNet40 shape classification (registered as ``modelnet40``): 40 classes, 9843 training and 2468 test shapes.

**Layouts.** :meth:`ModelNet40.read` takes the folder of any of the three archives the dataset ships as, or a
folder holding one of them under its archive name. The layout is told from what is there (:func:`find_layout`):

- ``modelnet40_normal_resampled/`` — holds ``modelnet40_shape_names.txt``. Id lists ``modelnet40_train.txt`` /
  ``modelnet40_test.txt`` (one id a line, ``airplane_0001``; the class is the id without its last ``_NNNN``, so
  ``flower_pot_0001`` is a ``flower_pot``), and ``<class>/<id>.txt`` with 10000 rows ``x,y,z,nx,ny,nz``.
- ``modelnet40_ply_hdf5_2048/`` — holds ``ply_data_*.h5``. ``train_files.txt`` / ``test_files.txt`` list the
  ``ply_data_train0.h5`` … files (as paths from the archive's original parent: only the file name is used), each
  with datasets ``data`` float32 ``[N, 2048, 3]``, ``label`` ``[N, 1]`` (and ``normal`` ``[N, 2048, 3]``);
  ``shape_names.txt``; ``ply_data_train_0_id2file.json`` beside ``ply_data_train0.h5`` lists each row's file
  (``"airplane/airplane_0627.ply"``), which gives its id. Without that json a row's id is ``ply_data_train0.h5#12``.
  Needs h5py (``pip install 'itnet_scale[modelnet]'``).
- ``ModelNet40/`` (the raw meshes) — holds a class folder (``airplane/``, …) with ``train/`` or ``test/`` in it:
  ``<class>/{train,test}/<class>_NNNN.off``, read by :func:`~itnet_scale.data.meshes.read_off` (which takes the
  files' quirks: ``OFF490 518 0`` headers, ``#`` comments, ``COFF``) and surface-sampled with a generator seeded
  by ``seed`` and the shape id, so a shape's points do not depend on what else is read.

The root's own markers decide; only when it has none are ``modelnet40_normal_resampled/``,
``modelnet40_ply_hdf5_2048/`` and ``ModelNet40/`` under it looked at. Markers of more than one layout (or two
archives side by side) are ambiguous: an error names them, and ``layout`` picks one. A root with none raises
naming what it holds.

**Points.** Each shape gives ``num_points`` (1024) points, the first of the stored cloud as PointNet++'s and
DGCNN's loaders take them (``sampling="first"``, the default: only those rows are read; a mesh is sampled with
exactly that many points), or chosen by farthest-point sampling over the whole cloud (``"farthest"``, as Point-BERT
and Point-MAE choose theirs: the 10000 or 2048 stored points, or :data:`MESH_SAMPLES` points sampled from a mesh;
about 50 ms a shape on one core, some 10 minutes for the whole dataset, so write shards once), then centered on
their mean and scaled so the farthest is at distance 1. ``Example.inputs = {"points": float32 [P, 3]}``, or
``[P, 6]`` with ``normals`` (each point's unit normal after its xyz: the stored normals, or the sampled triangle's),
``id`` = the shape id (``airplane_0627``), ``label`` = the class's index in :data:`SHAPE_NAMES` (the archives'
``shape_names`` order, checked on read).

**Splits.** ``test`` is the official test set. ModelNet40 has no validation set, so ``validation`` is carved
out of the official training set (:func:`validation_mask`): per class, ``round(validation_fraction · n)``
shapes (at least 1 and at most ``n − 1`` of a class with ``n ≥ 2``), drawn with ``seed``; ``train`` is the rest.

**Metrics.** ``overall_accuracy`` (primary) and ``mean_class_accuracy``. :func:`vote` gives test-time voting
scores (the mean of the softmax over seeded anisotropic scalings) to report beside the plain accuracy.

**Submission.** ``modelnet40_<split>.csv``: a header ``shape_id,predicted_class``, then one row per shape
in the order given, the class by name (``airplane_0627,airplane``).

**Shards.** :func:`write_modelnet40_shards` writes a split as a ``points`` shard set (xyz ``[P, 3]`` + class
index), with ``classes`` and the shape ``ids`` (in sample order) in its index.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from itnet_scale.data.meshes import read_off, sample_surface
from itnet_scale.data.shards import ShardSetSummary, ShardSetWriter, npy_bytes, read_point_rows
from itnet_scale.tasks.benchmark import Benchmark, Example, Split, register_benchmark
from itnet_scale.tasks.metrics import accuracy, mean_class_accuracy, predicted_classes

#: The 40 classes in the archives' ``shape_names`` order (class index = position).
SHAPE_NAMES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)
SPLITS = ("train", "validation", "test")
LAYOUTS = ("normal_resampled", "hdf5", "off")
#: The folder each layout's archive unpacks to.
LAYOUT_FOLDERS = {"normal_resampled": "modelnet40_normal_resampled", "hdf5": "modelnet40_ply_hdf5_2048",
                  "off": "ModelNet40"}
SAMPLINGS = ("first", "farthest")
#: Points sampled from a mesh before farthest-point sampling picks ``num_points`` (as many as the resampled set).
MESH_SAMPLES = 10000
#: Per-axis scale factors of the voting augmentations, uniform in this range (DGCNN-style voting, as PAConv's).
VOTE_SCALE_RANGE = (0.8, 1.18)
_SHAPE_ID = re.compile(r"^(?P<cls>.+)_(?P<number>\d+)$")


@dataclass(frozen=True)
class ModelNet40Settings:
    """How shapes become examples and how validation is carved out (see the module doc).

    ``num_points``: points per shape; ``sampling``: ``"first"`` or ``"farthest"``; ``normals``: inputs
    ``[P, 6]`` with unit normals; ``validation_fraction``: the share of each class's training shapes held out as
    ``validation``; ``seed``: the validation draw and the mesh samples; ``layout``: ``"auto"`` (detect) or one of
    :data:`LAYOUTS`."""

    num_points: int = 1024
    sampling: str = "first"
    normals: bool = False
    validation_fraction: float = 0.1
    seed: int = 0
    layout: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.num_points, int) or self.num_points < 1:
            raise ValueError(f"modelnet40.num_points must be an integer >= 1, got {self.num_points!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"modelnet40.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not isinstance(self.normals, bool):
            raise ValueError(f"modelnet40.normals must be true or false, got {self.normals!r}")
        if not isinstance(self.validation_fraction, int | float) or not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"modelnet40.validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"modelnet40.seed must be an integer >= 0, got {self.seed!r}")
        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"modelnet40.layout must be 'auto' or one of {LAYOUTS}, got {self.layout!r}")

    @property
    def columns(self) -> int:
        """Numbers per point: xyz, and the normal with ``normals``."""
        return 6 if self.normals else 3


# --- Layouts --------------------------------------------------------------------------------------------------


def _layouts_marked(folder: Path) -> list[str]:
    """The layouts whose marker ``folder`` holds (see the module doc)."""
    if not folder.is_dir():
        return []
    found = []
    if (folder / "modelnet40_shape_names.txt").is_file():
        found.append("normal_resampled")
    if any(folder.glob("ply_data_*.h5")):
        found.append("hdf5")
    if any((folder / name / split).is_dir() for name in SHAPE_NAMES for split in ("train", "test")):
        found.append("off")
    return found


def find_layout(root: str | Path, layout: str = "auto") -> tuple[str, Path]:
    """``(layout, folder)`` of the ModelNet40 archive at or directly under ``root`` (the rule is in the module doc).

    ``layout`` other than ``"auto"`` picks that layout among those found. Raises ``FileNotFoundError`` if ``root``
    is not a folder, ``ValueError`` naming what was found if no layout (or not exactly one) is there."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such ModelNet40 folder")
    here = [(name, root) for name in _layouts_marked(root)]
    below = [(name, root / folder) for name, folder in LAYOUT_FOLDERS.items() if name in _layouts_marked(root / folder)]
    found = (here or below) if layout == "auto" else [(name, folder) for name, folder in here + below if name == layout]
    if len(found) == 1:
        return found[0]
    if found:
        listed = "; ".join(f"{name} at {folder}" for name, folder in found)
        raise ValueError(f"{root}: ambiguous ModelNet40 root, it holds more than one layout ({listed}); point the "
                         "root at one, or set modelnet40.layout")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:12]) + (f", … ({len(entries)} entries)" if len(entries) > 12 else "")
    wanted = "a" if layout == "auto" else f"the {layout!r}"
    raise ValueError(f"{root}: not {wanted} ModelNet40 layout (expected modelnet40_shape_names.txt, ply_data_*.h5 "
                     f"or <class>/train|test/ folders, here or in {'/, '.join(LAYOUT_FOLDERS.values())}/); "
                     f"found: {shown or 'nothing'}")


def check_shape_names(path: Path) -> None:
    """Raise unless ``path`` lists :data:`SHAPE_NAMES` in order, one a line (the archives' ``shape_names``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the ModelNet40 class list)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if tuple(names) != SHAPE_NAMES:
        first = next((i for i, (a, b) in enumerate(zip(names, SHAPE_NAMES)) if a != b), min(len(names), 40))
        got = repr(names[first]) if first < len(names) else "the end of the list"
        expected = repr(SHAPE_NAMES[first]) if first < len(SHAPE_NAMES) else "the end of the list"
        raise ValueError(f"{path}: not ModelNet40's 40 classes ({len(names)} names; name {first + 1} is {got}, "
                         f"expected {expected})")


@dataclass(frozen=True)
class _Shape:
    """One shape of an official split before its points are read: ``load()`` gives its cloud ``[N, columns]``."""

    id: str
    label: int
    load: Callable[[], np.ndarray]


@dataclass
class _Catalog:
    """An official split's shapes in file order, and the files skipped per reason."""

    shapes: list[_Shape]
    skipped: Counter[str] = field(default_factory=Counter)


def _class_of(shape_id: str, where: str) -> int:
    """The class index of a shape id ``<class>_NNNN``; raises naming ``where`` if it is not one."""
    match = _SHAPE_ID.match(shape_id)
    if not match or match["cls"] not in SHAPE_NAMES:
        raise ValueError(f"{where}: {shape_id!r} is not a ModelNet40 shape id (<class>_NNNN with one of the 40 "
                         "classes)")
    return SHAPE_NAMES.index(match["cls"])


def _stored_rows(settings: ModelNet40Settings) -> int | None:
    """Rows of a stored cloud to read: ``num_points`` for ``"first"``, all for ``"farthest"``."""
    return settings.num_points if settings.sampling == "first" else None


def _normal_resampled(folder: Path, split: str, settings: ModelNet40Settings) -> _Catalog:
    check_shape_names(folder / "modelnet40_shape_names.txt")
    listing = folder / f"modelnet40_{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing (the ModelNet40 {split} id list)")
    rows = _stored_rows(settings)
    shapes = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        shape_id = line.strip()
        if not shape_id:
            continue
        label = _class_of(shape_id, f"{listing}:{number}")
        path = folder / SHAPE_NAMES[label] / f"{shape_id}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing ({listing.name} line {number} lists {shape_id})")
        shapes.append(_Shape(shape_id, label, lambda path=path: read_point_rows(path, settings.columns, rows)))
    return _Catalog(shapes)


def import_h5py() -> ModuleType:
    """h5py, or an ``ImportError`` naming the ``modelnet`` extra that installs it (it is optional)."""
    try:
        return importlib.import_module("h5py")
    except ImportError as error:
        raise ImportError("reading ModelNet40's HDF5 layout (modelnet40_ply_hdf5_2048) needs h5py: "
                          "pip install 'itnet_scale[modelnet]'") from error


def _hdf5_ids(h5_path: Path, labels: np.ndarray) -> list[str]:
    """Each row's shape id from the ``*_id2file.json`` beside ``h5_path`` (or ``<file>#<row>`` without one)."""
    match = re.fullmatch(r"(?P<stem>.*?)(?P<part>\d+)\.h5", h5_path.name)
    listing = h5_path.with_name(f"{match['stem']}_{match['part']}_id2file.json") if match else None
    if listing is None or not listing.is_file():
        return [f"{h5_path.name}#{row}" for row in range(len(labels))]
    try:
        files = json.loads(listing.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ValueError(f"{listing}: not a JSON list of shape files ({error})") from None
    if not isinstance(files, list) or len(files) != len(labels) or not all(isinstance(f, str) for f in files):
        count = len(files) if isinstance(files, list) else type(files).__name__
        raise ValueError(f"{listing}: expected a list of {len(labels)} shape files (one per row of {h5_path.name}), "
                         f"got {count}")
    ids = []
    for row, (name, label) in enumerate(zip(files, labels)):
        shape_id = Path(name).stem
        if _class_of(shape_id, f"{listing}: entry {row}") != label:
            raise ValueError(f"{listing}: entry {row} is {name!r} but row {row} of {h5_path.name} is labelled "
                             f"{SHAPE_NAMES[label]!r}")
        ids.append(shape_id)
    return ids


def _dataset(file: Any, name: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """Dataset ``name`` of an open HDF5 file, read whole, with ``shape`` checked (None: any size)."""
    if name not in file:
        raise ValueError(f"{path}: no {name!r} dataset (has {sorted(file.keys())})")
    array = file[name][()]
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        wanted = "[" + ", ".join("N" if want is None else str(want) for want in shape) + "]"
        raise ValueError(f"{path}: dataset {name!r} has shape {list(array.shape)}, expected {wanted}")
    return array


def _hdf5(folder: Path, split: str, settings: ModelNet40Settings) -> _Catalog:
    h5py = import_h5py()
    check_shape_names(folder / "shape_names.txt")
    listing = folder / f"{split}_files.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing (the list of ModelNet40's {split} .h5 files)")
    rows = _stored_rows(settings)
    shapes = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        path = folder / Path(line.strip()).name  # listed from the archive's original parent (data/...)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing ({listing.name} lists {line.strip()})")
        try:
            with h5py.File(path, "r") as file:
                points = _dataset(file, "data", path, (None, None, 3))
                labels = _dataset(file, "label", path, (len(points), 1)).reshape(-1)
                if settings.normals:
                    points = np.concatenate([points, _dataset(file, "normal", path, points.shape)], axis=2)
        except OSError as error:
            raise ValueError(f"{path}: not a readable HDF5 file ({error})") from None
        values = np.unique(labels)
        if not np.issubdtype(labels.dtype, np.integer) or not np.isin(values, np.arange(len(SHAPE_NAMES))).all():
            raise ValueError(f"{path}: labels must be integers in 0..{len(SHAPE_NAMES) - 1}, got {labels.dtype} "
                             f"values {values.tolist()[:5]}{' …' if len(values) > 5 else ''}")
        if not np.isfinite(points).all():
            raise ValueError(f"{path}: points contain NaN or infinity")
        labels = labels.astype(np.int64)
        for row, shape_id in enumerate(_hdf5_ids(path, labels)):
            shapes.append(_Shape(shape_id, int(labels[row]),
                                 lambda points=points, row=row: points[row, :rows].astype(np.float64)))
    return _Catalog(shapes)


def _mesh_rng(settings: ModelNet40Settings, shape_id: str) -> np.random.Generator:
    """The generator that samples shape ``shape_id``'s mesh: fixed by the seed and the id alone."""
    return np.random.default_rng([settings.seed, zlib.crc32(shape_id.encode("utf-8"))])


def _off(folder: Path, split: str, settings: ModelNet40Settings) -> _Catalog:
    count = settings.num_points if settings.sampling == "first" else max(MESH_SAMPLES, settings.num_points)
    catalog = _Catalog([])
    for class_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split_folder = class_folder / split
        if class_folder.name not in SHAPE_NAMES:
            if split_folder.is_dir():
                raise ValueError(f"{class_folder}: holds {split}/ meshes but is not one of ModelNet40's 40 classes")
            catalog.skipped["not a class folder"] += 1  # an archiver's folder (__MACOSX)
            continue
        if not split_folder.is_dir():
            continue
        label = SHAPE_NAMES.index(class_folder.name)
        for path in sorted(p for p in split_folder.iterdir() if not p.name.startswith(".")):
            if path.suffix.lower() != ".off" or not path.is_file():
                catalog.skipped["not an .off file"] += 1
                continue
            catalog.shapes.append(_Shape(path.stem, label, lambda path=path: sample_surface(
                read_off(path), count, _mesh_rng(settings, path.stem), normals=settings.normals)))
    if not catalog.shapes:
        raise ValueError(f"{folder}: no <class>/{split}/*.off meshes")
    return catalog


_READERS: dict[str, Callable[[Path, str, ModelNet40Settings], _Catalog]] = {
    "normal_resampled": _normal_resampled, "hdf5": _hdf5, "off": _off}


# --- Points ---------------------------------------------------------------------------------------------------


def normalize_to_unit_sphere(points: np.ndarray) -> np.ndarray:
    """``[P, 3 or 6]`` → float32, xyz centered on their mean and scaled so the farthest point is at distance 1
    (PointNet++'s ``pc_normalize``); normals are kept. Raises if every point is the same."""
    xyz = points[:, :3] - points[:, :3].mean(0)
    radius = float(np.sqrt((xyz * xyz).sum(1)).max())
    if not radius > 0:
        raise ValueError("every point is the same point: the cloud cannot be scaled to the unit sphere")
    return np.concatenate([xyz / radius, points[:, 3:]], axis=1).astype(np.float32)


def farthest_point_indices(points: np.ndarray, count: int) -> np.ndarray:
    """``[count]`` indices into ``points`` ``[N, ≥3]``: row 0, then each time the row farthest (squared Euclidean,
    xyz) from those chosen — the choice :func:`itnet_scale.nn.encoders.farthest_point_sampling` makes on batched
    tensors. That one serves the model; for one cloud at a time on a CPU its per-step tensor overhead makes it ~15×
    slower (0.7 s against 45 ms for 1024 of 10000 points), so reading uses this loop over numpy arrays."""
    if not 1 <= count <= len(points):
        raise ValueError(f"cannot pick {count} farthest points from a cloud of {len(points)}")
    x, y, z = (np.ascontiguousarray(points[:, axis], dtype=np.float64) for axis in range(3))
    chosen = np.zeros(count, dtype=np.int64)
    distance = np.full(len(points), np.inf)
    for i in range(1, count):
        last = chosen[i - 1]
        np.minimum(distance, (x - x[last]) ** 2 + (y - y[last]) ** 2 + (z - z[last]) ** 2, out=distance)
        chosen[i] = distance.argmax()
    return chosen


def _examples(shapes: Sequence[_Shape], settings: ModelNet40Settings) -> Iterator[Example]:
    """Read each shape's cloud, keep ``num_points`` of it (first or farthest) and normalize it."""
    for shape in shapes:
        cloud = shape.load()
        if len(cloud) < settings.num_points:
            raise ValueError(f"shape {shape.id}: holds {len(cloud)} points, fewer than modelnet40.num_points="
                             f"{settings.num_points}")
        if settings.sampling == "farthest":
            cloud = cloud[farthest_point_indices(cloud, settings.num_points)]
        try:
            points = normalize_to_unit_sphere(cloud[:settings.num_points])
        except ValueError as error:
            raise ValueError(f"shape {shape.id}: {error}") from None
        yield Example(shape.id, {"points": points}, shape.label)


def validation_mask(labels: Sequence[int], ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """``[N]`` bool, True for the shapes held out as validation: per class, ``round(fraction · n)`` of its ``n``
    shapes (clamped to ``1 … n − 1`` when ``n ≥ 2``; none of a class with one shape), drawn by a generator seeded
    with ``(seed, class)`` from the class's shapes in id order — so the draw depends on the ids, not on file
    order or on the other classes."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort([ids[i] for i in members], kind="stable")]
        n = len(members)
        take = 0 if n < 2 else min(max(round(fraction * n), 1), n - 1)
        rng = np.random.default_rng([seed, int(label)])
        mask[members[rng.permutation(n)[:take]]] = True
    return mask


# --- Voting ---------------------------------------------------------------------------------------------------


def vote(predict: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, votes: int,
         seed: int) -> torch.Tensor:
    """Test-time voting: the mean over ``votes`` views of ``softmax(predict(view))``, float32 ``[B, C]``.

    View 0 is ``points`` ``[B, P, 3 or 6]`` as given; view ``v ≥ 1`` scales every shape's xyz by factors
    ``(sx, sy, sz)`` drawn uniformly from :data:`VOTE_SCALE_RANGE` (anisotropic scaling, as DGCNN-style voting;
    normals follow the inverse scaling, renormalized). The factors come from ``seed`` alone — the same for every
    shape of a batch — so a shape's scores do not depend on its batch, and ``votes=1`` is the softmax of the plain
    prediction. ``predict`` maps float32 ``[B, P, C_in]`` to scores ``[B, C]``; it runs without autograd.
    """
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")
    if points.dim() != 3 or points.shape[-1] not in (3, 6) or not points.is_floating_point():
        raise ValueError(f"points must be float [batch, points, 3 or 6], got {list(points.shape)} {points.dtype}")
    low, high = VOTE_SCALE_RANGE
    generator = torch.Generator().manual_seed(seed)
    scales = low + (high - low) * torch.rand(votes, 3, generator=generator, dtype=torch.float64)
    scales[0] = 1.0
    total: torch.Tensor | None = None
    with torch.no_grad():
        for view in range(votes):
            scale = scales[view].to(points.device, points.dtype)
            augmented = points if view == 0 else scale_points(points, scale)
            scores = predict(augmented)
            if scores.dim() != 2 or scores.shape[0] != points.shape[0]:
                raise ValueError(f"predict must return scores [batch={points.shape[0]}, classes], got "
                                 f"{list(scores.shape)}")
            probabilities = scores.float().softmax(-1)
            total = probabilities if total is None else total + probabilities
    return total / votes


def scale_points(points: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``points`` ``[..., 3 or 6]`` with xyz multiplied by ``scale`` ``[3]``; normals (columns 3–5) divided by it
    and renormalized (a normal transforms by the inverse transpose)."""
    xyz = points[..., :3] * scale
    if points.shape[-1] == 3:
        return xyz
    normals = points[..., 3:] / scale
    return torch.cat([xyz, normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)], dim=-1)


# --- The benchmark --------------------------------------------------------------------------------------------


class ModelNet40(Benchmark):
    """ModelNet40 classification (see the module doc); ``settings`` fix the points and the validation carve-out."""

    name = "modelnet40"
    modality = "points"
    label_names = SHAPE_NAMES
    primary_metric = "overall_accuracy"

    def __init__(self, settings: ModelNet40Settings | None = None) -> None:
        self.settings = settings if settings is not None else ModelNet40Settings()

    def read(self, root: Path, split: str) -> Split:
        """Split ``train``, ``validation`` or ``test`` of the archive at (or under) ``root``; examples in file
        order. Raises ``FileNotFoundError`` / ``ValueError`` naming the file at fault."""
        if split not in SPLITS:
            raise ValueError(f"modelnet40 has splits {SPLITS}, not {split!r}")
        layout, folder = find_layout(root, self.settings.layout)
        catalog = _READERS[layout](folder, "test" if split == "test" else "train", self.settings)
        shapes = catalog.shapes
        repeated = [shape_id for shape_id, n in Counter(shape.id for shape in shapes).items() if n > 1]
        if repeated:
            raise ValueError(f"{folder}: shape id {repeated[0]!r} appears {sum(s.id == repeated[0] for s in shapes)} "
                             "times in the official split")
        if split != "test":
            held_out = validation_mask([s.label for s in shapes], [s.id for s in shapes],
                                       self.settings.validation_fraction, self.settings.seed)
            shapes = [shape for shape, out in zip(shapes, held_out) if out == (split == "validation")]
        return Split(split, list(_examples(shapes, self.settings)), dict(catalog.skipped))

    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``overall_accuracy`` and ``mean_class_accuracy`` of class scores ``[N, 40]`` (or classes ``[N]``)."""
        return {"overall_accuracy": accuracy(predictions, labels),
                "mean_class_accuracy": mean_class_accuracy(predictions, labels)}

    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """``folder/modelnet40_<split>.csv``: ``shape_id,predicted_class`` and a row per shape (class names)."""
        classes = predicted_classes(np.asarray(predictions))
        if classes.ndim != 1 or len(classes) != len(ids):
            raise ValueError(f"{len(ids)} shape ids but predictions of shape {list(np.shape(predictions))}")
        if np.ndim(predictions) == 2 and np.shape(predictions)[1] != len(SHAPE_NAMES):
            raise ValueError(f"predictions must score the {len(SHAPE_NAMES)} classes, got "
                             f"{np.shape(predictions)[1]} columns")
        if len(classes) and (classes.min() < 0 or classes.max() >= len(SHAPE_NAMES)):
            raise ValueError(f"predicted classes must be in 0..{len(SHAPE_NAMES) - 1}, got {classes.min()} to "
                             f"{classes.max()}")
        path = Path(folder) / f"{self.name}_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["shape_id", "predicted_class"])
            writer.writerows((shape_id, SHAPE_NAMES[c]) for shape_id, c in zip(ids, classes))
        return path


def write_modelnet40_shards(root: str | Path, split: str, output: str | Path,
                            settings: ModelNet40Settings | None = None, **writer_options: Any) -> ShardSetSummary:
    """Write ``split`` of the archive at ``root`` as a ``points`` shard set in ``output``: per shape ``npy``
    (float32 ``[P, 3]``, normalized as :meth:`ModelNet40.read` gives it) + ``cls``; the index holds ``classes``
    (:data:`SHAPE_NAMES`), ``ids`` (the shape ids in sample order), ``split``, ``num_points`` and ``source``.
    ``writer_options`` go to :class:`~itnet_scale.data.shards.ShardSetWriter`."""
    settings = settings if settings is not None else ModelNet40Settings()
    if settings.normals:
        raise ValueError("a 'points' shard set holds xyz [P, 3] only: write it with modelnet40.normals=false")
    shapes = ModelNet40(settings).read(Path(root), split)
    info = {"source": str(root), "split": split, "classes": list(SHAPE_NAMES), "num_points": settings.num_points,
            "ids": [example.id for example in shapes.examples]}
    with ShardSetWriter(output, "points", info=info, **writer_options) as writer:
        writer.skipped.update(shapes.skipped)
        for example in shapes.examples:
            writer.write({"npy": npy_bytes(example.inputs["points"]), "cls": str(example.label)})
    return writer.summary


MODELNET40 = register_benchmark(ModelNet40())

__all__ = ["LAYOUTS", "LAYOUT_FOLDERS", "MESH_SAMPLES", "MODELNET40", "SHAPE_NAMES", "SPLITS", "VOTE_SCALE_RANGE",
           "ModelNet40", "ModelNet40Settings", "check_shape_names", "farthest_point_indices", "find_layout",
           "import_h5py", "normalize_to_unit_sphere", "scale_points", "validation_mask", "vote",
           "write_modelnet40_shards"]
