"""Embedded demo data: four small shard sets and a tokenizer, built in seconds from data shipped with Python,
scikit-learn and this package (nothing is downloaded). scikit-learn is optional: ``pip install 'itnet_scale[demo]'``.

- ``text``: the paragraphs of the standard library's ``pydoc_data.topics`` (English technical prose);
- ``image``: scikit-learn's 8×8 handwritten digits (``load_digits``), upsampled to ``image_size`` and stored as
  grayscale PNG, ``cls`` = the digit;
- ``image_text``: the same digits with captions from templates that name the digit in words or as a numeral;
- ``points``: procedural meshes (:data:`itnet_scale.data.meshes.SHAPES`) with a random anisotropic scale and
  rotation per sample, surface-sampled to ``num_points`` points, ``cls`` = the shape;
- ``tokenizer``: trained on the training text and captions.

Each set has a held-out counterpart under ``heldout/`` that pretraining never reads (the data config names it as
the stream's ``heldout``): a seeded :data:`HELDOUT_FRACTION` of the paragraphs, the digits and the point clouds.
The held-out digits are held out of both digit sets, so zero-shot classification and retrieval see images the
model never saw, with or without a caption.

The same ``seed`` gives byte-identical output.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from itnet_scale.data.meshes import SHAPES, random_rotation, sample_surface
from itnet_scale.data.shards import ShardSetWriter, npy_bytes, split_documents
from itnet_scale.data.tokenizer import TokenizerConfig, train_tokenizer

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {numeral} written by hand",
    "a small grayscale picture of the digit {numeral}",
    "a scanned image of a handwritten {name}",
    "the digit {name}, drawn with a pen",
    "handwritten {numeral} on a dark background",
)
#: The demo sets, each a subfolder of the output folder, plus ``tokenizer``; their held-out sets are under
#: ``heldout/``.
DEMO_SETS = ("text", "image", "image_text", "points")
HELDOUT_SETS = tuple(f"heldout/{name}" for name in DEMO_SETS)
#: The share of each demo source held out of pretraining: paragraphs, digits, point clouds.
HELDOUT_FRACTION = {"text": 0.05, "digits": 0.2, "points": 0.1}
DEMO_SHARD_SAMPLES = 256


def demo_paragraphs() -> list[str]:
    """The paragraphs of ``pydoc_data.topics`` (topics in sorted order), split as text files are."""
    from pydoc_data.topics import topics

    return [paragraph for name in sorted(topics) for paragraph in split_documents(topics[name])]


def digit_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``[N, image_size, image_size]`` (ink bright, bilinearly upsampled from 8×8
    values 0–16) and their labels ``[N]``. Bilinear, not nearest-neighbour: a nearest-neighbour 4× upsampling makes
    every 4×4 patch one flat pixel, whose per-patch-normalized masked-patch target is all zeros — masked patch
    modeling would learn nothing. Needs scikit-learn (the ``demo`` extra)."""
    try:  # imported here, not with the module: scikit-learn is an optional dependency
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the demo's digit images come from scikit-learn, which could not be imported "
                                  f"({error}): pip install 'itnet_scale[demo]'", name=error.name) from error

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR))
                       for img in small])
    return images, digits.target.astype(np.int64)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_caption(digit: int, rng: np.random.Generator) -> str:
    """A caption for ``digit`` from a template drawn with ``rng``."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(name=DIGIT_NAMES[digit], numeral=digit)


def shape_point_cloud(shape: str, num_points: int, rng: np.random.Generator, *, normals: bool = False) -> np.ndarray:
    """Points ``[num_points, 3]`` float32 on a random instance of ``shape``: per-axis scales in [0.6, 1.4], an
    overall scale in [0.7, 1.3] and a uniform random rotation, applied to the mesh before sampling. ``normals``:
    ``[num_points, 6]``, each point followed by its surface's unit normal (of the transformed mesh)."""
    scale = rng.uniform(0.6, 1.4, size=3) * rng.uniform(0.7, 1.3)
    mesh = SHAPES[shape]().transformed(random_rotation(rng) @ np.diag(scale))
    return sample_surface(mesh, num_points, rng, normals=normals)


def heldout_split(count: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(training, held-out)`` indices into ``count`` items: ``ceil(fraction · count)`` of them, drawn with
    ``rng``, are held out; both in a shuffled order (shards then mix sources)."""
    order = rng.permutation(count)
    held = int(np.ceil(fraction * count))
    return order[held:], order[:held]


def build_demo_data(out_dir: str | Path, *, seed: int = 0, samples_per_kind: int | None = None,
                    point_clouds_per_class: int = 100, num_points: int = 1024, image_size: int = 32,
                    shard_samples: int = DEMO_SHARD_SAMPLES, tokenizer: TokenizerConfig | None = None,
                    overwrite: bool = False) -> dict[str, Path]:
    """Write the demo shard sets to ``out_dir/{text,image,image_text,points}``, their held-out sets to
    ``out_dir/heldout/…`` and the tokenizer to ``out_dir/tokenizer``; return ``{name: folder}`` (names
    :data:`DEMO_SETS`, :data:`HELDOUT_SETS` and ``tokenizer``).

    ``samples_per_kind`` caps every training set, and every held-out set in proportion (default: all 2.6k
    paragraphs, all 1797 digits, and ``point_clouds_per_class`` × 6 shapes, less the held-out shares); shards
    hold ``shard_samples`` samples each. ``tokenizer`` defaults to ``TokenizerConfig()`` (the demo vocabulary);
    its ``inputs`` are replaced by the training text and caption sets.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    split_rng, caption_rng, points_rng = rng.spawn(3)
    options = {"max_count": shard_samples, "max_bytes": None, "overwrite": overwrite}
    folders = {name: out_dir / name for name in (*DEMO_SETS, *HELDOUT_SETS, "tokenizer")}

    def capped(indices: np.ndarray, source: str, heldout: bool) -> np.ndarray:
        if samples_per_kind is None:
            return indices
        fraction = HELDOUT_FRACTION[source]
        return indices[: int(np.ceil(samples_per_kind * fraction)) if heldout else samples_per_kind]

    images, labels = digit_images(image_size)  # first: without scikit-learn, nothing is written
    paragraphs = demo_paragraphs()
    shapes = list(SHAPES)
    shape_labels = np.tile(np.arange(len(shapes)), point_clouds_per_class)
    splits = {"text": heldout_split(len(paragraphs), HELDOUT_FRACTION["text"], split_rng),
              "digits": heldout_split(len(labels), HELDOUT_FRACTION["digits"], split_rng),
              "points": heldout_split(len(shape_labels), HELDOUT_FRACTION["points"], split_rng)}
    source = "sklearn.datasets.load_digits"
    classes = [str(d) for d in range(10)]
    points_info = {"source": "itnet_scale.data.meshes", "classes": shapes, "num_points": num_points}
    for part, prefix in ((0, ""), (1, "heldout/")):
        text, digits, clouds = (capped(splits[k][part], k, heldout=part == 1) for k in ("text", "digits", "points"))
        with ShardSetWriter(folders[f"{prefix}text"], "text", info={"source": "pydoc_data.topics"},
                            **options) as writer:
            for index in text:
                writer.write({"txt": paragraphs[index]})
        with ShardSetWriter(folders[f"{prefix}image"], "image", info={"source": source, "classes": classes},
                            **options) as writer:
            for index in digits:
                writer.write({"png": _png(images[index]), "cls": str(labels[index])})
        with ShardSetWriter(folders[f"{prefix}image_text"], "image_text", info={"source": source},
                            **options) as writer:
            for index in digits:
                writer.write({"png": _png(images[index]), "txt": digit_caption(int(labels[index]), caption_rng)})
        with ShardSetWriter(folders[f"{prefix}points"], "points", info=points_info, **options) as writer:
            for index in clouds:
                points = shape_point_cloud(shapes[shape_labels[index]], num_points, points_rng)
                writer.write({"npy": npy_bytes(points), "cls": str(shape_labels[index])})

    config = replace(tokenizer or TokenizerConfig(), inputs=[str(folders["text"]), str(folders["image_text"])])
    train_tokenizer(config, folders["tokenizer"])
    return folders
