"""Embedded demo data: four small shard sets and a tokenizer, built in seconds from data shipped with Python,
scikit-learn and this package (nothing is downloaded). scikit-learn is optional: ``pip install 'itnet_scale[demo]'``.

- ``text``: the paragraphs of the standard library's ``pydoc_data.topics`` (English technical prose);
- ``image``: scikit-learn's 8×8 handwritten digits (``load_digits``), upsampled to ``image_size`` and stored as
  grayscale PNG, ``cls`` = the digit;
- ``image_text``: the same digits with captions from templates that name the digit in words or as a numeral;
- ``points``: procedural meshes (:data:`itnet_scale.data.meshes.SHAPES`) with a random anisotropic scale and
  rotation per sample, surface-sampled to ``num_points`` points, ``cls`` = the shape;
- ``tokenizer``: trained on the text and the captions.

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
#: The demo sets, each a subfolder of the output folder, plus ``tokenizer``.
DEMO_SETS = ("text", "image", "image_text", "points")
DEMO_SHARD_SAMPLES = 256


def demo_paragraphs() -> list[str]:
    """The paragraphs of ``pydoc_data.topics`` (topics in sorted order), split as text files are."""
    from pydoc_data.topics import topics

    return [paragraph for name in sorted(topics) for paragraph in split_documents(topics[name])]


def digit_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``[N, image_size, image_size]`` (ink bright, nearest-neighbour upsampled
    from 8×8 values 0–16) and their labels ``[N]``. Needs scikit-learn (the ``demo`` extra)."""
    try:  # imported here, not with the module: scikit-learn is an optional dependency
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the demo's digit images come from scikit-learn, which could not be imported "
                                  f"({error}): pip install 'itnet_scale[demo]'", name=error.name) from error

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.NEAREST))
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


def shape_point_cloud(shape: str, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Points ``[num_points, 3]`` float32 on a random instance of ``shape``: per-axis scales in [0.6, 1.4], an
    overall scale in [0.7, 1.3] and a uniform random rotation, applied to the mesh before sampling."""
    scale = rng.uniform(0.6, 1.4, size=3) * rng.uniform(0.7, 1.3)
    mesh = SHAPES[shape]().transformed(random_rotation(rng) @ np.diag(scale))
    return sample_surface(mesh, num_points, rng)


def build_demo_data(out_dir: str | Path, *, seed: int = 0, samples_per_kind: int | None = None,
                    point_clouds_per_class: int = 100, num_points: int = 1024, image_size: int = 32,
                    shard_samples: int = DEMO_SHARD_SAMPLES, tokenizer: TokenizerConfig | None = None,
                    overwrite: bool = False) -> dict[str, Path]:
    """Write the demo shard sets to ``out_dir/{text,image,image_text,points}`` and the tokenizer to
    ``out_dir/tokenizer``; return ``{name: folder}``.

    ``samples_per_kind`` caps every set (default: all 2.6k paragraphs, all 1797 digits, and
    ``point_clouds_per_class`` × 6 shapes); shards hold ``shard_samples`` samples each. ``tokenizer`` defaults to
    ``TokenizerConfig()`` (the demo vocabulary); its ``inputs`` are replaced by the text and caption sets.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    text_rng, caption_rng, points_rng = rng.spawn(3)
    options = {"max_count": shard_samples, "max_bytes": None, "overwrite": overwrite}
    cap = slice(None) if samples_per_kind is None else slice(samples_per_kind)
    folders = {name: out_dir / name for name in (*DEMO_SETS, "tokenizer")}

    images, labels = digit_images(image_size)  # first: without scikit-learn, nothing is written
    paragraphs = demo_paragraphs()
    order = text_rng.permutation(len(paragraphs))  # mix topics across shards
    with ShardSetWriter(folders["text"], "text", info={"source": "pydoc_data.topics"}, **options) as writer:
        for index in order[cap]:
            writer.write({"txt": paragraphs[index]})

    source = "sklearn.datasets.load_digits"
    classes = [str(d) for d in range(10)]
    with ShardSetWriter(folders["image"], "image", info={"source": source, "classes": classes}, **options) as writer:
        for image, label in zip(images[cap], labels[cap]):
            writer.write({"png": _png(image), "cls": str(label)})
    with ShardSetWriter(folders["image_text"], "image_text", info={"source": source}, **options) as writer:
        for image, label in zip(images[cap], labels[cap]):
            writer.write({"png": _png(image), "txt": digit_caption(int(label), caption_rng)})

    shapes = list(SHAPES)
    labels = np.tile(np.arange(len(shapes)), point_clouds_per_class)[cap]
    info = {"source": "itnet_scale.data.meshes", "classes": shapes, "num_points": num_points}
    with ShardSetWriter(folders["points"], "points", info=info, **options) as writer:
        for label in labels:
            points = shape_point_cloud(shapes[label], num_points, points_rng)
            writer.write({"npy": npy_bytes(points), "cls": str(label)})

    config = replace(tokenizer or TokenizerConfig(), inputs=[str(folders["text"]), str(folders["image_text"])])
    train_tokenizer(config, folders["tokenizer"])
    return folders
