"""The contrastive objective learns: the tiny model fits one fixed batch of 16 digit–caption pairs with the
contrastive loss alone (fp32, CPU). Mean pooling left the pooled features dominated by what every input shares,
and the loss stayed at chance (ln 16); the head now standardizes them over the batch (see ``ContrastiveHead``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itnet_scale.data.demo import DIGIT_NAMES, digit_images
from itnet_scale.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from itnet_scale.models import create_model
from itnet_scale.train.optimizer import OptimizerSettings, build_optimizer

PAIRS = 16
TEMPLATES = ("a handwritten digit {name}", "the number {numeral} written by hand",
             "a scanned image of a handwritten {name}", "handwritten {numeral} on a dark background")


@pytest.fixture(scope="module")
def caption_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("captions") / "captions.txt"
    lines = [t.format(name=DIGIT_NAMES[d], numeral=d) for d in range(10) for t in TEMPLATES]
    corpus.write_text("\n\n".join(lines * 20), encoding="utf-8")
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerConfig(inputs=[str(corpus)], vocab_size=50), folder)
    return Tokenizer.from_dir(folder)


def fixed_batch(tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """16 demo digits (as pretraining feeds them: pixels / 255) with 16 distinct captions."""
    images, labels = digit_images(32)
    rng = np.random.default_rng(0)
    chosen, captions = [], []
    for index in rng.permutation(len(labels)):
        digit = int(labels[index])
        caption = TEMPLATES[len(chosen) % len(TEMPLATES)].format(name=DIGIT_NAMES[digit], numeral=digit)
        if caption not in captions:
            chosen.append(index)
            captions.append(caption)
        if len(chosen) == PAIRS:
            break
    ids, attention = tokenizer.batch_encode(captions, max_length=64, pad_to="longest")
    pixels = torch.from_numpy(images[chosen]).float()[:, None] / 255.0
    return {"images": pixels, "text_ids": ids, "text_attention_mask": attention}


def test_tiny_model_fits_a_fixed_batch_with_the_contrastive_loss_alone(caption_tokenizer: Tokenizer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITNET_COMPILE", "0")  # eager tiles: compiling is not what this checks
    torch.manual_seed(0)
    model = create_model("tiny", task="pretraining", vocab_size=caption_tokenizer.vocab_size).train()
    optimizer = build_optimizer(model, OptimizerSettings(lr=1e-3, weight_decay=0.05))
    batch = fixed_batch(caption_tokenizer)
    losses = []
    for _ in range(200):
        loss = model.losses(batch)["itc"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        if loss < 0.05:
            break
    assert min(losses) < 0.1, f"contrastive loss {losses[0]:.3f} → {losses[-1]:.3f} after {len(losses)} steps " \
                              f"(chance: ln {PAIRS} = {math.log(PAIRS):.3f})"
    print(f"contrastive loss {losses[0]:.3f} → {losses[-1]:.3f} in {len(losses)} steps")
