"""Heads: each loss equals its hand computation; masking follows the 80/10/10 rule and spares specials."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from itnet_scale.nn.heads import (
    IGNORE,
    ContrastiveHead,
    MaskedPatchHead,
    MLMHead,
    VQAHead,
    chamfer_distance,
    mask_tokens,
    masked_mean,
    patchify,
)


def test_mask_tokens_statistics_and_specials():
    generator = torch.Generator().manual_seed(0)
    specials = [0, 1, 2, 3, 4]
    ids = torch.randint(5, 100, (400, 50), generator=generator)
    ids[:, -10:] = 0  # padding
    ids[:, 0] = 2  # <cls>
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=100, special_ids=specials, generator=generator)
    picked = labels != IGNORE
    assert not picked[:, -10:].any() and not picked[:, 0].any()
    assert (labels[picked] == ids[picked]).all()
    ordinary = (~torch.isin(ids, torch.tensor(specials))).sum()
    assert abs(picked.sum() / ordinary - 0.15) < 0.01
    share = lambda where: float(where.sum() / picked.sum())  # noqa: E731
    assert abs(share(picked & (inputs == 4)) - 0.8) < 0.02
    assert abs(share(picked & (inputs == ids)) - 0.1) < 0.02
    replaced = picked & (inputs != 4) & (inputs != ids)
    assert abs(share(replaced) - 0.1) < 0.02 and not torch.isin(inputs[replaced], torch.tensor(specials)).any()
    assert torch.equal(inputs[~picked], ids[~picked])


def test_mlm_loss_ignores_unpicked_positions_and_ties_weights():
    embedding = torch.nn.Embedding(11, 4)
    head = MLMHead(4, 11, embedding)
    assert head.decoder.weight is embedding.weight
    logits = torch.randn(2, 3, 11)
    labels = torch.tensor([[IGNORE, 5, IGNORE], [7, IGNORE, IGNORE]])
    expected = (F.cross_entropy(logits[0, 1:2], labels[0, 1:2]) + F.cross_entropy(logits[1, :1], labels[1, :1])) / 2
    torch.testing.assert_close(MLMHead.loss(logits, labels), expected)


def test_contrastive_loss_is_symmetric_infonce():
    head = ContrastiveHead(6, 4)
    image, text = head(torch.randn(5, 6), torch.randn(5, 6))
    scale = math.exp(math.log(1 / 0.07))
    logits = scale * image @ text.T
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(head.loss(image, text), expected)
    # gathered candidates: this rank's rows sit at an offset among everyone's
    others_i, others_t = head(torch.randn(3, 6), torch.randn(3, 6))
    gathered = head.loss(image, text, torch.cat([others_i, image]), torch.cat([others_t, text]), offset=3)
    manual = 0.5 * (F.cross_entropy(scale * image @ torch.cat([others_t, text]).T, torch.arange(3, 8))
                    + F.cross_entropy(scale * text @ torch.cat([others_i, image]).T, torch.arange(3, 8)))
    torch.testing.assert_close(gathered, manual)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    big = head.loss(image, text)
    torch.testing.assert_close(big, 0.5 * (F.cross_entropy(100 * image @ text.T, torch.arange(5))
                                           + F.cross_entropy(100 * text @ image.T, torch.arange(5))))


def test_masked_patch_loss_counts_masked_patches_only():
    head = MaskedPatchHead(4, patch=2, channels=1)
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert patchify(images, 2)[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]
    target = patchify(images, 2)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    prediction = torch.randn(1, 4, 4)
    mask = torch.tensor([[True, False, False, True]])
    error = (prediction - target).square().mean(-1)
    expected = (error[0, 0] + error[0, 3]) / 2
    torch.testing.assert_close(head.loss(prediction, images, mask), expected)


def test_chamfer_matches_brute_force():
    a, b = torch.randn(7, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    ab = sum(min(float((p - q).square().sum()) for q in b) for p in a) / 7
    ba = sum(min(float((p - q).square().sum()) for p in a) for q in b) / 5
    assert float(chamfer_distance(a, b)) == pytest.approx(ab + ba)
    assert float(chamfer_distance(a, a[torch.randperm(7)])) == pytest.approx(0.0, abs=1e-12)


def test_vqa_soft_score_bce_and_pooling():
    logits = torch.randn(2, 3)
    scores = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.6]])
    expected = -(scores * F.logsigmoid(logits) + (1 - scores) * F.logsigmoid(-logits)).sum() / 2
    torch.testing.assert_close(VQAHead.loss(logits, scores), expected)
    with pytest.raises(ValueError, match=r"VQA answer scores must lie in \[0, 1\]"):
        VQAHead.loss(logits, scores * 2)
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(hidden, torch.tensor([[False, False, True]])).item() == 2.0
