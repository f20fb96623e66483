"""Encoders: the shared position convention (exact values), farthest-point sampling vs a brute-force numpy
version, point groups, image+text and image-pair+text concatenation, bad inputs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itnet_scale.nn.encoders import (
    ENCODER_MODALITIES,
    EncodedTokens,
    ImageEncoder,
    MultimodalEncoder,
    PointEncoder,
    TextEncoder,
    adapt_input_channels,
    batch_modality,
    check_modalities,
    farthest_point_sampling,
    grid_positions,
    text_positions,
)


def test_text_tokens_positions_padding_and_type_embedding():
    encoder = TextEncoder(50, 8, pad_id=0)
    ids = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    out = encoder(ids)
    assert out.tokens.shape == (2, 4, 8) and out.segments == {"text": slice(0, 4)}
    assert out.pos[1].tolist() == [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]]
    assert out.padding_mask.tolist() == [[False, False, False, True], [False, True, True, True]]
    torch.testing.assert_close(out.tokens[0, 1], encoder.embedding.weight[6] + encoder.type_embedding)
    given = encoder(ids, attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert given.padding_mask.tolist() == [[False] * 4, [False, False, True, True]]
    assert encoder.half()(ids).pos.dtype == torch.float32  # 16-bit positions would round above 256


def test_text_errors_name_the_input():
    encoder = TextEncoder(50, 8)
    with pytest.raises(ValueError, match=r"text_ids must lie in \[0, 50\), got values in \[3, 50\]"):
        encoder(torch.tensor([[3, 50]]))
    with pytest.raises(ValueError, match=r"text_ids must be integer \[batch, length\], got \[3\]"):
        encoder(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"text_attention_mask must have shape \[1, 2\], got \[1, 3\]"):
        encoder(torch.tensor([[3, 4]]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text_attention_mask must be bool or integer 0/1, got torch.float32"):
        encoder(torch.tensor([[3, 4]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"pad_id=50 must be a token id below vocab_size=50"):
        TextEncoder(50, 8, pad_id=50)


def test_text_segment_embedding_starts_at_zero_and_tells_segments_apart():
    """Sentence pairs: with text_segments=2 each token gets its segment's embedding, zero at first (the encoder's
    output is what it was without segments), learned from there; positions stay one sequence."""
    encoder = TextEncoder(50, 8, segments=2)
    ids = torch.tensor([[2, 5, 6, 3, 9, 3, 0], [2, 7, 3, 8, 8, 3, 0]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 0]])
    plain, paired = encoder(ids), encoder(ids, segment_ids=segments)
    assert torch.equal(paired.tokens, plain.tokens) and torch.equal(paired.pos, plain.pos)
    assert not encoder.segment_embedding.weight.any()
    paired.tokens[segments == 1].sum().backward()  # the second segment's embedding trains, from zero
    assert encoder.segment_embedding.weight.grad[1].abs().sum() > 0
    assert encoder.segment_embedding.weight.grad[0].abs().sum() == 0
    with torch.no_grad():
        encoder.segment_embedding.weight.normal_()
    moved = encoder(ids, segment_ids=segments).tokens
    torch.testing.assert_close(moved - encoder(ids).tokens, encoder.segment_embedding.weight[segments])
    # the two <sep> of a pair (id 3) differ by their segments' embeddings; the same id in one segment does not
    torch.testing.assert_close(moved[0, 5] - moved[0, 3], encoder.segment_embedding.weight[1]
                               - encoder.segment_embedding.weight[0])
    torch.testing.assert_close(moved[1, 3], moved[1, 4])  # id 8 twice in segment 1
    single = TextEncoder(50, 8)
    assert single.segment_embedding is None
    assert torch.equal(single(ids, segment_ids=torch.zeros_like(ids)).tokens, single(ids).tokens)
    with pytest.raises(ValueError, match=r"text_segment_ids must lie in \[0, 1\), got values in \[0, 1\] \(set "
                                         r"text_segments=2 in the model config"):
        single(ids, segment_ids=segments)
    with pytest.raises(ValueError, match=r"text_segment_ids must lie in \[0, 2\), got values in \[0, 2\]$"):
        encoder(ids, segment_ids=segments * 2)
    with pytest.raises(ValueError, match=r"text_segment_ids must be integer \[2, 7\] like text_ids, got \[2, 6\]"):
        encoder(ids, segment_ids=segments[:, :6])
    with pytest.raises(ValueError, match=r"text_segment_ids must be integer .* torch.float32"):
        encoder(ids, segment_ids=segments.float())
    with pytest.raises(ValueError, match=r"text_segments must be >= 1, got 0"):
        TextEncoder(50, 8, segments=0)


def test_image_patchify_grid_positions_and_mask():
    encoder = ImageEncoder(3, 8, patch=4)
    images = torch.randn(2, 3, 8, 12)
    out = encoder(images)
    assert out.tokens.shape == (2, 6, 8) and not out.padding_mask.any() and out.segments == {"image": slice(0, 6)}
    assert out.pos[1].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    # token (r=1, c=2) is the stem applied to that 4×4 patch alone
    patch = torch.nn.functional.conv2d(images[:, :, 4:8, 8:12], encoder.stem.weight, encoder.stem.bias)
    torch.testing.assert_close(out.tokens[:, 5], patch[:, :, 0, 0] + encoder.type_embedding[0])
    second = encoder(images, index=1)
    assert second.segments == {"image2": slice(0, 6)} and (second.pos[..., 0] == -1).all()
    torch.testing.assert_close(second.tokens - out.tokens, (encoder.type_embedding[1] - encoder.type_embedding[0])
                               .expand(2, 6, 8))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = True
    masked = encoder(images, mask).tokens
    torch.testing.assert_close(masked[0, 2], encoder.mask_token + encoder.type_embedding[0])
    torch.testing.assert_close(masked[1], out.tokens[1])


def test_conv_stem_makes_the_same_grid_from_a_3x3_neighbourhood_per_scale():
    """patch 4: two 3×3 stride-2 convolutions (channel norm, ReLU) and a 1×1 to dim; same token grid and positions
    as patchify, and a token depends on pixels beyond its own patch (its receptive field is 7×7 pixels), never on
    the other samples of the batch, and never on the pixels of a masked patch."""
    encoder = ImageEncoder(1, 16, patch=4, stem="conv")
    strides = [m.stride for m in encoder.stem if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2), (2, 2), (1, 1)]
    images = torch.randn(2, 1, 8, 12, requires_grad=True)
    out = encoder(images)
    assert out.tokens.shape == (2, 6, 16)
    torch.testing.assert_close(out.pos, ImageEncoder(1, 16, patch=4)(images).pos)
    out.tokens[0, 4].sum().backward()  # token (r=1, c=1): its own patch is pixels 4–7 × 4–7
    seen = images.grad[0, 0].abs().sum(1) > 0
    assert seen[3] and not seen[0]  # reaches a row outside its patch, not the far ones
    assert images.grad[1].abs().max() == 0  # nor another sample (no batch statistics)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = True  # patch (0, 1): pixels 0–3 × 4–7, inside token (1, 1)'s receptive field
    changed = images.detach().clone()
    changed[0, 0, 0:4, 4:8] += 10.0
    torch.testing.assert_close(encoder(changed, mask).tokens, encoder(images.detach(), mask).tokens)
    assert not torch.allclose(encoder(changed).tokens[0, 4], encoder(images.detach()).tokens[0, 4])
    for bad, message in ((("conv", 6), "power of two"), (("strided", 4), "image_stem must be one of")):
        with pytest.raises(ValueError, match=message):
            ImageEncoder(1, 16, patch=bad[1], stem=bad[0])


def test_image_errors_name_the_input():
    encoder = ImageEncoder(3, 8, patch=4)
    with pytest.raises(ValueError, match=r"images: image size 8×10 is not a positive multiple of patch_size=4"):
        encoder(torch.randn(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"images2: image size 6×8 is not a positive multiple of patch_size=4"):
        encoder(torch.randn(1, 3, 6, 8), index=1)
    with pytest.raises(ValueError, match=r"images must be \[batch, 3, height, width\], got \[1, 1, 8, 8\]"):
        encoder(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"image_mask must have shape \[1, 4\], got \[1, 5\]"):
        encoder(torch.randn(1, 3, 8, 8), torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"image index 2 is out of range"):
        encoder(torch.randn(1, 3, 8, 8), index=2)


@pytest.mark.parametrize("stem", ["patchify", "conv"])
def test_adapted_input_channels_give_a_gray_image_the_same_tokens(stem):
    """timm's adapt_input_conv: 1 → 3 channels repeats the gray weight and scales it by 1/3, 3 → 1 sums the
    channels; either way a gray image and its 3-channel replica make the same tokens (the conv stem's first
    convolution has no bias and everything after it is unchanged)."""
    gray_encoder, rgb_encoder = ImageEncoder(1, 16, patch=4, stem=stem), ImageEncoder(3, 16, patch=4, stem=stem)
    gray = torch.randn(2, 1, 8, 12)
    for source, target in ((gray_encoder, rgb_encoder), (rgb_encoder, gray_encoder)):
        state = source.state_dict()
        name = source.input_weight_name
        assert name == ("stem.weight" if stem == "patchify" else "stem.0.weight") and state[name].dim() == 4
        state[name] = adapt_input_channels(state[name], target.channels)
        target.load_state_dict(state)
        if source is gray_encoder:
            torch.testing.assert_close(target(gray.expand(-1, 3, -1, -1)).tokens, source(gray).tokens)
        else:
            torch.testing.assert_close(target(gray).tokens, source(gray.expand(-1, 3, -1, -1)).tokens)
    weight = torch.randn(4, 1, 2, 2)
    torch.testing.assert_close(adapt_input_channels(weight, 3), weight.repeat(1, 3, 1, 1) / 3)
    rgb = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(adapt_input_channels(rgb, 1), rgb.sum(1, keepdim=True))
    torch.testing.assert_close(adapt_input_channels(rgb, 4), torch.cat([rgb, rgb[:, :1]], 1) * 3 / 4)
    assert adapt_input_channels(rgb, 3) is rgb
    assert adapt_input_channels(weight.half(), 3).dtype == torch.float16
    with pytest.raises(ValueError, match=r"expected a convolution weight \[out, in, k, k\], got \[4, 3\]"):
        adapt_input_channels(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match=r"channels must be >= 1, got 0"):
        adapt_input_channels(rgb, 0)


def brute_force_fps(points: np.ndarray, count: int, start: int = 0) -> list[int]:
    """Farthest-point sampling as written in the textbook: each step scans every point against every chosen."""
    chosen = [start]
    for _ in range(count - 1):
        distance = np.min([((points - points[c]) ** 2).sum(-1) for c in chosen], axis=0)
        chosen.append(int(distance.argmax()))
    return chosen


def test_farthest_point_sampling_matches_brute_force():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(4, 200, 3, generator=generator, dtype=torch.float64)
    chosen = farthest_point_sampling(points, 17)
    for b in range(4):
        assert chosen[b].tolist() == brute_force_fps(points[b].numpy(), 17)
    padding = torch.zeros(4, 200, dtype=torch.bool)
    padding[:, :5] = True  # padding first: the start moves to the first real point
    padding[1, 150:] = True  # and a shorter cloud
    points[1, 150:] = torch.nan  # whatever padding holds is never read
    with_padding = farthest_point_sampling(points, 17, padding)
    for b in range(4):
        real = (~padding[b]).nonzero()[:, 0]
        expected = brute_force_fps(points[b, real].numpy(), 17)
        assert with_padding[b].tolist() == real[expected].tolist()
    with pytest.raises(ValueError, match=r"cannot sample 300 points from a cloud with 200 real points"):
        farthest_point_sampling(points[:1], 300)


def test_point_tokens_groups_and_positions():
    encoder = PointEncoder(8, tokens=6, group_size=5, hidden=16).double()
    cloud = torch.randn(2, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3 + 10
    out = encoder(cloud)
    assert out.tokens.shape == (2, 6, 8) and out.point_groups.shape == (2, 6, 5, 3) and not out.padding_mask.any()
    # positions: the FPS centers of the centered, unit-ball cloud, times position_scale
    centered = cloud - cloud.mean(1, keepdim=True)
    unit = centered / centered.norm(dim=-1).amax(1)[:, None, None]
    for b in range(2):
        expected = unit[b, brute_force_fps(unit[b].numpy(), 6)] * 8.0
        torch.testing.assert_close(out.pos[b], expected)
        # each group is the 5 nearest points of its center, relative to the center
        for g in range(6):
            center = out.pos[b, g] / 8.0
            nearest = (unit[b] - center).norm(dim=-1).argsort()[:5]
            torch.testing.assert_close(out.point_groups[b, g], unit[b, nearest] - center)
    # translation and scale of the input cloud change nothing
    moved = encoder(cloud * 2 - 5)
    torch.testing.assert_close(moved.tokens, out.tokens)
    torch.testing.assert_close(moved.pos, out.pos)


def test_point_padding_every_point_mode_and_mask():
    encoder = PointEncoder(8, tokens=None, group_size=1, hidden=16).double()  # a per-point MLP, no sampling
    cloud = torch.randn(2, 10, 3, dtype=torch.float64)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 7:] = True
    out = encoder(cloud, padding)
    assert out.tokens.shape == (2, 10, 8) and torch.equal(out.padding_mask, padding)
    short = encoder(cloud[1:, :7])
    torch.testing.assert_close(out.tokens[1, :7], short.tokens[0])  # padding changes nothing on real points
    torch.testing.assert_close(out.pos[1, :7], short.pos[0])
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3] = True
    torch.testing.assert_close(encoder(cloud, padding, mask).tokens[0, 3], encoder.mask_token + encoder.type_embedding)
    with pytest.raises(ValueError, match=r"a point cloud has 7 real points, fewer than point_group_size=1 or "
                                         r"point_tokens=8"):
        PointEncoder(8, tokens=8, group_size=1).double()(cloud, padding)
    with pytest.raises(ValueError, match=r"points must be float \[batch, points, 3\], got \[2, 10, 2\]"):
        encoder(cloud[..., :2])
    with pytest.raises(ValueError, match=r"points contain NaN or infinite coordinates"):
        encoder(torch.full((1, 4, 3), torch.inf, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"point_mask must have shape \[2, 10\], got \[2, 3\]"):
        encoder(cloud, padding, torch.zeros(2, 3, dtype=torch.bool))


def test_image_text_and_image_pair_text_share_one_position_space():
    encoder = MultimodalEncoder(8, vocab_size=30, image_channels=1, patch_size=4, point_tokens=4,
                                point_group_size=2, point_hidden=8)
    images, ids = torch.randn(2, 1, 8, 8), torch.tensor([[3, 4, 5], [6, 7, 0]])
    pair = encoder({"images": images, "images2": images.flip(-1), "text_ids": ids})
    assert pair.segments == {"image": slice(0, 4), "image2": slice(4, 8), "text": slice(8, 11)}
    assert pair.pos[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1],
                                    [-1, 0, 0], [-1, 0, 1], [-1, 1, 0], [-1, 1, 1],
                                    [1, 0, 0], [2, 0, 0], [3, 0, 0]]
    assert len({tuple(p) for p in pair.pos[0].tolist()}) == 11  # no two tokens share a position
    assert pair.padding_mask.tolist() == [[False] * 11, [False] * 10 + [True]]
    alone = encoder({"text_ids": ids})
    torch.testing.assert_close(pair.tokens[:, 8:], alone.tokens)  # concatenation changes no part
    image_text = encoder({"images": images, "text_ids": ids, "labels": torch.zeros(2)})
    assert image_text.segments == {"image": slice(0, 4), "text": slice(4, 7)}
    torch.testing.assert_close(image_text.tokens, torch.cat([encoder.image(images).tokens, alone.tokens], 1))
    assert torch.equal(text_positions(3), alone.pos[0]) and torch.equal(grid_positions(2, 2, 1), pair.pos[0, 4:8])
    with pytest.raises(ValueError, match=r"inputs of one batch must have the same batch size"):
        encoder({"images": images[:1], "text_ids": ids})


def test_only_the_encoders_of_the_modalities_are_built():
    """modalities=["image"]: no text or point encoder (no parameters); a batch that needs one raises naming it."""
    kwargs = dict(vocab_size=30, image_channels=1, patch_size=4, point_tokens=4, point_group_size=2, point_hidden=8)
    everything = MultimodalEncoder(8, **kwargs)
    assert everything.modalities == ENCODER_MODALITIES
    images_only = MultimodalEncoder(8, modalities=["image"], **kwargs)
    assert images_only.text is None and images_only.points is None
    assert {name.split(".")[0] for name, _ in images_only.named_parameters()} == {"image"}
    images_only.load_state_dict({k: v for k, v in everything.state_dict().items() if k.startswith("image.")})
    images = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(images_only({"images": images}).tokens, everything({"images": images}).tokens)
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=r"^text batches need the text encoder, which this model does not build "
                                         r"\(modalities=\['image'\]\)"):
        images_only({"text_ids": ids})
    with pytest.raises(ValueError, match=r"^image_text batches need the text encoder"):
        images_only({"images": images, "text_ids": ids})
    with pytest.raises(ValueError, match=r"^points batches need the points encoder"):
        images_only({"points": torch.randn(1, 8, 3)})
    text_only = MultimodalEncoder(8, modalities=("text",), **kwargs)
    with pytest.raises(ValueError, match=r"^image_pair_text batches need the image encoder"):
        text_only({"images": images, "images2": images, "text_ids": ids})
    assert check_modalities(["points", "text"]) == ("points", "text")
    for bad, message in ((["audio"], r"modalities: unknown \['audio'\]; choose from \['image', 'text', 'points'\]"),
                         ([], r"modalities must name at least one of .* got \[\]"),
                         (["text", "text"], r"modalities must name .* each once, got \['text', 'text'\]"),
                         ("text", r"modalities must be a list of .* got the string 'text'")):
        with pytest.raises(ValueError, match=message):
            check_modalities(bad)


def test_batch_modality_names_unknown_combinations():
    assert batch_modality({"text_ids": 0, "mlm_labels": 0}) == "text"
    assert batch_modality({"points": 0, "labels": 0}) == "points"
    with pytest.raises(ValueError, match=r"batch inputs \['points', 'text_ids'\] .* make no modality"):
        batch_modality({"points": 0, "text_ids": 0})
    with pytest.raises(ValueError, match=r"batch inputs \[\] \(keys \['labels'\]\) make no modality"):
        batch_modality({"labels": 0})
    assert isinstance(EncodedTokens.concat([TextEncoder(9, 4)(torch.tensor([[1]]))]), EncodedTokens)
