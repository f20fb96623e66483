"""The fine-tuning demo's five data sets, each written in the layout its benchmark reads from the real download:

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
- **easyvqa** (``vqav2``): easy-VQA (PyPI ``easy-vqa``), SYNTHETIC 64×64 RGB images of one coloured shape with
  generated questions ("what color is the triangle?", "is there not a circle?"), one answer each, from 13 answers
  (``yes``, ``no``, 3 shapes, 8 colours; no numbers). Written as VQA v2's files
  (:func:`~itnet_scale.tasks.vqa.write_vqa_layout`): ``train2014`` a seeded draw of its training questions,
  ``val2014`` and ``test2015`` draws from its test questions over disjoint halves of its test images, and
  ``test-dev2015`` a seeded half of the ``test2015`` questions (the real test-dev is a subset of test-standard).
  Each question's ten annotator answers are its one answer ten times (no invented disagreement: every question
  scores 0 or 1); easy-VQA's answers are already what VQA's normalization makes of them (lower case, no
  punctuation; checked), which matters because the 2021 evaluation compares ten equal answers unnormalized.
  ``answer_type`` is ``yes/no`` for yes/no answers, else ``other``; ``question_type`` the longest of VQA's own
  question types that starts the question (:data:`EASY_VQA_QUESTION_TYPES`: ``what color is the``, ``is there``).
- **fashion_pairs** (``nlvr2``): DERIVED from Fashion-MNIST: pairs of its real photos with a templated statement
  about the pair (:func:`fashion_statements`; the demo's are the five forms about footwear,
  :data:`DEMO_PAIR_THINGS`: "The left image shows footwear.", "Both images show footwear.", "Exactly one image
  shows footwear.", "Neither image shows footwear."; the full set adds every class and "The two images show the
  same kind of item.") and
  whether it is true of the pair's labels, written as the NLVR2 release's files
  (:func:`~itnet_scale.tasks.nlvr2.write_nlvr2_layout`). As in the release, a set is one sentence over 4 pairs
  (identifiers ``<split>-<set>-<pair>-0``), so consistency scores a sentence across its pairs; each set holds 2
  true and 2 false pairs (labels balanced). ``train`` and ``dev`` draw images from disjoint class-balanced pools
  of the training file, ``test1`` (test-P, labelled) from its test file; images may recur in several pairs of a
  split; they are written as 28×28 RGB PNGs (the gray channel three times).

Every draw is seeded; the same seed writes the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import easy_vqa
import numpy as np
from PIL import Image

from comparison.readers import read_idx, read_r_lazyload
from comparison.tasks import FASHION_FILES, austen_dir, fashion_mnist_dir, novel_sentences
from itnet_scale.data.demo import shape_point_cloud
from itnet_scale.data.meshes import SHAPES
from itnet_scale.tasks.imagenet import write_imagenet_layout
from itnet_scale.tasks.modelnet40 import LAYOUT_FOLDERS, SHAPE_NAMES, ModelNet40Settings, validation_mask
from itnet_scale.tasks.nlvr2 import Nlvr2Item, write_nlvr2_layout
from itnet_scale.tasks.vqa import ANSWERS_PER_QUESTION, VQAQuestion, normalize_answer, write_vqa_layout

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
DATA_FOLDERS = {"fashion": "fashion-imagenet", "austen": "austen-glue", "shapes": "shapes-modelnet40",
                "easyvqa": "easyvqa-vqav2", "fashion_pairs": "fashion-nlvr2"}


@dataclass(frozen=True)
class DemoDataSizes:
    """How much each data set holds: per class (Fashion-MNIST, shapes) or per novel (Austen), for training and
    validation; ``*_test``: the unlabelled (ImageNet, SST-2) or official test (ModelNet40) split. ModelNet40 has
    no validation files: its benchmark holds out 10% of ``shapes_train`` per class. ``shape_rows``: points stored
    per shape (at least the benchmark's 1024). ``vqa_*``: easy-VQA questions in train2014, val2014 and test2015
    (test-dev2015: half of the latter). ``pairs_*_sets``: NLVR2 sets (4 pairs each) in train, dev and test1;
    ``pairs_*_pool``: the Fashion-MNIST images per class their pairs are drawn from."""

    fashion_train: int = 200
    fashion_val: int = 100
    fashion_test: int = 200
    austen_train: int = 1000
    austen_dev: int = 300
    austen_test: int = 200
    shapes_train: int = 200
    shapes_test: int = 50
    shape_rows: int = 1024
    vqa_train: int = 2000
    vqa_val: int = 1000
    vqa_test: int = 500
    pairs_train_sets: int = 500
    pairs_dev_sets: int = 150
    pairs_test_sets: int = 100
    pairs_train_pool: int = 200
    pairs_dev_pool: int = 50
    pairs_test_pool: int = 50

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


def read_fashion_mnist(data_dir: Path) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four idx files from ``data_dir/fashion-mnist`` (keys of ``FASHION_FILES``: images
    ``[N, 28, 28]`` uint8, labels ``[N]``), checked for shape and label range."""
    folder = fashion_mnist_dir(Path(data_dir))
    arrays = {key: read_idx(folder / name) for key, name in FASHION_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: {split} images {list(images.shape)} and labels {list(labels.shape)} are not "
                             "[N, rows, cols] and [N]")
        if labels.size and not 0 <= labels.min() <= labels.max() < len(FASHION_NAMES):
            raise ValueError(f"{folder}: {split} labels outside 0..{len(FASHION_NAMES) - 1}")
    return arrays


def write_fashion_imagenet(data_dir: Path, root: Path, sizes: DemoDataSizes, seed: int = 0) -> Path:
    """Fashion-MNIST from ``data_dir/fashion-mnist`` as an ImageNet tree at ``root`` (new or empty): see the
    module doc. Returns ``root``."""
    folder = fashion_mnist_dir(Path(data_dir))
    arrays = read_fashion_mnist(data_dir)
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


#: VQA v2's question types (of the 65 in its files) that easy-VQA's questions start with, longest first: a
#: question's type is the first that starts it (``is there not a circle?`` → ``is there``).
EASY_VQA_QUESTION_TYPES = ("what color is the", "what is the", "is there a", "does the", "is there", "what", "is")
#: easy-VQA's question subsets: (questions, image paths).
EASY_VQA_SOURCES = {"train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
                    "test": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths)}


def vqa_question_type(question: str) -> str:
    """The first of :data:`EASY_VQA_QUESTION_TYPES` whose words start ``question``; VQA's ``none of the above``
    if none does."""
    words = question.lower().rstrip("?").split()
    return next((kind for kind in EASY_VQA_QUESTION_TYPES if words[:len(kind.split())] == kind.split()),
                "none of the above")


def vqa_answer_type(answer: str) -> str:
    """VQA's answer type of an answer: ``yes/no``, ``number`` (digits) or ``other``."""
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def read_easy_vqa(subset: str) -> tuple[list[tuple[str, str, int]], dict[int, str]]:
    """easy-VQA's ``train`` or ``test`` questions as ``(question, answer, image id)`` in its file order, and image
    id → PNG path. An answer that VQA's normalization would change raises naming it (see the module doc)."""
    questions_of, paths_of = EASY_VQA_SOURCES[subset]
    texts, answers, image_ids = questions_of()
    for answer in sorted(set(answers)):
        if normalize_answer(answer) != answer:
            raise ValueError(f"easy-VQA answer {answer!r} is not in VQA's normal form ({normalize_answer(answer)!r}):"
                             " ten equal answers are compared unnormalized")
    return list(zip(texts, answers, (int(i) for i in image_ids))), {int(k): v for k, v in paths_of().items()}


def _vqa_questions(rows: Sequence[tuple[str, str, int]], annotated: bool) -> list[VQAQuestion]:
    """``rows`` as VQA questions: the answer given by all ten annotators (``annotated``), or no answers."""
    return [VQAQuestion(image_id, text, [answer] * ANSWERS_PER_QUESTION if annotated else None,
                        answer_type=vqa_answer_type(answer), question_type=vqa_question_type(text))
            for text, answer, image_id in rows]


def write_easyvqa_vqav2(root: Path, sizes: DemoDataSizes, seed: int = 0) -> Path:
    """easy-VQA as VQA v2's question, annotation and image files at ``root`` (see the module doc); the questions
    keep easy-VQA's order (grouped by image) and COCO's question ids (image id · 1000 + k). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    train, train_paths = read_easy_vqa("train")
    test, test_paths = read_easy_vqa("test")
    if sizes.vqa_train > len(train):
        raise ValueError(f"DemoDataSizes.vqa_train: easy-VQA has {len(train)} training questions, fewer than "
                         f"{sizes.vqa_train}")
    test_images = np.asarray(sorted({image_id for _, _, image_id in test}))
    val_images = set(test_images[rng.permutation(len(test_images))[:len(test_images) // 2]].tolist())
    val_pool = [row for row in test if row[2] in val_images]
    test_pool = [row for row in test if row[2] not in val_images]
    for key, count, pool in (("vqa_val", sizes.vqa_val, val_pool), ("vqa_test", sizes.vqa_test, test_pool)):
        if count > len(pool):
            raise ValueError(f"DemoDataSizes.{key}: half of easy-VQA's test images have {len(pool)} questions, "
                             f"fewer than {count}")

    def draw(rows: list[tuple[str, str, int]], count: int) -> list[tuple[str, str, int]]:
        return [rows[i] for i in sorted(rng.permutation(len(rows))[:count])]  # file order kept

    chosen = {"train": draw(train, sizes.vqa_train), "validation": draw(val_pool, sizes.vqa_val),
              "test": draw(test_pool, sizes.vqa_test)}
    chosen["test-dev"] = draw(chosen["test"], (sizes.vqa_test + 1) // 2)
    for split, rows in chosen.items():
        paths = train_paths if split == "train" else test_paths
        images = {}
        for image_id in sorted({image_id for _, _, image_id in rows}):
            with Image.open(paths[image_id]) as image:
                images[image_id] = image.convert("RGB")
        write_vqa_layout(root, split, _vqa_questions(rows, annotated=split in ("train", "validation")), images)
    return root


#: Fashion-MNIST's classes as the statements name them, in label order.
FASHION_PHRASES = ("a t-shirt", "trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt", "a sneaker",
                   "a bag", "an ankle boot")
#: Groups of classes the statements name besides the classes: footwear (sandal, sneaker, ankle boot) and the
#: garments worn on the upper body (t-shirt, pullover, coat, shirt).
FASHION_GROUPS = {"footwear": (5, 7, 9), "clothing for the upper body": (0, 2, 4, 6)}
#: The sentence forms about one thing (a class or a group) and when each is true, given whether the left and the
#: right image show it.
THING_FORMS = (("The left image shows {}.", lambda left, right: left),
               ("The right image shows {}.", lambda left, right: right),
               ("Both images show {}.", lambda left, right: left & right),
               ("Exactly one image shows {}.", lambda left, right: left ^ right),
               ("Neither image shows {}.", lambda left, right: ~left & ~right))
PAIRS_PER_SET = 4


def fashion_statements(things: Sequence[str] | None = None,
                       same_or_different: bool = True) -> tuple[tuple[str, np.ndarray], ...]:
    """Statements about a pair and their truth tables ``[10, 10]`` bool over (left label, right label): each of
    :data:`THING_FORMS` about each of ``things`` (class phrases of :data:`FASHION_PHRASES` or groups of
    :data:`FASHION_GROUPS`; None: all 12) and, with ``same_or_different``, whether the two images show the same or
    different classes. Each is true of some label pairs and false of others."""
    labels = np.arange(len(FASHION_PHRASES))
    known = {phrase: np.array([label]) for label, phrase in enumerate(FASHION_PHRASES)}
    known |= {phrase: np.array(members) for phrase, members in FASHION_GROUPS.items()}
    unknown = [thing for thing in things or () if thing not in known]
    if unknown:
        raise ValueError(f"unknown things {unknown}; statements are about {sorted(known)}")
    things = [(phrase, known[phrase]) for phrase in (known if things is None else things)]
    statements = []
    for form, truth in THING_FORMS:
        for phrase, members in things:
            shows = np.isin(labels, members)
            table = np.broadcast_to(truth(shows[:, None], shows[None, :]), (len(labels), len(labels)))
            statements.append((form.format(phrase), table.copy()))  # (the left/right forms read one axis)
    if same_or_different:
        same = labels[:, None] == labels[None, :]
        statements += [("The two images show the same kind of item.", same),
                       ("The two images show different kinds of item.", ~same)]
    return tuple(statements)


#: The demo's statements: the five forms about footwear ("The left image shows footwear.", "Exactly one image
#: shows footwear." ...). Reading which image a form asks about is learned within the demo's budget; binding a
#: class word to what it looks like, which all 62 statements of :func:`fashion_statements` need, is not (every run
#: stayed at chance on them, 2000 examples, 186 steps).
DEMO_PAIR_THINGS = ("footwear",)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A gray ``[H, W]`` uint8 image as ``[H, W, 3]``."""
    return np.repeat(image[..., None], 3, axis=2)


def fashion_pair_items(split: str, sets: int, images: np.ndarray, pools: Sequence[np.ndarray],
                       rng: np.random.Generator,
                       statements: Sequence[tuple[str, np.ndarray]]) -> list[Nlvr2Item]:
    """``sets`` NLVR2 sets of ``split``: each a random one of ``statements`` (:func:`fashion_statements`) over
    :data:`PAIRS_PER_SET` pairs, half of them true, in random order. A pair's labels are drawn uniformly from the
    label pairs of which the statement has the wanted truth value, its images from ``pools[label]`` (indices into
    ``images`` ``[N, 28, 28]``; two different images when both labels are the same)."""
    name = {"train": "train", "validation": "dev", "test-P": "test1"}[split]
    items = []
    for number in range(sets):
        sentence, table = statements[rng.integers(len(statements))]
        truths = rng.permutation([True, False] * (PAIRS_PER_SET // 2))
        for pair, truth in enumerate(truths):
            choices = np.argwhere(table == truth)
            left, right = choices[rng.integers(len(choices))]
            if left == right:
                first, second = rng.choice(pools[left], 2, replace=False)
            else:
                first, second = rng.choice(pools[left]), rng.choice(pools[right])
            items.append(Nlvr2Item(f"{name}-{number}-{pair}-0", sentence, bool(truth), _rgb(images[first]),
                                   _rgb(images[second])))
    return items


def write_fashion_nlvr2(data_dir: Path, root: Path, sizes: DemoDataSizes, seed: int = 0,
                        things: Sequence[str] | None = DEMO_PAIR_THINGS) -> Path:
    """Fashion-MNIST pairs and statements (the forms about ``things``: :func:`fashion_statements`; None: all 62
    statements) as NLVR2's ``data/{train,dev,test1}.json`` and images at ``root`` (see the module doc). Returns
    ``root``."""
    statements = fashion_statements(things, same_or_different=things is None)
    folder = fashion_mnist_dir(Path(data_dir))
    arrays = read_fashion_mnist(data_dir)
    if sizes.pairs_train_pool < 2 or sizes.pairs_dev_pool < 2 or sizes.pairs_test_pool < 2:
        raise ValueError("DemoDataSizes.pairs_*_pool must be >= 2 (a pair of one class shows two images of it)")
    rng = np.random.default_rng(seed)
    train_pool, dev_pool = balanced_draw(arrays["train_labels"], (sizes.pairs_train_pool, sizes.pairs_dev_pool), rng,
                                         f"{folder / FASHION_FILES['train_labels']}")
    (test_pool,) = balanced_draw(arrays["test_labels"], (sizes.pairs_test_pool,), rng,
                                 f"{folder / FASHION_FILES['test_labels']}")
    for split, sets, pool, file in (("train", sizes.pairs_train_sets, train_pool, "train"),
                                    ("validation", sizes.pairs_dev_sets, dev_pool, "train"),
                                    ("test-P", sizes.pairs_test_sets, test_pool, "test")):
        labels = arrays[f"{file}_labels"]
        by_label = [np.sort(pool[labels[pool] == label]) for label in range(len(FASHION_NAMES))]
        items = fashion_pair_items(split, sets, arrays[f"{file}_images"], by_label, rng, statements)
        write_nlvr2_layout(root, split, items)
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
    if data == "easyvqa":
        return (f"easy-VQA, synthetic shapes, {len(easy_vqa.get_answers())} answers, {sizes.vqa_train} train / "
                f"{sizes.vqa_val} val questions")
    if data == "fashion_pairs":
        return (f"Fashion-MNIST pairs + statements about {' and '.join(DEMO_PAIR_THINGS)}, "
                f"{PAIRS_PER_SET * sizes.pairs_train_sets} train / {PAIRS_PER_SET * sizes.pairs_dev_sets} dev")
    raise ValueError(f"unknown demo data set {data!r}; expected one of {sorted(DATA_FOLDERS)}")


#: The file, beside the data sets, that says what was written (seed, sizes, one line per data set).
MANIFEST = "demo_data.json"


def write_demo_data(data_dir: Path, out: Path, sizes: DemoDataSizes | None = None, seed: int = 0) -> dict[str, Path]:
    """All five data sets under ``out`` (:data:`DATA_FOLDERS`), from the downloads in ``data_dir``, and
    ``out/demo_data.json`` (:data:`MANIFEST`: the seed, the sizes and :func:`describe`'s line for each); returns
    ``{name: data_root}``. Each folder must be new or empty."""
    sizes = sizes if sizes is not None else DemoDataSizes()
    out = Path(out)
    for name in DATA_FOLDERS.values():
        if (out / name).exists() and any((out / name).iterdir()):
            raise FileExistsError(f"{out / name}: not empty; remove it (or write elsewhere) to write the demo data")
    roots = {"fashion": write_fashion_imagenet(data_dir, out / DATA_FOLDERS["fashion"], sizes, seed),
             "austen": write_austen_sst2(data_dir, out / DATA_FOLDERS["austen"], sizes, seed),
             "shapes": write_shapes_modelnet40(out / DATA_FOLDERS["shapes"], sizes, seed),
             "easyvqa": write_easyvqa_vqav2(out / DATA_FOLDERS["easyvqa"], sizes, seed),
             "fashion_pairs": write_fashion_nlvr2(data_dir, out / DATA_FOLDERS["fashion_pairs"], sizes, seed)}
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


__all__ = ["AUSTEN_NOVELS", "DATA_FOLDERS", "DEMO_PAIR_THINGS", "EASY_VQA_QUESTION_TYPES", "FASHION_GROUPS",
           "FASHION_NAMES", "FASHION_PHRASES", "FASHION_WNIDS", "MANIFEST", "PAIRS_PER_SET", "SHAPE_CLASSES",
           "THING_FORMS", "DemoDataSizes", "balanced_draw", "describe", "fashion_pair_items", "fashion_statements",
           "read_descriptions", "read_easy_vqa", "read_fashion_mnist", "vqa_answer_type", "vqa_question_type",
           "write_austen_sst2", "write_demo_data", "write_easyvqa_vqav2", "write_fashion_imagenet",
           "write_fashion_nlvr2", "write_shapes_modelnet40"]
