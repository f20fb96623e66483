"""A micro-step's losses: every stream's objectives, weighted; stand-ins count for nothing; the gather is exact."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.train.config import ObjectiveSettings
from itnet_scale.train.loop import Part
from itnet_scale.train.objectives import gather_rows, micro_step_losses


def part(value: float, weight: float) -> Part:
    return Part({"value": torch.tensor(value, requires_grad=True)}, weight, samples=4, tokens=40)


def fake_model(batch, gather=None):
    """Losses named like the model's: a text batch trains mlm, a pair batch itc and mlm."""
    value = batch["value"]
    return {"mlm": value * 2} if gather is None else {"itc": value, "mlm": value + 1}


def test_weighted_total_and_logged_means():
    settings = ObjectiveSettings(loss_weights={"mlm": 0.5}, gather_contrastive=False)
    parts = [part(1.0, 1.0), part(3.0, 1.0)]
    total, losses = micro_step_losses(fake_model, parts, settings)
    assert float(total.detach()) == pytest.approx(0.5 * 2.0 + 0.5 * 6.0)
    assert {k: float(v) for k, v in losses.items()} == {"mlm": 4.0}  # the mean over both streams' mlm
    total.backward()
    assert float(parts[0].batch["value"].grad) == pytest.approx(1.0)


def test_stand_ins_run_but_count_for_nothing():
    settings = ObjectiveSettings()
    gather = object()  # passed through to the model: the contrastive batches gather across ranks
    parts = [part(1.0, 1.0), part(3.0, 0.0)]
    total, losses = micro_step_losses(lambda b, gather=None: fake_model(b, gather if b["value"] > 2 else None),
                                      parts, settings, gather)
    assert float(total.detach()) == pytest.approx(2.0)
    assert set(losses) == {"mlm"} and float(losses["mlm"]) == 2.0
    total.backward()
    assert float(parts[1].batch["value"].grad) == 0.0  # it ran (every rank runs every objective), weight 0


def test_gather_rows_alone_is_the_identity():
    rows = torch.randn(5, 3, requires_grad=True)
    gathered, offset = gather_rows(rows)
    assert gathered is rows and offset == 0
