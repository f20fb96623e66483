"""Scores of a captured kernel, per head, and the special case each head is nearest to.

For one head, with ``K_b(i,j)`` the kernel of sample ``b``, ``A = |K|`` and the sums over the valid pairs (real
query, real source; :class:`~itnet_scale.atlas.capture.LayerKernel`)::

    locality    = Σ A·[‖p_i − p_j‖₂ ≤ ρ] / Σ A                       share of the mass within radius ρ of the query
    distance    = Σ A·‖p_i − p_j‖₂ / Σ A                            mass-weighted mean reach, in position units
    causality   = Σ A·[p_j ⪯ p_i] / Σ A                             share of the mass at or before the query
    translation = 1 − Σ_g Σ_{(i,j)∈g} (K − K̄_g)² / Σ_g Σ_{(i,j)∈g} K²
    content     = Σ_{(i,j)∈C} Σ_b (K_b − K̄)² / Σ_{(i,j)∈C} Σ_b K_b²   K̄ = mean over the batch at (i,j)

- ``⪯`` is the lexicographic order of the position vectors, first axis first: the sequence order for text
  (positions ``(t, 0, 0)``) and the raster (row-major) order for an image grid (``(0, row, column)``).
- translation: the groups ``g`` are the pairs of one sample with the same offset ``p_i − p_j`` (rounded to
  ``offset_resolution``), and only groups of two pairs or more count. 1 means ``K`` depends on the offset alone
  (a convolution); it drops as ``K`` varies along the sequence at a fixed offset. NaN when no offset repeats
  (irregular positions below the resolution).
- content: the pairs ``C`` are those valid in every sample whose positions are the same in every sample (so the
  kernel is compared at fixed positions). 0 means the same kernel for every input; it grows as the kernel follows
  the input. NaN with one sample or when positions differ between samples (point clouds).

Both ratios divide a sum of squared deviations from a mean by the sum of squares of its terms, so each lies in
[0, 1] (the sum of squares is the variance plus the squared mean).

:func:`nearest_special_case` reads them, in this order:

1. **conv-like**: local (``locality ≥ local_threshold``), translation-invariant (``translation ≥
   translation_threshold``) and content-independent (``content ≤ content_threshold``) — what a convolution is;
2. **recurrence-like**: causal (``causality ≥ causal_threshold``) — what a recurrence computes: each position
   reads only its past (a causal softmax attention lands here too; its content score tells it apart);
3. **attention-like**: content-dependent (``content > content_threshold``);
4. **mixed/global** otherwise (e.g. a fixed global mixing, or a kernel that is neither). A NaN score fails the
   test that reads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from itnet_scale.atlas.capture import LayerKernel

CONV, RECURRENCE, ATTENTION, MIXED = "conv-like", "recurrence-like", "attention-like", "mixed/global"
CLASSES = (CONV, RECURRENCE, ATTENTION, MIXED)
SCORES = ("locality", "distance", "translation", "content", "causality")


@dataclass(frozen=True)
class AtlasSettings:
    """The scores' parameters and the decision rule's thresholds (see the module doc).

    radius: ``ρ`` of the locality score, in position units (1.5: the 3 nearest tokens of a sequence, the 3×3
        neighbourhood of a grid). offset_resolution: offsets are rounded to multiples of it for the translation
        score. The thresholds: see :func:`nearest_special_case`.
    """

    radius: float = 1.5
    offset_resolution: float = 1.0
    local_threshold: float = 0.75
    translation_threshold: float = 0.9
    content_threshold: float = 0.05
    causal_threshold: float = 0.99

    def __post_init__(self) -> None:
        if not self.radius >= 0 or not math.isfinite(self.radius):
            raise ValueError(f"atlas radius must be a finite number >= 0, got {self.radius}")
        if not self.offset_resolution > 0:
            raise ValueError(f"atlas offset_resolution must be > 0, got {self.offset_resolution}")
        for name in ("local_threshold", "translation_threshold", "content_threshold", "causal_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"atlas {name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class HeadScores:
    """One head's scores (see the module doc) and its nearest special case (``kind``, one of :data:`CLASSES`)."""

    locality: float
    distance: float
    translation: float
    content: float
    causality: float
    kind: str

    def as_dict(self) -> dict[str, float | str | None]:
        """JSON-ready: NaN scores become None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def nearest_special_case(locality: float, translation: float, content: float, causality: float,
                         settings: AtlasSettings) -> str:
    """The decision rule of the module doc (NaN fails every comparison)."""
    if (locality >= settings.local_threshold and translation >= settings.translation_threshold
            and content <= settings.content_threshold):
        return CONV
    if causality >= settings.causal_threshold:
        return RECURRENCE
    if content > settings.content_threshold:
        return ATTENTION
    return MIXED


def _ratio(numerator: Tensor, denominator: Tensor) -> list[float]:
    """``numerator / denominator`` per head, NaN where the denominator is 0."""
    out = numerator.double() / denominator.double()
    return torch.where(denominator > 0, out, torch.full_like(out, math.nan)).tolist()


def precedes_or_equals(pos_q: Tensor, pos_s: Tensor) -> Tensor:
    """``[B, Nq, Ns]`` bool: ``p_j ⪯ p_i`` in the lexicographic order (first axis first)."""
    pi, pj = pos_q[:, :, None, :], pos_s[:, None, :, :]
    before = torch.ones(pi.shape[0], pi.shape[1], pj.shape[2], dtype=torch.bool)
    for k in reversed(range(pos_q.shape[-1])):
        before = (pj[..., k] < pi[..., k]) | ((pj[..., k] == pi[..., k]) & before)
    return before


def translation_scores(layer: LayerKernel, valid: Tensor, resolution: float) -> list[float]:
    """Per head, ``1 − within-offset sum of squared deviations / sum of squares`` over the repeated offsets."""
    K = layer.kernel.double()
    B, H, Nq, Ns = K.shape
    offset = torch.round((layer.pos_q[:, :, None, :] - layer.pos_s[:, None, :, :]) / resolution).long()
    batch = torch.arange(B)[:, None, None, None].expand(B, Nq, Ns, 1)
    keys = torch.cat([batch, offset], -1)[valid]  # [pairs, 1 + P]: (sample, offset)
    if keys.shape[0] == 0:
        return [math.nan] * H
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    groups = int(group.max()) + 1
    values = K.permute(1, 0, 2, 3)[:, valid]  # [H, pairs]
    count = torch.zeros(groups, dtype=torch.float64).index_add_(0, group, torch.ones_like(group, dtype=torch.float64))
    total = torch.zeros(H, groups, dtype=torch.float64).index_add_(1, group, values)
    squares = torch.zeros(H, groups, dtype=torch.float64).index_add_(1, group, values.square())
    repeated = count >= 2
    if not bool(repeated.any()):
        return [math.nan] * H
    squares, total, count = squares[:, repeated], total[:, repeated], count[repeated]
    within = (squares - total.square() / count).sum(1).clamp_min(0)  # Σ (K − K̄_g)² = Σ K² − (Σ K)² / n per group
    all_squares = squares.sum(1)
    return [1.0 - r if not math.isnan(r) else r for r in _ratio(within, all_squares)]


def content_scores(layer: LayerKernel) -> list[float]:
    """Per head, the batch variance of ``K`` at fixed pairs over its mean square (module doc)."""
    K = layer.kernel.double()
    B, H = K.shape[:2]
    if B < 2:
        return [math.nan] * H
    same_q = (layer.pos_q == layer.pos_q[:1]).all(-1).all(0)  # [Nq]: this query's position is the same everywhere
    same_s = (layer.pos_s == layer.pos_s[:1]).all(-1).all(0)
    pairs = (layer.query_valid.all(0) & same_q)[:, None] & (layer.source_valid.all(0) & same_s)[None, :]
    if not bool(pairs.any()):
        return [math.nan] * H
    values = K[:, :, pairs]  # [B, H, pairs]
    deviation = (values - values.mean(0, keepdim=True)).square().sum((0, 2))
    return _ratio(deviation, values.square().sum((0, 2)))


def head_scores(layer: LayerKernel, settings: AtlasSettings | None = None) -> list[HeadScores]:
    """The scores of every head of ``layer`` (module doc) and each head's nearest special case."""
    settings = settings or AtlasSettings()
    valid = layer.query_valid[:, :, None] & layer.source_valid[:, None, :]  # [B, Nq, Ns]
    mass = layer.kernel.abs().double() * valid[:, None]  # [B, H, Nq, Ns]
    distance = torch.linalg.vector_norm(layer.pos_q[:, :, None, :] - layer.pos_s[:, None, :, :], dim=-1).double()
    total = mass.sum((0, 2, 3))
    local = torch.einsum("bhqs,bqs->h", mass, (distance <= settings.radius).double())
    reach = torch.einsum("bhqs,bqs->h", mass, distance)
    past = torch.einsum("bhqs,bqs->h", mass, precedes_or_equals(layer.pos_q, layer.pos_s).double())
    locality, mean_distance, causality = _ratio(local, total), _ratio(reach, total), _ratio(past, total)
    translation = translation_scores(layer, valid, settings.offset_resolution)
    content = content_scores(layer)
    return [HeadScores(locality[h], mean_distance[h], translation[h], content[h], causality[h],
                       nearest_special_case(locality[h], translation[h], content[h], causality[h], settings))
            for h in range(layer.heads)]
