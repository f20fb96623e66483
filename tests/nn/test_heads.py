"""Heads: each loss equals its hand computation on tiny inputs; masking follows BERT's 80/10/10 rule and never
touches specials or padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from itnet_scale.nn.heads import (
    IGNORE,
    ClassificationHead,
    ContrastiveHead,
    MaskedPatchHead,
    MaskedPointHead,
    MLMHead,
    Pooling,
    RegressionHead,
    VQAHead,
    chamfer_distance,
    mask_tokens,
    mean_pool,
    patchify,
)

SPECIALS = [0, 1, 2, 3, 4, 5, 6]  # <pad> <unk> <cls> <sep> <mask> <image> <point>
MASK_ID = 4


def test_mask_tokens_statistics():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 100, (400, 50), generator=generator)
    inputs, labels = mask_tokens(ids, mask_id=MASK_ID, vocab_size=100, special_ids=SPECIALS, generator=generator)
    picked = labels != IGNORE
    assert abs(float(picked.float().mean()) - 0.15) < 0.01
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])

    def share(where: torch.Tensor) -> float:
        return float(where.sum() / picked.sum())

    assert abs(share(picked & (inputs == MASK_ID)) - 0.8) < 0.02
    assert abs(share(picked & (inputs == ids)) - 0.1) < 0.02
    replaced = picked & (inputs != MASK_ID) & (inputs != ids)
    assert abs(share(replaced) - 0.1) < 0.02
    assert (inputs[replaced] >= 7).all()  # random replacements are ordinary tokens

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(ids, mask_id=MASK_ID, vocab_size=100, special_ids=SPECIALS,
                           generator=torch.Generator().manual_seed(seed))

    assert all(torch.equal(a, b) for a, b in zip(draw(5), draw(5), strict=True))  # a seed repeats its draw
    assert not torch.equal(draw(5)[1], draw(6)[1])


def test_mask_tokens_never_masks_specials_or_padding():
    ids = torch.randint(0, 100, (300, 40), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = 2  # <cls>
    ids[:, -12:] = 0  # padding
    inputs, labels = mask_tokens(ids, mask_id=MASK_ID, vocab_size=100, special_ids=SPECIALS, prob=0.9,
                                 generator=torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert special.sum() > 3000
    assert (labels[special] == IGNORE).all() and torch.equal(inputs[special], ids[special])
    assert (labels[~special] != IGNORE).float().mean() > 0.85  # prob=0.9 of the ordinary ones


def test_mask_tokens_errors():
    ids = torch.tensor([[7, 8, 9]])
    with pytest.raises(ValueError, match=r"prob must be in \(0, 1\), got 1.5"):
        mask_tokens(ids, mask_id=4, vocab_size=10, special_ids=SPECIALS, prob=1.5)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 10\), got \[7, 12\]"):
        mask_tokens(torch.tensor([[7, 12]]), mask_id=4, vocab_size=10, special_ids=SPECIALS)
    with pytest.raises(ValueError, match=r"mask_id=10 must be ids below vocab_size=10"):
        mask_tokens(ids, mask_id=10, vocab_size=10, special_ids=SPECIALS)
    with pytest.raises(ValueError, match=r"ids must be an integer tensor"):
        mask_tokens(ids.float(), mask_id=4, vocab_size=10, special_ids=SPECIALS)


def test_mlm_loss_counts_picked_positions_only_and_ties_weights():
    embedding = torch.nn.Embedding(11, 4)
    head = MLMHead(4, 11, embedding)
    assert head.decoder.weight is embedding.weight
    assert MLMHead(4, 11).decoder.weight is not embedding.weight
    logits = torch.randn(2, 3, 11)
    labels = torch.tensor([[IGNORE, 5, IGNORE], [7, IGNORE, IGNORE]])
    expected = (-F.log_softmax(logits[0, 1], -1)[5] - F.log_softmax(logits[1, 0], -1)[7]) / 2
    torch.testing.assert_close(MLMHead.loss(logits, labels), expected)
    changed = logits.clone()
    changed[0, 0] += 100 * torch.randn(11)  # an unpicked position: no effect
    torch.testing.assert_close(MLMHead.loss(changed, labels), expected)
    nothing = MLMHead.loss(logits.requires_grad_(), torch.full((2, 3), IGNORE))
    assert nothing.item() == 0.0 and nothing.requires_grad  # no picked token: 0, not NaN
    with pytest.raises(ValueError, match=r"mlm_labels must have shape \[2, 3\], got \[2, 2\]"):
        MLMHead.loss(logits, labels[:, :2])
    with pytest.raises(ValueError, match=r"tied embedding must be \[12, 4\]"):
        MLMHead(4, 12, embedding)


def manual_symmetric_ce(image: torch.Tensor, text: torch.Tensor, scale: float, targets: torch.Tensor,
                        all_image: torch.Tensor, all_text: torch.Tensor) -> torch.Tensor:
    """Cross-entropies written out: −log softmax of the matching pair, image→text and text→image, averaged."""
    i2t = -(F.log_softmax(scale * image @ all_text.T, dim=1)[torch.arange(len(targets)), targets]).mean()
    t2i = -(F.log_softmax(scale * text @ all_image.T, dim=1)[torch.arange(len(targets)), targets]).mean()
    return (i2t + t2i) / 2


def test_contrastive_loss_is_symmetric_infonce():
    head = ContrastiveHead(6, 4).double()
    image, text = head(torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(8, dtype=torch.float64))
    scale = 1 / 0.07
    torch.testing.assert_close(head.loss(image, text), manual_symmetric_ce(image, text, scale, torch.arange(8),
                                                                           image, text))
    # the gathered-features hook: this rank's 5 rows sit at offset 3 among everyone's 8
    local = slice(3, 8)
    torch.testing.assert_close(head.loss(image, text, offset=3, rows=5),
                               manual_symmetric_ce(image[local], text[local], scale, torch.arange(3, 8), image, text))
    with torch.no_grad():
        head.logit_scale.fill_(10.0)  # exp(10) > 100: clamped
    torch.testing.assert_close(head.loss(image, text), manual_symmetric_ce(image, text, 100.0, torch.arange(8),
                                                                           image, text))
    with pytest.raises(ValueError, match=r"rows 4:9 are not among the 8 embeddings"):
        head.loss(image, text, offset=4, rows=5)


def test_contrastive_head_standardizes_pooled_features_over_the_batch():
    """A component every input shares — however large — does not reach the embeddings: each feature is
    standardized over the batch (training) or with the running statistics (evaluation, or a single row)."""
    head = ContrastiveHead(6, 4).double()
    image, text = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    shared = 1000 * torch.randn(6, dtype=torch.float64)
    for plain, shifted in zip(head(image, text), head(image + shared, 3 * text - shared)):
        torch.testing.assert_close(plain, shifted, rtol=1e-4, atol=1e-4)  # up to BatchNorm's eps
    # the running statistics follow the batches' (momentum 0.1), and evaluation uses them
    head = ContrastiveHead(6, 4).double()
    for _ in range(200):
        head(image + shared, text)
    torch.testing.assert_close(head.image_norm.running_mean, (image + shared).mean(0))
    torch.testing.assert_close(head.image_norm.running_var, image.var(0))
    training = head.encode_image(image + shared)
    head.eval()
    torch.testing.assert_close(head.encode_image(image + shared), training, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(head.encode_image(image[:1] + shared), training[:1], rtol=1e-3, atol=1e-3)
    head.train()  # one row in training has no batch statistics: the running ones serve, and nothing is updated
    before = head.image_norm.running_mean.clone()
    torch.testing.assert_close(head.encode_image(image[:1] + shared), training[:1], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(head.image_norm.running_mean, before)


def test_patchify_order_and_masked_patch_loss():
    images = torch.arange(32.0).reshape(1, 2, 4, 4)  # 2 channels
    patches = patchify(images, 2)
    assert patches.shape == (1, 4, 8)
    assert patches[0, 1].tolist() == [2.0, 18.0, 3.0, 19.0, 6.0, 22.0, 7.0, 23.0]  # row-major pixels, channels last
    head = MaskedPatchHead(4, patch=2, channels=2)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    prediction = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, False, False, True]])
    error = (prediction - target).square().mean(-1)  # per patch
    expected = (error[0, 0] + error[0, 3]) / 2
    torch.testing.assert_close(head.loss(prediction, images, mask), expected)
    assert head(torch.randn(1, 4, 4)).shape == (1, 4, 8)
    with pytest.raises(ValueError, match=r"image_mask \[1, 3\] do not match the images' patches \[1, 4, 8\]"):
        head.loss(prediction, images, mask[:, :3])


def test_chamfer_matches_brute_force():
    generator = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 7, 3, dtype=torch.float64, generator=generator), torch.randn(2, 5, 3, dtype=torch.float64,
                                                                                          generator=generator)
    distances = chamfer_distance(a, b)
    for k in range(2):
        ab = sum(min(float((p - q).square().sum()) for q in b[k]) for p in a[k]) / 7
        ba = sum(min(float((p - q).square().sum()) for p in a[k]) for q in b[k]) / 5
        assert float(distances[k]) == pytest.approx(ab + ba, rel=1e-12)
    assert float(chamfer_distance(a[0], a[0, torch.randperm(7)])) == 0.0  # order-free


def test_masked_point_loss_averages_masked_groups():
    head = MaskedPointHead(4, group_size=3).double()
    prediction = head(torch.randn(1, 4, 4, dtype=torch.float64))
    assert prediction.shape == (1, 4, 3, 3)
    groups = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, False]])
    expected = (chamfer_distance(prediction[0, 1], groups[0, 1]) + chamfer_distance(prediction[0, 2], groups[0, 2])) / 2
    torch.testing.assert_close(head.loss(prediction, groups, mask), expected)
    with pytest.raises(ValueError, match=r"point_mask \[1, 3\] do not match the point groups"):
        head.loss(prediction, groups, mask[:, :3])


def test_classification_and_regression_losses():
    head = ClassificationHead(4, 3)
    pooled = torch.randn(2, 4)
    logits = head(pooled)
    torch.testing.assert_close(logits, head.fc(F.layer_norm(pooled, (4,), head.norm.weight, head.norm.bias, 1e-6)))
    labels = torch.tensor([2, 0])
    expected = -(F.log_softmax(logits, -1)[0, 2] + F.log_softmax(logits, -1)[1, 0]) / 2
    torch.testing.assert_close(ClassificationHead.loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got \[3, 0\]"):
        ClassificationHead.loss(logits, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"labels must have shape \[2\], got \[3\]"):
        ClassificationHead.loss(logits, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"classes must be >= 2, got 1 \(one output: the regression task"):
        ClassificationHead(4, 1)

    regression = RegressionHead(4)
    values = regression(pooled)
    assert values.shape == (2,)
    torch.testing.assert_close(
        values, regression.fc(F.layer_norm(pooled, (4,), regression.norm.weight, regression.norm.bias, 1e-6))[:, 0])
    torch.testing.assert_close(RegressionHead.loss(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0])),
                               torch.tensor(0.625))  # (0.25 + 1) / 2
    with pytest.raises(ValueError, match=r"labels must have shape \[2\], got \[2, 1\]"):
        RegressionHead.loss(values, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"labels must be finite floats \(regression targets\), got torch.int64"):
        RegressionHead.loss(values, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"labels must be finite floats .* got torch.float32 \[1.0, nan\]"):
        RegressionHead.loss(values, torch.tensor([1.0, float("nan")]))


def test_attention_pooling_starts_as_the_mean_and_learns_to_pick_tokens():
    torch.manual_seed(0)
    hidden, padding = torch.randn(3, 7, 8), torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2] = True  # no real token
    pool = Pooling(8, 2, "attention")
    pooled = pool(hidden, padding)
    torch.testing.assert_close(pooled[:2], mean_pool(hidden, padding)[:2])
    assert pooled[2].abs().max() == 0
    # a token the score singles out is what every head returns; a padding token never counts, however high its score
    pool.norm = torch.nn.Identity()
    with torch.no_grad():
        pool.score.weight[:, 0] = 50.0
    marked = hidden.clone()
    marked[:, 5, 0] = 100.0                                  # token 5: real in sample 0, padding in sample 1
    picked = pool(marked, padding)
    torch.testing.assert_close(picked[0], marked[0, 5])
    weights = torch.softmax(50.0 * marked[1, :4, 0], dim=0)
    torch.testing.assert_close(picked[1], (weights[:, None] * marked[1, :4]).sum(0))
    with pytest.raises(ValueError, match="pooling must be one of"):
        Pooling(8, 2, "max")


def test_vqa_soft_score_bce_and_mean_pool():
    logits = torch.randn(2, 3)
    scores = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.6]])
    sigmoid = torch.sigmoid(logits)
    expected = -(scores * sigmoid.log() + (1 - scores) * (1 - sigmoid).log()).sum() / 2
    torch.testing.assert_close(VQAHead.loss(logits, scores), expected)
    assert VQAHead(4, 3)(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"answer_scores must lie in \[0, 1\]"):
        VQAHead.loss(logits, scores * 2)
    with pytest.raises(ValueError, match=r"answer_scores must have shape \[2, 3\], got \[2, 2\]"):
        VQAHead.loss(logits, scores[:, :2])
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[False, False, True]])).item() == 2.0
    assert mean_pool(hidden).item() == pytest.approx(104 / 3)
    assert math.isfinite(mean_pool(hidden, torch.ones(1, 3, dtype=torch.bool)).item())
