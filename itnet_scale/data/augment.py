"""Fine-tuning augmentations: timm's image crops and flips, mixup/cutmix with soft targets and label smoothing, and
point-cloud dropout, rotation, scaling, translation and jitter.

**Reproducible by construction.** Every draw comes from an explicit ``numpy.random.Generator`` argument; nothing
reads a global RNG. Seeding a sample's generator from its position — ``np.random.default_rng([seed, epoch, index])``
for a sample's transform, ``[seed, step]`` for a batch's mix — makes each augmentation a function of (seed,
position) alone, which a resumed run (with any number of DataLoader workers) reproduces exactly. numpy generators
rather than ``torch.Generator``: mixing draws Beta variates, which torch cannot draw from an explicit generator.

**Images** come in as the stream decodes them (:func:`itnet_scale.data.stream.decode_sample`): uint8 ``[C, H, W]``
(numpy or torch) with C = 1 (L) or 3 (RGB). They leave as float32 ``[channels, size, size]``: pixels scaled to
[0, 1] (as pretraining feeds them), then ``(x - mean) / std``. Crops and resampling are PIL's. torchvision is not
used: its wheels are built against a CUDA build of torch, which a CPU install of the project does not have. On
PIL images torchvision's ``RandomResizedCrop``, ``Resize`` and ``CenterCrop`` make these same PIL calls (crop,
then ``Image.resize``), so the pixels match timm's pipeline given the same draws.

**Mixing** (timm's ``Mixup``, batch mode): with probability ``prob`` a batch is mixed with its mirror
(``images.flip(0)``) by mixup (a convex blend) or cutmix (a box pasted from the mirror; its area corrects λ);
targets are the same blend of both label sets' smoothed one-hots, so each row sums to 1.

**Points** (float32 ``[P, 3]`` in and out): PointNet++'s dropout (dropped points become copies of the first),
rotation about the up axis or uniform over SO(3), isotropic or per-axis scaling, translation, clipped Gaussian
jitter — applied in that order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: PIL's resampling filter for each ``interpolation`` setting.
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
ROTATIONS = ("none", "up", "so3")
AXES = ("x", "y", "z")
#: Tries at a random-resized-crop box before the center-crop fallback (torchvision's and timm's 10).
CROP_ATTEMPTS = 10


def _check_range(key: str, values: Sequence[float], low: float, high: float | None) -> None:
    """``ValueError`` naming ``key`` unless ``values`` is ``[lo, hi]`` with ``low < lo <= hi`` (``<= high``)."""
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{key} must be [low, high] (two finite numbers), got {list(values)}")
    lo, hi = values
    if not low < lo <= hi or (high is not None and hi > high):
        bound = f" <= {high}" if high is not None else ""
        raise ValueError(f"{key} must satisfy {low} < low <= high{bound}, got {list(values)}")


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be in [0, 1], got {value}")


@dataclass
class ImageAugmentSettings:
    """Image transforms (timm's ImageNet recipe). Training: random-resized-crop to ``size`` × ``size`` (area share
    in ``scale``, aspect ratio w/h in ``ratio``), then a horizontal flip with probability ``hflip``. Evaluation:
    resize the shorter side to ``floor(size / crop_pct)``, center-crop ``size``. ``interpolation``: ``bicubic`` or
    ``bilinear``. ``channels``: 3 (L images are repeated) or 1 (RGB become luma). ``mean``/``std``: per channel,
    on pixels in [0, 1]; the defaults leave the pixels as pretraining saw them (timm's ImageNet normalization is
    ``mean: [0.485, 0.456, 0.406]``, ``std: [0.229, 0.224, 0.225]``, for a backbone pretrained with it)."""

    size: int = 224
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"augment.image.size must be >= 1, got {self.size}")
        _check_range("augment.image.scale", self.scale, 0.0, 1.0)
        _check_range("augment.image.ratio", self.ratio, 0.0, None)
        _check_probability("augment.image.hflip", self.hflip)
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"augment.image.crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in RESAMPLING:
            raise ValueError(f"augment.image.interpolation must be one of {sorted(RESAMPLING)}, "
                             f"got {self.interpolation!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"augment.image.channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels or not all(math.isfinite(v) for v in values):
                raise ValueError(f"augment.image.{name} must hold {self.channels} finite numbers (one per channel), "
                                 f"got {list(values)}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"augment.image.std must be > 0 per channel, got {list(self.std)}")


@dataclass
class MixSettings:
    """Mixup and cutmix (timm's ``Mixup``, batch mode). A batch is mixed with probability ``prob``: by cutmix with
    probability ``switch_prob`` when both alphas are > 0, else by the one that is; λ ~ Beta(alpha, alpha).
    ``correct_lam``: λ becomes 1 − (the cutmix box's area share, after clipping at the border).
    ``label_smoothing``: folded into the targets (each one-hot becomes ``1 − s + s/classes`` on the label, ``s/classes``
    elsewhere), mixed or not. Both alphas 0 (the default, as timm's ``train.py``): no mixing, smoothed targets only."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    correct_lam: bool = True
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"augment.mix.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        _check_probability("augment.mix.prob", self.prob)
        _check_probability("augment.mix.switch_prob", self.switch_prob)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"augment.mix.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def enabled(self) -> bool:
        """Whether a batch can be mixed at all."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass
class PointAugmentSettings:
    """Point-cloud transforms, in this order: ``max_dropout``: each cloud drops a share drawn from
    [0, max_dropout) of its points (PointNet++: they become copies of the first point, so P stays); ``rotation``:
    ``none``, ``up`` (a uniform angle about ``up_axis``; ModelNet40 is y-up) or ``so3`` (uniform over all
    rotations); ``scale``: factor range, one per cloud or one per axis (``anisotropic``); ``translate``: a uniform
    shift in [−t, t] per axis; ``jitter_sigma``/``jitter_clip``: per-coordinate Gaussian noise clipped to
    ±clip (0 = off). The defaults are Point-BERT's ModelNet40 recipe (per-axis scale in [2/3, 3/2], shift ±0.2)."""

    max_dropout: float = 0.0
    rotation: str = "none"
    up_axis: str = "y"
    scale: list[float] = field(default_factory=lambda: [2 / 3, 3 / 2])
    anisotropic: bool = True
    translate: float = 0.2
    jitter_sigma: float = 0.0
    jitter_clip: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_dropout < 1.0:
            raise ValueError(f"augment.points.max_dropout must be in [0, 1), got {self.max_dropout}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"augment.points.rotation must be one of {list(ROTATIONS)}, got {self.rotation!r}")
        if self.up_axis not in AXES:
            raise ValueError(f"augment.points.up_axis must be one of {list(AXES)}, got {self.up_axis!r}")
        _check_range("augment.points.scale", self.scale, 0.0, None)
        for name in ("translate", "jitter_sigma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"augment.points.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not (math.isfinite(self.jitter_clip) and self.jitter_clip > 0):
            raise ValueError(f"augment.points.jitter_clip must be > 0, got {self.jitter_clip}")


@dataclass
class AugmentSettings:
    """A fine-tuning config's ``augment`` section: ``image``, ``mix`` and ``points``."""

    image: ImageAugmentSettings = field(default_factory=ImageAugmentSettings)
    mix: MixSettings = field(default_factory=MixSettings)
    points: PointAugmentSettings = field(default_factory=PointAugmentSettings)


# --- Images -----------------------------------------------------------------------------------------------------


class CropBox(NamedTuple):
    """A crop in pixels: rows ``top … top + height``, columns ``left … left + width``."""

    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: np.random.Generator) -> CropBox:
    """torchvision's ``RandomResizedCrop.get_params`` on an image of ``height`` × ``width``: up to 10 tries at an
    area share uniform in ``scale`` and an aspect ratio (w/h) log-uniform in ``ratio`` that fits; else the largest
    center crop whose aspect ratio is clamped into ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def _as_pil(image: np.ndarray | Tensor, channels: int) -> Image.Image:
    """uint8 ``[C, H, W]`` (C = 1 or 3) as a PIL image of ``channels`` channels (``L`` or ``RGB``)."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] not in (1, 3) or 0 in array.shape:
        raise ValueError(f"image must be uint8 [C, H, W] with C = 1 or 3 (as the stream decodes images), got "
                         f"{array.dtype} {list(array.shape)}")
    pil = Image.fromarray(array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0)))
    mode = "RGB" if channels == 3 else "L"
    return pil if pil.mode == mode else pil.convert(mode)


def _normalized(pil: Image.Image, settings: ImageAugmentSettings) -> Tensor:
    """float32 ``[C, H, W]``: pixels / 255, then ``(x - mean) / std`` per channel."""
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32).reshape(pil.height, pil.width, -1))
    pixels = pixels.permute(2, 0, 1) / 255.0
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(-1, 1, 1)
    return ((pixels - mean) / std).contiguous()


def train_image_transform(image: np.ndarray | Tensor, settings: ImageAugmentSettings,
                          rng: np.random.Generator) -> Tensor:
    """Training view of ``image`` (uint8 ``[C, H, W]``): random-resized-crop to ``size`` × ``size``, horizontal
    flip with probability ``hflip``, normalized → float32 ``[channels, size, size]``. Draws from ``rng`` only
    (the crop's tries, then one flip draw)."""
    pil = _as_pil(image, settings.channels)
    box = random_resized_crop_box(pil.height, pil.width, settings.scale, settings.ratio, rng)
    pil = pil.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    pil = pil.resize((settings.size, settings.size), RESAMPLING[settings.interpolation])
    if rng.random() < settings.hflip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalized(pil, settings)


def eval_image_transform(image: np.ndarray | Tensor, settings: ImageAugmentSettings) -> Tensor:
    """Evaluation view of ``image`` (uint8 ``[C, H, W]``), no randomness: the shorter side resized to
    ``floor(size / crop_pct)`` (the longer in proportion, truncated), the central ``size`` × ``size`` cropped,
    normalized → float32 ``[channels, size, size]``."""
    pil = _as_pil(image, settings.channels)
    short_side = math.floor(settings.size / settings.crop_pct)
    width, height = pil.size
    if width <= height:
        resized = (short_side, int(short_side * height / width))
    else:
        resized = (int(short_side * width / height), short_side)
    if resized != pil.size:
        pil = pil.resize(resized, RESAMPLING[settings.interpolation])
    top = round((pil.height - settings.size) / 2)
    left = round((pil.width - settings.size) / 2)
    pil = pil.crop((left, top, left + settings.size, top + settings.size))
    return _normalized(pil, settings)


# --- Mixing -------------------------------------------------------------------------------------------------------


class MixDraw(NamedTuple):
    """One batch's mix: ``lam``, the weight of each sample's own image and label (1: unmixed), and for cutmix the
    ``box`` ``(top, bottom, left, right)`` (rows ``top:bottom``, columns ``left:right``) taken from the mirror."""

    lam: float
    box: tuple[int, int, int, int] | None = None


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of ``int(side × √(1 − lam))`` per side (halved each way from a uniform
    center, so its sides are rounded down to even), clipped at the border → ``(top, bottom, left, right)``."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    return (min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height),
            min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width))


def draw_mix(height: int, width: int, settings: MixSettings, rng: np.random.Generator) -> MixDraw:
    """timm's ``Mixup._params_per_batch`` (and the cutmix box) for a batch of ``height`` × ``width`` images."""
    if not settings.enabled or not rng.random() < settings.prob:
        return MixDraw(1.0)
    if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < settings.switch_prob)
    else:
        use_cutmix = settings.cutmix_alpha > 0
    alpha = settings.cutmix_alpha if use_cutmix else settings.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixDraw(lam)
    box = cutmix_box(height, width, lam, rng)
    if settings.correct_lam:
        top, bottom, left, right = box
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return MixDraw(lam, box)


def _check_labels(labels: Tensor, classes: int) -> None:
    if classes < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be integer class ids [B], got {labels.dtype} {list(labels.shape)}")
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < classes):
        raise ValueError(f"labels must be in [0, {classes}), got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")


def smooth_labels(labels: Tensor, classes: int, smoothing: float) -> Tensor:
    """Soft targets ``[B, classes]`` float32 for class ids ``labels`` ``[B]``: ``1 − smoothing + smoothing /
    classes`` on the label, ``smoothing / classes`` elsewhere (timm's; each row sums to 1)."""
    _check_labels(labels, classes)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    off = smoothing / classes
    targets = torch.full((labels.shape[0], classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def apply_mix(images: Tensor, labels: Tensor, classes: int, draw: MixDraw,
              smoothing: float) -> tuple[Tensor, Tensor]:
    """Mix a batch with its mirror as ``draw`` says: images ``[B, C, H, W]`` (a new tensor) and soft targets
    ``[B, classes]`` = ``lam`` × own smoothed one-hots + (1 − ``lam``) × the mirror's."""
    if images.dim() != 4 or images.shape[0] != labels.shape[0] or not images.is_floating_point():
        raise ValueError(f"images must be floats [B, C, H, W] with B = len(labels) = {labels.shape[0]}, got "
                         f"{images.dtype} {list(images.shape)}")
    own = smooth_labels(labels, classes, smoothing)
    if draw.lam == 1.0 and draw.box is None:
        return images.clone(), own
    mirrored = images.flip(0)
    if draw.box is None:
        mixed = images * draw.lam + mirrored * (1.0 - draw.lam)
    else:
        top, bottom, left, right = draw.box
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = mirrored[..., top:bottom, left:right]
    return mixed, own * draw.lam + own.flip(0) * (1.0 - draw.lam)


def mix_batch(images: Tensor, labels: Tensor, classes: int, settings: MixSettings,
              rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """timm's ``Mixup(mode="batch")``: ``(mixed images [B, C, H, W], soft targets [B, classes])``; with mixing
    off (or not drawn) the images unchanged and the smoothed targets."""
    draw = draw_mix(images.shape[-2], images.shape[-1], settings, rng)
    return apply_mix(images, labels, classes, draw, settings.label_smoothing)


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``−Σ_c targets · log_softmax(logits)`` (timm's ``SoftTargetCrossEntropy``), for
    logits and targets ``[B, classes]``; the log-softmax is taken in float32 whatever the logits' dtype."""
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be [B, classes], got {list(logits.shape)} and "
                         f"{list(targets.shape)}")
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


# --- Points ---------------------------------------------------------------------------------------------------------


def _rotation(settings: PointAugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """A ``[3, 3]`` rotation: about the up axis by a uniform angle, or uniform over SO(3) (a normalized Gaussian
    quaternion is uniform on the unit 3-sphere)."""
    if settings.rotation == "up":
        angle = rng.uniform(0.0, 2.0 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        a, b = [i for i in range(3) if i != AXES.index(settings.up_axis)]  # the plane the rotation turns
        matrix = np.eye(3)
        matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = cos, -sin, sin, cos
        return matrix
    w, x, y, z = (quaternion := rng.standard_normal(4)) / np.linalg.norm(quaternion)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def augment_points(points: np.ndarray | Tensor, settings: PointAugmentSettings, rng: np.random.Generator) -> Tensor:
    """A training view of a point cloud ``[P, 3]`` → float32 ``[P, 3]``: dropout, rotation, scaling, translation
    and jitter as ``settings`` say (see :class:`PointAugmentSettings`); draws from ``rng`` only for the steps that
    are on."""
    array = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < 1 or array.dtype.kind != "f":
        raise ValueError(f"points must be floats [P, 3] with P >= 1, got {array.dtype} {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("points hold NaN or infinity")
    cloud = array.astype(np.float64)  # a copy: the caller's array is never changed
    if settings.max_dropout > 0:
        dropped = rng.random(len(cloud)) <= rng.random() * settings.max_dropout
        cloud[dropped] = cloud[0]
    if settings.rotation != "none":
        cloud = cloud @ _rotation(settings, rng).T
    if tuple(settings.scale) != (1.0, 1.0):
        cloud = cloud * rng.uniform(settings.scale[0], settings.scale[1], size=3 if settings.anisotropic else 1)
    if settings.translate > 0:
        cloud = cloud + rng.uniform(-settings.translate, settings.translate, size=3)
    if settings.jitter_sigma > 0:
        noise = settings.jitter_sigma * rng.standard_normal(cloud.shape)
        cloud = cloud + np.clip(noise, -settings.jitter_clip, settings.jitter_clip)
    return torch.from_numpy(cloud.astype(np.float32))


__all__ = [
    "AugmentSettings",
    "CropBox",
    "ImageAugmentSettings",
    "MixDraw",
    "MixSettings",
    "PointAugmentSettings",
    "apply_mix",
    "augment_points",
    "cutmix_box",
    "draw_mix",
    "eval_image_transform",
    "mix_batch",
    "random_resized_crop_box",
    "smooth_labels",
    "soft_target_cross_entropy",
    "train_image_transform",
]
