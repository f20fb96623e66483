"""The fine-tuning demo's three data sets, each written in the layout its benchmark reads from the real download:

- **fashion** (``imagenet``): Fashion-MNIST's 28×28 grayscale photos of clothes (Debian ``dataset-fashion-mnist``,
  ``make fashion-mnist``), a class-balanced seeded choice from its training file as ``train/`` and flat ``val/``
  with ``LOC_val_solution.csv``, and some of its test file as unlabelled ``test/``
  (:func:`~itnet_scale.tasks.imagenet.write_imagenet_layout`). The 10 classes keep their real names
  (``LOC_synset_mapping.txt``) under made-up wnids ``n99000000`` … ``n99000009`` (valid in form; WordNet has no
  synset with such an offset), numbered in Fashion-MNIST's label order.
- **austen** (``sst2``): sentences of two of Jane Austen's novels (Debian ``r-cran-janeaustenr``, ``make
  janeaustenr``) as GLUE's ``SST-2/{train,dev}.tsv`` (``sentence\\tlabel``) and ``test.tsv`` (``index\\tsentence``):
  label 0 for *Pride and Prejudice* (1813), 1 for *Persuasion* (1817). It is authorship (which novel), not
  sentiment, in SST-2's files. The pair spans her writing: her best-known early novel and her last finished one,
  which differ in names (Elizabeth, Darcy, Bennet / Anne, Wentworth, Elliot) and in manner (P&P's dialogue, the
  free indirect style of Persuasion); each has over 3000 sentences, so a balanced set of a few thousand is drawn
  from both without repeats.
- **shapes** (``modelnet40``): SYNTHETIC point clouds of the library's procedural meshes
  (:data:`~itnet_scale.data.meshes.SHAPES`: box, sphere, cylinder, cone, torus, pyramid), each a seeded random
  anisotropic scale and rotation of its mesh sampled with normals (:func:`~itnet_scale.data.demo.shape_point_cloud`),
  written as ``modelnet40_normal_resampled/`` under six of ModelNet40's class names (:data:`SHAPE_CLASSES`): the
  40 official names in ``modelnet40_shape_names.txt``, the id lists, ``<class>/<id>.txt`` rows ``x,y,z,nx,ny,nz``
  centred and scaled into the unit sphere as the archive's are (``rows`` a shape; the archive has 10000).

Every draw is seeded; the same seed writes the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from comparison.readers import read_idx, read_r_lazyload
from comparison.tasks import FASHION_FILES, austen_dir, fashion_mnist_dir, novel_sentences
from itnet_scale.data.demo import shape_point_cloud
from itnet_scale.data.meshes import SHAPES
from itnet_scale.tasks.imagenet import write_imagenet_layout
from itnet_scale.tasks.modelnet40 import LAYOUT_FOLDERS, SHAPE_NAMES, ModelNet40Settings, validation_mask

#: Fashion-MNIST's class names, in its label order.
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
#: Made-up wnids, one per Fashion-MNIST label, sorted as the labels are (so the benchmark's class index = label).
FASHION_WNIDS = tuple(f"n{99000000 + label:08d}" for label in range(len(FASHION_NAMES)))
#: The janeaustenr vectors of the two novels, as labels 0 and 1.
AUSTEN_NOVELS = ("prideprejudice", "persuasion")
#: The library's procedural shapes → the ModelNet40 class name each is written under.
SHAPE_CLASSES = {"box": "dresser", "sphere": "vase", "cylinder": "flower_pot", "cone": "cone", "torus": "bowl",
                 "pyramid": "tent"}
#: Where each data set goes under the demo's data folder (its benchmark's ``data_root``).
DATA_FOLDERS = {"fashion": "fashion-imagenet", "austen": "austen-glue", "shapes": "shapes-modelnet40"}


@dataclass(frozen=True)
class DemoDataSizes:
    """How much each data set holds: per class (Fashion-MNIST, shapes) or per novel (Austen), for training and
    validation; ``*_test``: the unlabelled (ImageNet, SST-2) or official test (ModelNet40) split. ModelNet40 has
    no validation files: its benchmark holds out 10% of ``shapes_train`` per class. ``shape_rows``: points stored
    per shape (at least the benchmark's 1024)."""

    fashion_train: int = 200
    fashion_val: int = 100
    fashion_test: int = 200
    austen_train: int = 1000
    austen_dev: int = 300
    austen_test: int = 200
    shapes_train: int = 200
    shapes_test: int = 50
    shape_rows: int = 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoDataSizes.{name} must be an integer >= 1, got {value!r}")
        if self.shapes_train < 2:
            raise ValueError(f"DemoDataSizes.shapes_train must be >= 2 (the benchmark holds some out for validation), "
                             f"got {self.shapes_train}")


def balanced_draw(labels: np.ndarray, counts: Sequence[int], rng: np.random.Generator,
                  what: str) -> list[np.ndarray]:
    """Disjoint index sets into ``labels`` ``[N]``: the ``k``-th holds ``counts[k]`` indices of every class
    (``0 … labels.max()``), drawn without replacement, in a shuffled order. A class with too few members raises
    naming ``what``."""
    classes = int(labels.max()) + 1
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for label in range(classes):
        members = np.flatnonzero(labels == label)
        if len(members) < sum(counts):
            raise ValueError(f"{what}: class {label} has {len(members)} examples, fewer than the {sum(counts)} asked "
                             "for")
        chosen = members[rng.permutation(len(members))[:sum(counts)]]
        for part, start, count in zip(parts, np.cumsum([0, *counts[:-1]]), counts):
            part.append(chosen[start:start + count])
    return [np.concatenate(part)[rng.permutation(sum(len(p) for p in part))] for part in parts]


def write_fashion_imagenet(data_dir: Path, root: Path, sizes: DemoDataSizes, seed: int = 0) -> Path:
    """Fashion-MNIST from ``data_dir/fashion-mnist`` as an ImageNet tree at ``root`` (new or empty): see the
    module doc. Returns ``root``."""
    folder = fashion_mnist_dir(Path(data_dir))
    arrays = {key: read_idx(folder / name) for key, name in FASHION_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: {split} images {list(images.shape)} and labels {list(labels.shape)} are not "
                             "[N, rows, cols] and [N]")
        if labels.size and not 0 <= labels.min() <= labels.max() < len(FASHION_NAMES):
            raise ValueError(f"{folder}: {split} labels outside 0..{len(FASHION_NAMES) - 1}")
    rng = np.random.default_rng(seed)
    train, val = balanced_draw(arrays["train_labels"], (sizes.fashion_train, sizes.fashion_val), rng,
                               f"{folder / FASHION_FILES['train_labels']}")
    test_count = min(sizes.fashion_test, len(arrays["test_labels"]))
    test = rng.permutation(len(arrays["test_labels"]))[:test_count]

    def pairs(indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
        return [(arrays["train_images"][i], int(arrays["train_labels"][i])) for i in indices]

    return write_imagenet_layout(root, pairs(train), pairs(val), FASHION_WNIDS, FASHION_NAMES,
                                 test=[arrays["test_images"][i] for i in test])


def one_line(sentence: str) -> str:
    """``sentence`` with every run of whitespace (tabs, line breaks) as one space: a GLUE TSV field."""
    return " ".join(sentence.split())


def write_austen_sst2(data_dir: Path, root: Path, sizes: DemoDataSizes, seed: int = 0) -> Path:
    """Sentences of :data:`AUSTEN_NOVELS` from ``data_dir/janeaustenr/data`` as GLUE's ``SST-2`` folder under the
    GLUE root ``root`` (see the module doc): the same count from each novel in every split, no sentence twice,
    none that both novels hold; rows shuffled. Returns ``root``."""
    novels = read_r_lazyload(austen_dir(Path(data_dir)))
    missing = [name for name in AUSTEN_NOVELS if name not in novels]
    if missing:
        raise ValueError(f"{austen_dir(Path(data_dir))}: the janeaustenr data lacks {missing}")
    sentences = [list(dict.fromkeys(one_line(s) for s in novel_sentences(novels[name]))) for name in AUSTEN_NOVELS]
    shared = set(sentences[0]) & set(sentences[1])
    rng = np.random.default_rng(seed)
    counts = (sizes.austen_train, sizes.austen_dev, sizes.austen_test)
    splits: list[list[tuple[str, int]]] = [[], [], []]
    for label, (name, novel) in enumerate(zip(AUSTEN_NOVELS, sentences)):
        novel = [s for s in novel if s not in shared]
        if len(novel) < sum(counts):
            raise ValueError(f"{name} has {len(novel)} distinct sentences, fewer than the {sum(counts)} asked for")
        chosen = [novel[i] for i in rng.permutation(len(novel))[:sum(counts)]]
        for split, start, count in zip(splits, np.cumsum([0, *counts[:-1]]), counts):
            split.extend((sentence, label) for sentence in chosen[start:start + count])
    train, dev, test = ([rows[i] for i in rng.permutation(len(rows))] for rows in splits)
    folder = Path(root) / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for file, rows in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["sentence\tlabel", *(f"{sentence}\t{label}" for sentence, label in rows)]
        (folder / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["index\tsentence", *(f"{index}\t{sentence}" for index, (sentence, _) in enumerate(test))]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(root)


def unit_sphere(cloud: np.ndarray) -> np.ndarray:
    """``[P, 6]`` points with normals, the points centred on their mean and scaled so the farthest is at 1."""
    xyz = cloud[:, :3] - cloud[:, :3].mean(0)
    return np.concatenate([xyz / np.linalg.norm(xyz, axis=1).max(), cloud[:, 3:]], axis=1)


def write_shapes_modelnet40(root: Path, sizes: DemoDataSizes, seed: int = 0) -> Path:
    """The procedural shapes as ``root/modelnet40_normal_resampled`` (see the module doc), shape ids numbered as
    the archive's (a class's training shapes first, then its test shapes), the lists in class order. Returns
    ``root`` (the benchmark's ``data_root``)."""
    folder = Path(root) / LAYOUT_FOLDERS["normal_resampled"]
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: not empty; write the shapes into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    unnamed = sorted(set(SHAPES) - set(SHAPE_CLASSES))
    if unnamed:
        raise ValueError(f"shapes {unnamed} have no ModelNet40 class name in SHAPE_CLASSES")
    rng = np.random.default_rng(seed)
    classes = sorted(((shape, SHAPE_CLASSES[shape]) for shape in SHAPES), key=lambda item: SHAPE_NAMES.index(item[1]))
    listed: dict[str, list[str]] = {"train": [], "test": []}
    for shape, name in classes:
        (folder / name).mkdir()
        for number in range(1, sizes.shapes_train + sizes.shapes_test + 1):
            shape_id = f"{name}_{number:04d}"
            listed["train" if number <= sizes.shapes_train else "test"].append(shape_id)
            cloud = unit_sphere(shape_point_cloud(shape, sizes.shape_rows, rng, normals=True).astype(np.float64))
            np.savetxt(folder / name / f"{shape_id}.txt", cloud, fmt="%.6f", delimiter=",")
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(SHAPE_NAMES) + "\n", encoding="utf-8")
    for split, ids in listed.items():
        (folder / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return Path(root)


def describe(data: str, sizes: DemoDataSizes) -> str:
    """One line on the data set ``data`` (a key of :data:`DATA_FOLDERS`) as ``sizes`` writes it, for the results
    table: what it is and its training / validation counts (ModelNet40's validation is the benchmark's carve-out)."""
    if data == "fashion":
        return (f"Fashion-MNIST, {len(FASHION_NAMES)} classes, {len(FASHION_NAMES) * sizes.fashion_train} train / "
                f"{len(FASHION_NAMES) * sizes.fashion_val} val")
    if data == "austen":
        return (f"Austen, Pride & Prejudice vs Persuasion, {2 * sizes.austen_train} train / {2 * sizes.austen_dev} "
                "dev")
    if data == "shapes":
        count = sizes.shapes_train  # the benchmark's carve-out of one class's training shapes
        held_out = int(validation_mask([0] * count, [str(i) for i in range(count)],
                                       ModelNet40Settings().validation_fraction, seed=0).sum())
        classes = len(SHAPE_CLASSES)
        return f"synthetic shapes, {classes} classes, {classes * (count - held_out)} train / {classes * held_out} val"
    raise ValueError(f"unknown demo data set {data!r}; expected one of {sorted(DATA_FOLDERS)}")


#: The file, beside the data sets, that says what was written (seed, sizes, one line per data set).
MANIFEST = "demo_data.json"


def write_demo_data(data_dir: Path, out: Path, sizes: DemoDataSizes | None = None, seed: int = 0) -> dict[str, Path]:
    """All three data sets under ``out`` (:data:`DATA_FOLDERS`), from the downloads in ``data_dir``, and
    ``out/demo_data.json`` (:data:`MANIFEST`: the seed, the sizes and :func:`describe`'s line for each); returns
    ``{name: data_root}``. Each folder must be new or empty."""
    sizes = sizes if sizes is not None else DemoDataSizes()
    out = Path(out)
    for name in DATA_FOLDERS.values():
        if (out / name).exists() and any((out / name).iterdir()):
            raise FileExistsError(f"{out / name}: not empty; remove it (or write elsewhere) to write the demo data")
    roots = {"fashion": write_fashion_imagenet(data_dir, out / DATA_FOLDERS["fashion"], sizes, seed),
             "austen": write_austen_sst2(data_dir, out / DATA_FOLDERS["austen"], sizes, seed),
             "shapes": write_shapes_modelnet40(out / DATA_FOLDERS["shapes"], sizes, seed)}
    manifest = {"seed": seed, "sizes": asdict(sizes), "descriptions": {name: describe(name, sizes) for name in roots}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return roots


def read_descriptions(out: Path) -> dict[str, str]:
    """The data sets' lines from ``out/demo_data.json``; a missing file raises naming it and the command that
    writes it."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; write the demo data first (tools/finetune_demo.py data --out "
                                f"{out})")
    return json.loads(path.read_text(encoding="utf-8"))["descriptions"]


__all__ = ["AUSTEN_NOVELS", "DATA_FOLDERS", "FASHION_NAMES", "FASHION_WNIDS", "MANIFEST", "SHAPE_CLASSES",
           "DemoDataSizes", "balanced_draw", "describe", "read_descriptions", "write_austen_sst2", "write_demo_data",
           "write_fashion_imagenet", "write_shapes_modelnet40"]
