"""Verification: the fixed batches cover every modality, the same for the same seed, and every head's output is
compared. (Conversions verified end to end, and a failed verification: tests/tools/test_convert_checkpoint.py.)"""

from __future__ import annotations

from dataclasses import asdict

import torch

from itnet_scale.checkpoint.verification import model_outputs, verification_batches
from itnet_scale.models import ModelConfig, create_model
from tests.tools.handmade_checkpoints import SMALL


def test_verification_batches_cover_every_modality():
    batches = verification_batches(SMALL)
    assert set(batches) == {"text", "image", "image_text", "image_pair_text", "points"}
    again = verification_batches(SMALL)
    for kind, batch in batches.items():
        for key, value in batch.items():
            assert torch.equal(value, again[kind][key]), (kind, key)
    assert bool((batches["text"]["text_ids"][1, 8:] == SMALL.pad_id).all())
    outputs = model_outputs(create_model(SMALL), batches)
    assert {"text/mlm_logits", "image/mpm", "points/mpp", "image_text/itc_image", "image_pair_text/hidden"} <= set(
        outputs)
    assert outputs["text/mlm_logits"].shape == (2, 12, SMALL.vocab_size)


def test_model_outputs_cover_what_a_model_builds(monkeypatch):
    """A model of fewer modalities is verified on the batches its encoders take (and its heads); a sentence-pair
    model's text batches carry segment ids; a regression model's outputs are one value per sample."""
    monkeypatch.setenv("ITNET_COMPILE", "0")  # tiny batches: eager tiles
    batches = verification_batches(SMALL)
    images_only = model_outputs(create_model(SMALL, modalities=["image"]), batches)
    assert set(images_only) == {"image/hidden", "image/mpm"}
    pairs = ModelConfig(**{**asdict(SMALL), "modalities": ["text"], "text_segments": 2})
    pair_batches = verification_batches(pairs)
    segments = pair_batches["text"]["text_segment_ids"]
    assert segments[0].tolist() == [0] * 5 + [1] * 7 and segments[1].tolist() == [0] * 5 + [1] * 3 + [0] * 4
    model = create_model(pairs, task="regression")
    with torch.no_grad():
        model.itnet.encoder.text.segment_embedding.weight.normal_()  # so that the segment ids matter
    outputs = model_outputs(model, pair_batches)
    assert set(outputs) == {"text/logits"} and outputs["text/logits"].shape == (2,)
    assert not torch.allclose(outputs["text/logits"], model_outputs(model, batches)["text/logits"])
