"""The score formulas on hand-built kernels: known values, a slow pair-by-pair transcription of each formula on
random kernels with padding, the raster order of 2-D grids, the decision rule and its NaN cases."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from itnet_scale.atlas import AtlasSettings, LayerKernel, head_scores, nearest_special_case
from itnet_scale.atlas.scores import ATTENTION, CONV, MIXED, RECURRENCE, precedes_or_equals


def sequence_kernel(kernel: torch.Tensor, padding: torch.Tensor | None = None) -> LayerKernel:
    """A self-transform over positions 0…N−1 of a ``[B, H, N, N]`` kernel."""
    B, _, N, _ = kernel.shape
    pos = torch.arange(N, dtype=torch.float32)[None, :, None].expand(B, N, 1)
    valid = torch.ones(B, N, dtype=torch.bool) if padding is None else ~padding
    return LayerKernel("layer", 0, kernel, pos, pos, valid, valid)


def slow_scores(layer: LayerKernel, h: int, radius: float) -> dict[str, float]:
    """The module doc's formulas, pair by pair."""
    K = layer.kernel[:, h].double()
    B, Nq, Ns = K.shape
    mass = local = reach = past = 0.0
    groups: dict[tuple, list[float]] = defaultdict(list)
    for b in range(B):
        for i in range(Nq):
            for j in range(Ns):
                if not (layer.query_valid[b, i] and layer.source_valid[b, j]):
                    continue
                pi, pj, k = layer.pos_q[b, i].tolist(), layer.pos_s[b, j].tolist(), float(K[b, i, j])
                distance = math.dist(pi, pj)
                mass += abs(k)
                local += abs(k) * (distance <= radius)
                reach += abs(k) * distance
                past += abs(k) * (pj <= pi)  # python compares lists lexicographically
                groups[(b, *[round(a - c) for a, c in zip(pi, pj)])].append(k)
    within = sum(sum((k - sum(g) / len(g)) ** 2 for k in g) for g in groups.values() if len(g) > 1)
    squares = sum(sum(k * k for k in g) for g in groups.values() if len(g) > 1)
    deviation = total = 0.0
    for i in range(Nq):
        for j in range(Ns):
            if bool(layer.query_valid[:, i].all() and layer.source_valid[:, j].all()):
                column = K[:, i, j]
                deviation += float((column - column.mean()).square().sum())
                total += float(column.square().sum())
    return {"locality": local / mass, "distance": reach / mass, "causality": past / mass,
            "translation": 1 - within / squares, "content": deviation / total}


def test_scores_match_the_formulas_pair_by_pair():
    torch.manual_seed(0)
    kernel = torch.randn(3, 2, 7, 7)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    padding[2, 6] = True
    layer = sequence_kernel(kernel, padding)
    for h, scores in enumerate(head_scores(layer, AtlasSettings(radius=2.0))):
        expected = slow_scores(layer, h, 2.0)
        for name, value in expected.items():
            assert getattr(scores, name) == pytest.approx(value, rel=1e-9), name


def test_known_kernels():
    N = 6
    identity = torch.eye(N).expand(2, 1, N, N)
    (s,) = head_scores(sequence_kernel(identity))
    assert (s.locality, s.distance, s.causality, s.translation, s.content) == (1.0, 0.0, 1.0, 1.0, 0.0)
    assert s.kind == CONV
    future = torch.ones(N, N).triu(1).expand(2, 1, N, N)  # every source after its query, uniform
    (s,) = head_scores(sequence_kernel(future))
    assert s.causality == 0.0 and s.translation == 1.0 and s.content == 0.0
    assert s.locality == pytest.approx(5 / 15)  # of the 15 pairs j > i, the 5 with j = i + 1 are within 1.5
    assert s.kind == MIXED
    # a causal mean (1/(i+1) on j ≤ i): causal, not translation-invariant (row i's weight depends on i)
    mean = (torch.ones(N, N).tril() / torch.arange(1, N + 1)[:, None]).expand(2, 1, N, N)
    (s,) = head_scores(sequence_kernel(mean))
    assert s.causality == 1.0 and s.translation < 0.9 and s.kind == RECURRENCE
    # content: the same kernel (the next token) scaled by c_b = 1 and 3 → Σ_b (c_b − 2)² / Σ_b c_b² = 2 / 10
    scaled = torch.eye(N).roll(1, 1)[None, None] * torch.tensor([1.0, 3.0])[:, None, None, None]
    (s,) = head_scores(sequence_kernel(scaled))
    assert s.content == pytest.approx(0.2) and s.translation == 1.0 and s.kind == ATTENTION


def test_raster_order_on_an_image_grid():
    rows = torch.arange(3.0).repeat_interleave(3)
    pos = torch.stack([torch.zeros(9), rows, torch.arange(3.0).repeat(3)], -1)[None]  # (0, row, col), row-major
    before = precedes_or_equals(pos, pos)[0]
    assert torch.equal(before, torch.ones(9, 9).tril().bool())  # raster order = token order here
    centre = 4  # (1, 1)
    assert before[centre, 2] and before[centre, 3] and not before[centre, 5] and not before[centre, 6]


def test_nan_cases_and_the_decision_rule():
    one_sample = head_scores(sequence_kernel(torch.eye(4)[None, None]))[0]
    assert math.isnan(one_sample.content) and one_sample.kind == RECURRENCE  # causal; content unknown
    # point clouds: positions differ between samples → content undefined; one query among irregular sources → no
    # offset repeats, translation undefined
    pos = torch.rand(2, 5, 3)
    valid = torch.ones(2, 5, dtype=torch.bool)
    (s,) = head_scores(LayerKernel("p", 0, torch.rand(2, 1, 1, 5), pos[:, :1] - 5, pos, valid[:, :1], valid),
                       AtlasSettings(offset_resolution=1e-6))
    assert math.isnan(s.content) and math.isnan(s.translation) and s.kind == MIXED
    assert s.as_dict()["content"] is None
    rule = AtlasSettings()
    assert nearest_special_case(0.9, 0.95, 0.01, 1.0, rule) == CONV
    assert nearest_special_case(0.9, 0.5, 0.01, 1.0, rule) == RECURRENCE  # local but not translation-invariant
    assert nearest_special_case(0.9, 0.95, 0.2, 0.5, rule) == ATTENTION
    assert nearest_special_case(0.1, 0.95, 0.01, 0.5, rule) == MIXED
    assert nearest_special_case(math.nan, math.nan, math.nan, math.nan, rule) == MIXED


@pytest.mark.parametrize(("key", "value"), [("radius", -1.0), ("radius", math.inf), ("offset_resolution", 0.0),
                                            ("local_threshold", 1.5), ("content_threshold", -0.1)])
def test_bad_settings_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key):
        AtlasSettings(**{key: value})
