"""Fine-tuning augmentations: seeded (same generator state → same output), timm's crop/flip/eval geometry, mixup and
cutmix targets, point-cloud transforms' invariants, and settings that name the bad key."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from itnet_scale.config import merge_config
from itnet_scale.data.augment import (
    AugmentSettings,
    ImageAugmentSettings,
    MixDraw,
    MixSettings,
    PointAugmentSettings,
    apply_mix,
    augment_points,
    draw_mix,
    eval_image_transform,
    mix_batch,
    random_resized_crop_box,
    smooth_labels,
    soft_target_cross_entropy,
    train_image_transform,
)
from itnet_scale.data.stream import StreamConfig, decode_sample


def decoded_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """A photo-like image as the stream hands it over: encoded as JPEG, decoded by the stream's decoder →
    uint8 ``[C, H, W]``. Left half dark, right half bright (so a flip shows), plus texture."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.where(cols < width // 2, 40, 210) + 30 * np.sin(rows / 5.0)
    pixels = np.clip(base[..., None] + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=95)
    sample, reason = decode_sample({"__key__": "0", "jpg": buffer.getvalue(), "cls": b"3"}, "image", StreamConfig())
    assert reason is None
    return sample["image"]


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


# --- Images -----------------------------------------------------------------------------------------------------


def test_train_transform_is_seeded_shaped_and_float32() -> None:
    image = decoded_image(96, 128)
    settings = ImageAugmentSettings(size=48)
    first = train_image_transform(image, settings, rng(7, 0, 12))
    assert first.shape == (3, 48, 48) and first.dtype == torch.float32 and first.is_contiguous()
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0  # default mean 0, std 1: pixels / 255
    assert torch.equal(first, train_image_transform(image, settings, rng(7, 0, 12)))  # a resumed run's view
    assert torch.equal(first, train_image_transform(torch.from_numpy(image), settings, rng(7, 0, 12)))
    assert not torch.equal(first, train_image_transform(image, settings, rng(7, 0, 13)))
    gray = decoded_image(96, 128, mode="L")
    assert gray.shape == (1, 96, 128)
    as_rgb = train_image_transform(gray, settings, rng(1))
    assert as_rgb.shape == (3, 48, 48) and torch.equal(as_rgb[0], as_rgb[2])  # L repeated to the model's 3 channels
    one_channel = ImageAugmentSettings(size=48, channels=1, mean=[0.5], std=[0.25])
    assert train_image_transform(image, one_channel, rng(1)).shape == (1, 48, 48)


def test_whole_image_crop_is_the_pixels_normalized() -> None:
    """A crop of the whole image at its own size is no resample: the output is exactly (pixels / 255 − mean) / std
    in the stream's channel order, and a flip reverses the columns."""
    image = decoded_image(40, 60)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    keep = ImageAugmentSettings(size=40, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, mean=mean, std=std)
    square = image[:, :, 10:50]
    expected = (torch.from_numpy(square).float() / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std).view(3, 1, 1)
    out = train_image_transform(np.ascontiguousarray(square), keep, rng(3))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    flipped = ImageAugmentSettings(size=40, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=1.0, mean=mean, std=std)
    assert torch.equal(train_image_transform(np.ascontiguousarray(square), flipped, rng(3)), out.flip(-1))


def test_flip_happens_at_its_probability() -> None:
    image = decoded_image(64, 64)
    settings = ImageAugmentSettings(size=32, scale=[0.5, 1.0])
    flips = 0
    for seed in range(200):
        out = train_image_transform(image, settings, rng(seed))
        flips += bool(out[:, :, :16].mean() > out[:, :, 16:].mean())  # the bright half moved to the left
    assert 70 <= flips <= 130  # p = 0.5: mean 100, std ≈ 7


def test_crop_boxes_stay_inside_and_follow_scale_and_ratio() -> None:
    height, width = 180, 240
    generator = rng(0)
    boxes = [random_resized_crop_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), generator) for _ in range(3000)]
    for top, left, h, w in boxes:
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width and h > 0 and w > 0
    shares = np.array([h * w / (height * width) for _, _, h, w in boxes])
    ratios = np.array([w / h for _, _, h, w in boxes])
    # rounding to whole pixels moves a share or ratio by at most a few percent at the smallest boxes
    assert shares.min() >= 0.08 * 0.9 and shares.max() <= 1.0 and shares.min() < 0.1 and shares.max() > 0.95
    assert ratios.min() >= 0.75 * 0.95 and ratios.max() <= 4 / 3 * 1.05 and ratios.min() < 0.8 and ratios.max() > 1.25
    # where every draw fits (a square, areas up to half) nothing is rejected: shares uniform, log-ratios symmetric
    generator = rng(1)
    fitting = [random_resized_crop_box(256, 256, (0.1, 0.5), (3 / 4, 4 / 3), generator) for _ in range(3000)]
    shares = np.array([h * w / 256**2 for _, _, h, w in fitting])
    log_ratios = np.log([w / h for _, _, h, w in fitting])
    assert abs(shares.mean() - 0.3) < 0.01 and abs(shares.std() - 0.4 / math.sqrt(12)) < 0.01
    assert abs(np.median(log_ratios)) < 0.02 and abs(log_ratios).max() <= math.log(4 / 3) + 0.02
    tops = np.array([top / (256 - h) for top, _, h, _ in fitting if h < 256])
    assert abs(tops.mean() - 0.5) < 0.03  # positions uniform over the room left


def test_crop_falls_back_to_the_center_when_no_try_fits() -> None:
    """No box of ratio ≥ 2 and area ≥ 90% fits in a square: after 10 tries, the full-width center band of ratio 2
    (torchvision's fallback), the same whatever the generator."""
    for seed in range(5):
        assert random_resized_crop_box(100, 100, (0.9, 1.0), (2.0, 3.0), rng(seed)) == (25, 0, 50, 100)
    assert random_resized_crop_box(100, 300, (0.9, 1.0), (1.0, 2.0), rng(0)) == (0, 50, 100, 200)


def test_eval_transform_is_timms_resize_and_center_crop() -> None:
    """224 at crop_pct 0.875 on 300×400: the shorter side to floor(224 / 0.875) = 256, the longer to 341, the
    central 224 × 224 (rows 16…240, columns 58…282)."""
    image = decoded_image(300, 400)
    settings = ImageAugmentSettings(size=224, crop_pct=0.875)
    out = eval_image_transform(image, settings)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, eval_image_transform(image, settings))
    resized = Image.fromarray(image.transpose(1, 2, 0)).resize((341, 256), Image.Resampling.BICUBIC)
    expected = torch.from_numpy(np.asarray(resized)[16:240, 58:282].astype(np.float32)).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # shorter side already at size (crop_pct 1): no resample, the central columns exactly
    wide = decoded_image(100, 200)
    center = eval_image_transform(wide, ImageAugmentSettings(size=100, crop_pct=1.0))
    torch.testing.assert_close(center, torch.from_numpy(wide[:, :, 50:150]).float() / 255.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image", [np.zeros((4, 8, 8), np.uint8), np.zeros((3, 8, 8), np.float32),
                                   np.zeros((8, 8), np.uint8), np.zeros((3, 0, 8), np.uint8)])
def test_images_not_as_the_stream_decodes_them_are_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image must be uint8"):
        train_image_transform(image, ImageAugmentSettings(size=4), rng(0))
    with pytest.raises(ValueError, match="image must be uint8"):
        eval_image_transform(image, ImageAugmentSettings(size=4))


# --- Mixing -------------------------------------------------------------------------------------------------------


def batch(size: int = 8, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    labels = torch.randperm(classes, generator=generator)[:size]
    return images, labels


def test_smooth_labels_put_the_right_mass_on_each_class() -> None:
    labels = torch.tensor([0, 3, 9, 3])
    targets = smooth_labels(labels, 10, 0.1)
    assert targets.shape == (4, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    torch.testing.assert_close(targets[torch.arange(4), labels], torch.full((4,), 0.9 + 0.01))
    assert torch.equal(targets[0, 1:], torch.full((9,), 0.01))
    assert torch.equal(smooth_labels(labels, 10, 0.0), F.one_hot(labels, 10).float())


def test_soft_target_cross_entropy_matches_torchs_hard_and_smoothed_losses() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 4, 2, 2, 3])
    torch.testing.assert_close(soft_target_cross_entropy(logits, smooth_labels(labels, 5, 0.0)),
                               F.cross_entropy(logits, labels))
    torch.testing.assert_close(soft_target_cross_entropy(logits, smooth_labels(labels, 5, 0.2)),
                               F.cross_entropy(logits, labels, label_smoothing=0.2))
    with pytest.raises(ValueError, match="logits and targets must both be"):
        soft_target_cross_entropy(logits, smooth_labels(labels, 5, 0.0)[:, :4])


def test_mixup_blends_images_and_targets_by_lambda() -> None:
    images, labels = batch()
    settings = MixSettings(mixup_alpha=0.8, label_smoothing=0.1)
    draw = draw_mix(32, 32, settings, rng(4))
    assert draw.box is None and 0.0 < draw.lam < 1.0
    mixed, targets = mix_batch(images, labels, 10, settings, rng(4))
    torch.testing.assert_close(mixed, draw.lam * images + (1 - draw.lam) * images.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    own, mirror = labels, labels.flip(0)
    torch.testing.assert_close(targets[torch.arange(8), own], torch.full((8,), draw.lam * 0.91 + (1 - draw.lam) * 0.01))
    torch.testing.assert_close(targets[torch.arange(8), mirror],
                               torch.full((8,), (1 - draw.lam) * 0.91 + draw.lam * 0.01))
    assert torch.equal(images, batch()[0])  # the caller's batch is not changed
    again = mix_batch(images, labels, 10, settings, rng(4))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)
    assert not torch.equal(mix_batch(images, labels, 10, settings, rng(5))[0], mixed)
    lams = np.array([draw_mix(32, 32, settings, rng(seed)).lam for seed in range(3000)])
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.01  # Beta(0.8, 0.8)


def test_cutmix_pastes_a_box_whose_area_is_the_corrected_lambda() -> None:
    images, labels = batch()
    settings = MixSettings(cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(200):
        draw = draw_mix(32, 24, settings, rng(seed))
        top, bottom, left, right = draw.box
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 24
        assert draw.lam == pytest.approx(1 - (bottom - top) * (right - left) / (32 * 24))
    images = images[..., :24]
    mixed, targets = mix_batch(images, labels, 10, settings, rng(11))
    draw = draw_mix(32, 24, settings, rng(11))
    top, bottom, left, right = draw.box
    inside = torch.zeros(32, 24, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert 0 < inside.sum() < 32 * 24
    assert torch.equal(mixed[..., inside], images.flip(0)[..., inside])
    assert torch.equal(mixed[..., ~inside], images[..., ~inside])
    torch.testing.assert_close(targets[torch.arange(8), labels], torch.full((8,), draw.lam))
    uncorrected = draw_mix(32, 24, MixSettings(cutmix_alpha=1.0, correct_lam=False), rng(11))
    assert uncorrected.box == draw.box and uncorrected.lam != draw.lam


def test_switch_and_apply_probabilities() -> None:
    both = MixSettings(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.3)
    draws = [draw_mix(32, 32, both, rng(seed)) for seed in range(2000)]
    assert abs(np.mean([draw.box is not None for draw in draws]) - 0.3) < 0.04
    sometimes = MixSettings(mixup_alpha=0.8, prob=0.4)
    draws = [draw_mix(32, 32, sometimes, rng(seed)) for seed in range(2000)]
    assert abs(np.mean([draw.lam == 1.0 for draw in draws]) - 0.6) < 0.04


def test_without_mixing_the_images_stay_and_targets_are_smoothed() -> None:
    images, labels = batch()
    mixed, targets = mix_batch(images, labels, 10, MixSettings(label_smoothing=0.2), rng(0))
    assert torch.equal(mixed, images) and torch.equal(targets, smooth_labels(labels, 10, 0.2))


def test_bad_mix_inputs_are_named() -> None:
    images, labels = batch()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        smooth_labels(labels, 5, 0.1)
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        smooth_labels(labels.float(), 10, 0.1)
    with pytest.raises(ValueError, match="smoothing must be in"):
        smooth_labels(labels, 10, 1.0)
    with pytest.raises(ValueError, match="images must be floats"):
        apply_mix(images[:4], labels, 10, MixDraw(0.5), 0.0)
    with pytest.raises(ValueError, match="images must be floats"):
        apply_mix(images.to(torch.uint8), labels, 10, MixDraw(0.5), 0.0)


# --- Points -------------------------------------------------------------------------------------------------------

OFF = {"scale": [1.0, 1.0], "translate": 0.0}


def cloud(points: int = 512, seed: int = 0) -> np.ndarray:
    """A ModelNet-like cloud as the stream decodes it: float32 [P, 3] on a unit sphere's surface, squashed."""
    xyz = np.random.default_rng(seed).standard_normal((points, 3))
    return (xyz / np.linalg.norm(xyz, axis=1, keepdims=True) * [1.0, 0.6, 0.8]).astype(np.float32)


def test_points_are_seeded_shaped_and_left_unchanged() -> None:
    points = cloud()
    settings = PointAugmentSettings(rotation="so3", jitter_sigma=0.01, max_dropout=0.5)
    out = augment_points(points, settings, rng(2, 0, 5))
    assert out.shape == (512, 3) and out.dtype == torch.float32
    assert torch.equal(out, augment_points(points, settings, rng(2, 0, 5)))
    assert torch.equal(out, augment_points(torch.from_numpy(points), settings, rng(2, 0, 5)))
    assert not torch.equal(out, augment_points(points, settings, rng(2, 0, 6)))
    assert np.array_equal(points, cloud())


@pytest.mark.parametrize("rotation", ["up", "so3"])
def test_rotation_preserves_norms_and_distances(rotation: str) -> None:
    points = cloud()
    out = augment_points(points, PointAugmentSettings(rotation=rotation, **OFF), rng(9)).double()
    before = torch.from_numpy(points).double()
    torch.testing.assert_close(out.norm(dim=1), before.norm(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cdist(out, out), torch.cdist(before, before), rtol=0, atol=1e-5)
    assert not torch.allclose(out, before, atol=1e-3)
    basis = augment_points(np.eye(3, dtype=np.float32), PointAugmentSettings(rotation=rotation, **OFF), rng(9))
    assert torch.linalg.det(basis.double()).item() == pytest.approx(1.0, abs=1e-6)  # a rotation, not a reflection
    if rotation == "up":
        torch.testing.assert_close(out[:, 1], before[:, 1], rtol=0, atol=1e-6)  # y (the up axis) stays


def test_so3_rotations_are_uniform() -> None:
    """A uniform rotation sends the z axis to a uniform point of the sphere: each coordinate of its image is
    uniform on [−1, 1] (mean 0, variance 1/3)."""
    settings = PointAugmentSettings(rotation="so3", **OFF)
    images = np.stack([augment_points(np.array([[0, 0, 1]], np.float32), settings, rng(seed))[0].numpy()
                       for seed in range(3000)])
    assert np.abs(images.mean(0)).max() < 0.04 and np.abs(images.var(0) - 1 / 3).max() < 0.03
    up = PointAugmentSettings(rotation="up", up_axis="z", **OFF)
    spun = np.stack([augment_points(np.array([[1, 0, 0]], np.float32), up, rng(seed))[0].numpy()
                     for seed in range(500)])
    assert np.abs(spun[:, 2]).max() < 1e-6 and abs(np.arctan2(spun[:, 1], spun[:, 0]).mean()) < 0.2


def test_jitter_is_clipped() -> None:
    points = cloud()
    out = augment_points(points, PointAugmentSettings(jitter_sigma=0.05, jitter_clip=0.02, **OFF), rng(1)).numpy()
    moved = np.abs(out - points)
    assert moved.max() <= 0.02 + 1e-6 and (moved > 0.0199).mean() > 0.5  # most of N(0, 0.05) lies past ±0.02
    small = augment_points(points, PointAugmentSettings(jitter_sigma=0.002, jitter_clip=0.05, **OFF), rng(1)).numpy()
    assert abs((small - points).std() - 0.002) < 2e-4


def test_scaling_translation_and_dropout() -> None:
    points = cloud()
    iso = augment_points(points, PointAugmentSettings(scale=[0.8, 1.25], anisotropic=False, translate=0.0),
                         rng(3)).numpy() / points
    assert np.ptp(iso) < 1e-5 and 0.8 <= iso.mean() <= 1.25
    aniso = augment_points(points, PointAugmentSettings(scale=[0.8, 1.25], translate=0.0), rng(3)).numpy() / points
    assert np.ptp(aniso, axis=0).max() < 1e-5 and np.ptp(aniso[0]) > 1e-3  # one factor per axis
    shift = augment_points(points, PointAugmentSettings(scale=[1.0, 1.0], translate=0.2), rng(3)).numpy() - points
    assert np.ptp(shift, axis=0).max() < 1e-6 and np.abs(shift).max() <= 0.2
    settings = PointAugmentSettings(max_dropout=0.8, **OFF)
    shares = []
    for seed in range(300):
        out = augment_points(points, settings, rng(seed)).numpy()
        dropped = (out != points).any(1)
        assert (out[dropped] == points[0]).all()  # dropped points become copies of the first
        shares.append(dropped.mean())
    # each cloud drops a Binomial(512, r) share of its points, r uniform in [0, 0.8)
    assert abs(np.mean(shares) - 0.4) < 0.03 and max(shares) < 0.8 + 0.06 and min(shares) < 0.02


@pytest.mark.parametrize("points", [np.zeros((5, 2), np.float32), np.zeros((0, 3), np.float32),
                                    np.zeros((5, 3), np.int64), np.full((5, 3), np.nan, np.float32)])
def test_bad_points_are_refused(points: np.ndarray) -> None:
    with pytest.raises(ValueError, match="points"):
        augment_points(points, PointAugmentSettings(), rng(0))


# --- Settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "key"), [
    ("image.size=0", "augment.image.size"),
    ("image.scale=[0.5,0.1]", "augment.image.scale"),
    ("image.scale=[0.5]", "augment.image.scale"),
    ("image.scale=[0.1,1.5]", "augment.image.scale"),
    ("image.ratio=[0,1]", "augment.image.ratio"),
    ("image.hflip=1.5", "augment.image.hflip"),
    ("image.crop_pct=0", "augment.image.crop_pct"),
    ("image.interpolation=nearest", "augment.image.interpolation"),
    ("image.channels=2", "augment.image.channels"),
    ("image.mean=[0.5]", "augment.image.mean"),
    ("image.std=[1,0,1]", "augment.image.std"),
    ("mix.mixup_alpha=-1", "augment.mix.mixup_alpha"),
    ("mix.cutmix_alpha=nan", "augment.mix.cutmix_alpha"),
    ("mix.prob=2", "augment.mix.prob"),
    ("mix.switch_prob=-0.1", "augment.mix.switch_prob"),
    ("mix.label_smoothing=1", "augment.mix.label_smoothing"),
    ("points.max_dropout=1", "augment.points.max_dropout"),
    ("points.rotation=spin", "augment.points.rotation"),
    ("points.up_axis=w", "augment.points.up_axis"),
    ("points.scale=[1.5,0.5]", "augment.points.scale"),
    ("points.translate=-0.1", "augment.points.translate"),
    ("points.jitter_sigma=-1", "augment.points.jitter_sigma"),
    ("points.jitter_clip=0", "augment.points.jitter_clip"),
])
def test_bad_settings_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{key} must")):
        merge_config(AugmentSettings, [], [override], what="augment settings")


def test_settings_read_from_a_config() -> None:
    settings = merge_config(AugmentSettings, [{"image": {"size": 384, "mean": [0.485, 0.456, 0.406]},
                                               "mix": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}],
                            ["points.rotation=up"], what="augment settings")
    assert settings.image.size == 384 and settings.image.mean == [0.485, 0.456, 0.406] and settings.mix.enabled
    assert settings.points.rotation == "up" and not AugmentSettings().mix.enabled
