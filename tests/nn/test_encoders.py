"""Encoders: the shared position convention, farthest-point sampling vs brute force, bad inputs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itnet_scale.nn.encoders import (
    POINT_POSITION_SCALE,
    ImageEncoder,
    PointEncoder,
    TextEncoder,
    farthest_point_sampling,
)


def test_text_positions_and_padding():
    encoder = TextEncoder(50, 8, pad_id=0)
    ids = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    tokens, pos, padding = encoder(ids)
    assert tokens.shape == (2, 4, 8)
    assert pos[0].tolist() == [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]]
    assert padding.tolist() == [[False, False, False, True], [False, True, True, True]]
    _, _, given = encoder(ids, attention_mask=torch.ones(2, 4, dtype=torch.bool))
    assert not given.any()
    with pytest.raises(ValueError, match=r"text ids must lie in \[0, 50\)"):
        encoder(torch.tensor([[3, 50]]))


def test_image_grid_positions_planes_and_mask():
    encoder = ImageEncoder(3, 8, patch=4)
    images = torch.randn(2, 3, 8, 12)
    tokens, pos, padding = encoder(images)
    assert tokens.shape == (2, 6, 8) and not padding.any()
    assert pos[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert (encoder(images, plane=1)[1][..., 0] == -1).all()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = True
    masked, _, _ = encoder(images, mask)
    torch.testing.assert_close(masked[0, 2], encoder.mask_token)
    torch.testing.assert_close(masked[1], tokens[1])
    with pytest.raises(ValueError, match=r"image size 8×10 is not a multiple of patch_size=4"):
        encoder(torch.randn(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"images must be \[batch, 3, height, width\]"):
        encoder(torch.randn(1, 1, 8, 8))


def brute_force_fps(points: np.ndarray, count: int) -> list[int]:
    chosen = [0]
    for _ in range(count - 1):
        distance = np.min([((points - points[c]) ** 2).sum(-1) for c in chosen], axis=0)
        chosen.append(int(distance.argmax()))
    return chosen


def test_farthest_point_sampling_matches_brute_force():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(3, 200, 3, generator=generator, dtype=torch.float64)
    chosen = farthest_point_sampling(points, 17)
    for b in range(3):
        assert chosen[b].tolist() == brute_force_fps(points[b].numpy(), 17)
    padding = torch.zeros(3, 200, dtype=torch.bool)
    padding[:, :5] = True  # padding first: the start moves to the first real point and is never picked
    with_padding = farthest_point_sampling(points, 17, padding)
    assert (with_padding >= 5).all() and with_padding[:, 0].tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match=r"fewer than the 300 to sample"):
        farthest_point_sampling(points, 300)


def test_point_groups_positions_and_locality():
    encoder = PointEncoder(8, groups=6, group_size=5).double()
    cloud = torch.randn(2, 64, 3, dtype=torch.float64) * 3 + 10
    tokens, pos, padding, local = encoder(cloud)
    assert tokens.shape == (2, 6, 8) and local.shape == (2, 6, 5, 3) and not padding.any()
    assert (pos.norm(dim=-1) <= POINT_POSITION_SCALE + 1e-9).all()  # centered, unit ball, scaled
    assert local[..., 0, :].abs().max() < 1e-12  # each group's nearest point is its center
    assert (local.norm(dim=-1)[..., 1:] >= local.norm(dim=-1)[..., :-1] - 1e-12).all()
    # translation and scale of the input cloud change nothing
    moved = encoder(cloud * 2 - 5)
    torch.testing.assert_close(moved[0], tokens)
    torch.testing.assert_close(moved[1], pos)
