"""Verification: the fixed batches cover every modality, the same for the same seed, and every head's output is
compared. (Conversions verified end to end, and a failed verification: tests/tools/test_convert_checkpoint.py.)"""

from __future__ import annotations

import torch

from itnet_scale.checkpoint.verification import model_outputs, verification_batches
from itnet_scale.models import create_model
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
