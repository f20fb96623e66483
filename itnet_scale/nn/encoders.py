"""Modality encoders: token ids, images and point clouds → tokens ``[B, N, dim]`` at positions ``[B, N, 3]`` in
one shared position space, with a padding mask ``[B, N]`` (True = padding) and a modality-type embedding added.

Position convention (:data:`POS_DIM` = 3, coordinates ``(sequence, row, column)``). The kernel MLP sees only
offsets ``p_i − p_j``, so what matters is that offsets are meaningful within a modality and that modalities
never share a position:

- **text** token ``t`` (0-based) sits at ``(t + 1, 0, 0)``: a 1-D sequence on the first axis, the axis that
  causal supports and the causal low-rank scan follow; it starts at 1, so text is never at an image position;
- **image** patch ``(r, c)`` (row, column in patch units) of the first image sits at ``(0, r, c)``; the second
  image of a pair at ``(−1, r, c)``: each image is a plane *before* the text (first coordinate ≤ 0 < any text
  position), so the two images of a pair line up patch for patch, one unit apart;
- **point cloud** tokens sit at their centers: the cloud is centered on its centroid and scaled into the unit
  ball (so positions do not depend on the data set's units), then multiplied by ``position_scale`` (8 by
  default, so neighbouring tokens are a few units apart, like patches and text tokens).

Concatenated inputs (:class:`MultimodalEncoder`: image + text, image pair + text) keep each part's positions,
so offsets inside one modality are those of the modality alone; the modality-type embeddings (one per
encoder, two for the images of a pair) tell the backbone which part a token came from.

**Sentence pairs** (GLUE's pairs) are one text sequence ``<cls> first <sep> second <sep>``
(:meth:`itnet_scale.data.tokenizer.Tokenizer.batch_encode_pairs`). The model tells the two segments apart by the
``<sep>`` token between them and, with ``text_segments=2``, by a learned segment embedding added to each token,
chosen by ``text_segment_ids`` ``[B, L]`` (0 = first, 1 = second). The segment embedding starts at zero, so a
pretrained model loaded for pairs computes exactly what it did before fine-tuning moves it. Positions stay one
sequence ``1 … L`` across both segments: the offsets the pretrained kernels learned on running text hold inside
each segment and across the separator.

**Other resolutions and lengths.** No encoder holds a table of positions: a patch's position is its grid
coordinate and a text token's its index, and the kernels are functions of the offsets ``p_i − p_j``. A model
pretrained at 32×32 images and 128 tokens runs at 48×48 and 512 tokens as it is, with nothing to interpolate. What
changes is the extent of the offsets: a ``window``/``radius`` support (``support_size``, in position units: text
tokens, patches) keeps covering the same number of neighbours — a smaller share of a larger image — and a global
(``all``) layer meets offsets larger than any seen in pretraining, where its kernel MLP extrapolates (ReLU: linearly).
An ``offset_range`` table gives offsets beyond its range 0.

Task models pool the real tokens by the model's ``pooling`` (the mean, or attention weights:
:class:`itnet_scale.nn.heads.Pooling`); there is no ``[CLS]`` token, so every modality and every combination
pools the same way. A model builds only the encoders of its ``modalities`` (:class:`MultimodalEncoder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

POS_DIM = 3
#: Which input keys of a batch make which modality (see :class:`MultimodalEncoder`).
MODALITIES: dict[frozenset[str], str] = {
    frozenset({"text_ids"}): "text",
    frozenset({"images"}): "image",
    frozenset({"images", "text_ids"}): "image_text",
    frozenset({"images", "images2", "text_ids"}): "image_pair_text",
    frozenset({"points"}): "points",
}
INPUT_KEYS = ("images", "images2", "text_ids", "points")
#: The encoders a model may build (``ModelConfig.modalities``), and those each batch modality runs through.
ENCODER_MODALITIES = ("image", "text", "points")
ENCODERS_OF_MODALITY: dict[str, tuple[str, ...]] = {
    "text": ("text",), "image": ("image",), "image_text": ("image", "text"), "image_pair_text": ("image", "text"),
    "points": ("points",)}
EMBEDDING_STD = 0.02  # BERT/ViT initialization of embeddings and learned tokens


class EncodedTokens(NamedTuple):
    """Encoder output: ``tokens`` ``[B, N, dim]``, ``pos`` ``[B, N, 3]``, ``padding_mask`` ``[B, N]`` (True =
    padding), ``segments`` (part name → slice of N: ``text``, ``image``, ``image2``, ``points``) and, for point
    clouds, ``point_groups`` ``[B, G, k, 3]``: each token's points relative to its center (unit-ball frame).

    A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks the tensors of a module's output to gather the module's
    parameters for its backward, and it looks into tuples, lists and dicts only."""

    tokens: Tensor
    pos: Tensor
    padding_mask: Tensor
    segments: dict[str, slice]
    point_groups: Tensor | None = None

    @classmethod
    def concat(cls, parts: Sequence[EncodedTokens]) -> EncodedTokens:
        """The parts one after the other along N (segments shifted to match)."""
        batch = {part.tokens.shape[0] for part in parts}
        if len(batch) != 1:
            sizes = {name: part.tokens.shape[0] for part in parts for name in part.segments}
            raise ValueError(f"inputs of one batch must have the same batch size, got {sizes}")
        segments, start = {}, 0
        for part in parts:
            segments.update({name: slice(start + s.start, start + s.stop) for name, s in part.segments.items()})
            start += part.tokens.shape[1]
        groups = [part.point_groups for part in parts if part.point_groups is not None]
        return cls(torch.cat([p.tokens for p in parts], 1), torch.cat([p.pos for p in parts], 1),
                   torch.cat([p.padding_mask for p in parts], 1), segments, groups[0] if groups else None)


def position_dtype(like: Tensor) -> torch.dtype:
    """Positions are at least float32: integer positions above 256 are not exact in 16-bit floats."""
    return torch.promote_types(like.dtype, torch.float32)


def text_positions(length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[length, 3]``: token ``t`` at ``(t + 1, 0, 0)``."""
    pos = torch.zeros(length, POS_DIM, device=device, dtype=dtype)
    pos[:, 0] = torch.arange(1, length + 1, device=device, dtype=dtype)
    return pos


def grid_positions(rows: int, cols: int, image_index: int = 0, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """``[rows · cols, 3]`` (row-major): patch ``(r, c)`` of image ``image_index`` at ``(−image_index, r, c)``."""
    r, c = torch.meshgrid(torch.arange(rows, device=device, dtype=dtype),
                          torch.arange(cols, device=device, dtype=dtype), indexing="ij")
    return torch.stack([torch.full_like(r, -float(image_index)), r, c], dim=-1).flatten(0, 1)


def _check_mask(name: str, mask: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """A bool mask of ``shape`` (ints 0/1 accepted), or None; anything else raises naming ``name``."""
    if mask is None:
        return None
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(f"{name} must be bool or integer 0/1, got {mask.dtype}")
        mask = mask.bool()
    return mask


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """``modalities`` as a tuple if it names each of :data:`ENCODER_MODALITIES` at most once (at least one);
    otherwise ``ValueError`` naming the ``modalities`` key."""
    if isinstance(modalities, str):
        raise ValueError(f"modalities must be a list of {list(ENCODER_MODALITIES)}, got the string {modalities!r}")
    modalities = tuple(modalities)
    unknown = [name for name in modalities if name not in ENCODER_MODALITIES]
    if unknown:
        raise ValueError(f"modalities: unknown {unknown}; choose from {list(ENCODER_MODALITIES)}")
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must name at least one of {list(ENCODER_MODALITIES)}, each once, got "
                         f"{list(modalities)}")
    return modalities


class TextEncoder(nn.Module):
    """Sentencepiece ids ``[B, L]`` (+ ``attention_mask`` ``[B, L]``, True/1 = real token; without it, ``pad_id``
    marks padding) → token embeddings + the text type embedding, at :func:`text_positions`.

    ``segments > 1`` (sentence pairs): ``segment_ids`` ``[B, L]`` in ``[0, segments)`` add a learned segment
    embedding per token, zero at initialization (see the module doc). With ``segments=1`` there is no segment
    embedding and ``segment_ids``, if given, must be all 0.
    """

    #: Parameters a pretrained folder may lack: they start at their initialization (zero), under which the model
    #: computes what it did without them (the library's loader fills them so, and logs it).
    FRESH_IF_ABSENT = ("segment_embedding.weight",)

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0, segments: int = 1) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id below vocab_size={vocab_size}")
        if segments < 1:
            raise ValueError(f"text_segments must be >= 1, got {segments}")
        self.pad_id, self.segments = pad_id, segments
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_STD)  # the MLM decoder may be tied to it
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.type_embedding = nn.Parameter(torch.randn(dim) * EMBEDDING_STD)
        self.segment_embedding = None
        if segments > 1:
            self.segment_embedding = nn.Embedding(segments, dim)
            nn.init.zeros_(self.segment_embedding.weight)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None,
                segment_ids: Tensor | None = None) -> EncodedTokens:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text_ids must be integer [batch, length], got {list(ids.shape)} {ids.dtype}")
        vocab = self.embedding.num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"text_ids must lie in [0, {vocab}), got values in [{int(ids.min())}, {int(ids.max())}]")
        attention_mask = _check_mask("text_attention_mask", attention_mask, tuple(ids.shape))
        padding = ids == self.pad_id if attention_mask is None else ~attention_mask
        tokens = self.embedding(ids) + self.type_embedding
        if segment_ids is not None:
            self._check_segment_ids(segment_ids, tuple(ids.shape))
            if self.segment_embedding is not None:
                tokens = tokens + self.segment_embedding(segment_ids)
        pos = text_positions(ids.shape[1], ids.device, position_dtype(tokens)).expand(ids.shape[0], -1, -1)
        return EncodedTokens(tokens, pos, padding, {"text": slice(0, ids.shape[1])})

    def _check_segment_ids(self, segment_ids: Tensor, shape: tuple[int, ...]) -> None:
        if tuple(segment_ids.shape) != shape or segment_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text_segment_ids must be integer {list(shape)} like text_ids, got "
                             f"{list(segment_ids.shape)} {segment_ids.dtype}")
        if segment_ids.numel() and (int(segment_ids.min()) < 0 or int(segment_ids.max()) >= self.segments):
            hint = " (set text_segments=2 in the model config to tell sentence pairs apart)" \
                if self.segments == 1 else ""
            raise ValueError(f"text_segment_ids must lie in [0, {self.segments}), got values in "
                             f"[{int(segment_ids.min())}, {int(segment_ids.max())}]{hint}")


IMAGE_STEMS = ("patchify", "conv")


def check_image_stem(stem: str, patch: int) -> None:
    """``ValueError`` naming ``image_stem`` unless ``stem`` can make ``patch × patch`` patches."""
    if stem not in IMAGE_STEMS:
        raise ValueError(f"image_stem must be one of {IMAGE_STEMS}, got {stem!r}")
    if stem == "conv" and (patch < 2 or patch & (patch - 1)):
        raise ValueError(f"image_stem='conv' halves the image per layer: patch_size must be a power of two >= 2, "
                         f"got {patch}")


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of every pixel of ``[B, C, H, W]`` (ConvNeXt's stem norm; torch has no 2-D
    form). Per sample and per pixel, unlike BatchNorm: a token never depends on the other samples of its batch, so
    data-parallel ranks, micro-batch splits and evaluation compute exactly what one large batch would."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def conv_stem(channels: int, dim: int, patch: int, eps: float = 1e-6) -> nn.Sequential:
    """``[B, channels, H, W] → [B, dim, H / patch, W / patch]``: ``log2(patch)`` blocks of 3×3 stride-2
    convolution, :class:`ChannelNorm` and ReLU (widths doubling up to ``dim / 2``), then a 1×1 convolution to
    ``dim``."""
    check_image_stem("conv", patch)
    layers, width, steps = [], channels, patch.bit_length() - 1
    for step in range(steps):
        out = max(dim // 2 ** (steps - step), 8)
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), ChannelNorm(out, eps=eps), nn.ReLU()]
        width = out
    return nn.Sequential(*layers, nn.Conv2d(width, dim, 1))


class ImageEncoder(nn.Module):
    """Images ``[B, C, H, W]`` → one token per ``patch × patch`` patch, row-major, at :func:`grid_positions`, plus
    the type embedding of image ``index`` (0: ``image``, 1: ``image2``, the second image of a pair).

    ``stem``: ``patchify``, one ``Conv2d`` with kernel = stride = patch (ViT); or ``conv``, ``log2(patch)``
    3×3 stride-2 convolutions with a per-pixel channel norm and ReLU, then a 1×1 convolution to ``dim`` (the
    convolutional stem of Xiao et al. 2021, "Early convolutions help transformers see better", with ConvNeXt's
    norm in BatchNorm's place: the same token grid, but each token sees a 3×3 neighbourhood at every scale, which a
    single linear map of a patch does not). The pixels of masked patches are zeroed before the stem, so that a
    visible token, whose receptive field overlaps its neighbours' patches, cannot see what masked patch modeling
    asks the model to reconstruct.

    ``mask`` ``[B, h·w]`` (True = hidden, for masked patch modeling) replaces those tokens by a learned mask
    token; their positions stay, so the model knows where to reconstruct.
    """

    def __init__(self, channels: int, dim: int, patch: int, max_images: int = 2, stem: str = "patchify") -> None:
        super().__init__()
        check_image_stem(stem, patch)
        self.patch, self.channels = patch, channels
        self.stem = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch) if stem == "patchify" else \
            conv_stem(channels, dim, patch)
        self.mask_token = nn.Parameter(torch.randn(dim) * EMBEDDING_STD)
        self.type_embedding = nn.Parameter(torch.randn(max_images, dim) * EMBEDDING_STD)

    @property
    def input_weight_name(self) -> str:
        """The name (under this module) of the stem's first convolution's weight ``[out, channels, k, k]``: the one
        tensor whose shape depends on ``channels`` (:func:`adapt_input_channels`)."""
        return "stem.weight" if isinstance(self.stem, nn.Conv2d) else "stem.0.weight"

    def grid(self, images: Tensor, name: str = "images") -> tuple[int, int]:
        """Patch rows and columns of ``images``; a wrong layout or sides that are not multiples of the patch
        raise naming ``name``."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"{name} must be [batch, {self.channels}, height, width], "
                             f"got {list(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.patch or W % self.patch or H == 0 or W == 0:
            raise ValueError(f"{name}: image size {H}×{W} is not a positive multiple of patch_size={self.patch}")
        return H // self.patch, W // self.patch

    def forward(self, images: Tensor, mask: Tensor | None = None, index: int = 0) -> EncodedTokens:
        name = "images" if index == 0 else f"images{index + 1}"
        if not 0 <= index < self.type_embedding.shape[0]:
            raise ValueError(f"image index {index} is out of range: the encoder embeds "
                             f"{self.type_embedding.shape[0]} images per sample")
        h, w = self.grid(images, name)
        B = images.shape[0]
        mask = _check_mask(f"{name.replace('images', 'image')}_mask", mask, (B, h * w))
        images = images.to(self.mask_token.dtype)  # pixels in the weights' dtype (a bf16 model takes fp32 images)
        if mask is not None:  # hidden patches' pixels out of every token's receptive field
            hidden = mask.view(B, 1, h, w).repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
            images = images.masked_fill(hidden, 0.0)
        tokens = self.stem(images).flatten(2).transpose(1, 2)  # [B, h·w, dim]
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.type_embedding[index]
        pos = grid_positions(h, w, index, images.device, position_dtype(tokens)).expand(B, -1, -1)
        padding = torch.zeros(B, h * w, dtype=torch.bool, device=images.device)
        return EncodedTokens(tokens, pos, padding, {name.replace("images", "image"): slice(0, h * w)})


def adapt_input_channels(weight: Tensor, channels: int) -> Tensor:
    """A convolution weight ``[out, C, k, k]`` adapted to ``channels`` input channels, as timm's
    ``adapt_input_conv`` does: to one channel, the sum over the ``C`` (an image's gray value replicated ``C``
    times gives the same output); from ``C`` to more, the ``C`` channels repeated and scaled by ``C / channels``
    (1 → 3: each third of the gray weight, so a gray image replicated to 3 channels gives the same output).
    Computed in fp32, returned in ``weight``'s dtype."""
    if weight.dim() != 4:
        raise ValueError(f"adapt_input_channels: expected a convolution weight [out, in, k, k], got "
                         f"{list(weight.shape)}")
    if channels < 1:
        raise ValueError(f"adapt_input_channels: channels must be >= 1, got {channels}")
    stored = weight.shape[1]
    if channels == stored:
        return weight
    adapted = weight.float()
    if channels == 1:
        adapted = adapted.sum(1, keepdim=True)
    else:
        repeats = -(-channels // stored)
        adapted = adapted.repeat(1, repeats, 1, 1)[:, :channels] * (stored / channels)
    return adapted.to(weight.dtype)


def farthest_point_sampling(points: Tensor, count: int, padding_mask: Tensor | None = None) -> Tensor:
    """Indices ``[B, count]`` into ``points`` ``[B, P, D]``: each chosen point is the one farthest (squared
    Euclidean) from those chosen before; deterministic, starting at each cloud's first real point. Points marked
    in ``padding_mask`` ``[B, P]`` (True = padding) are never chosen. ``O(count · P)`` per cloud."""
    if points.dim() != 3:
        raise ValueError(f"farthest_point_sampling: points must be [batch, points, dims], got {list(points.shape)}")
    B, P, _ = points.shape
    real = torch.ones(B, P, dtype=torch.bool, device=points.device) if padding_mask is None else ~padding_mask
    fewest = int(real.sum(1).min()) if B else count
    if count < 1 or fewest < count:
        raise ValueError(f"farthest_point_sampling: cannot sample {count} points from a cloud with {fewest} "
                         "real points (need 1 <= count <= real points)")
    distance = torch.where(real, torch.inf, -torch.inf).to(points.dtype)  # to the chosen set; padding: never
    chosen = torch.empty(B, count, dtype=torch.long, device=points.device)
    current = real.int().argmax(1)  # the first real point
    batch = torch.arange(B, device=points.device)
    for i in range(count):
        chosen[:, i] = current
        step = (points - points[batch, current][:, None]).square().sum(-1)
        distance = torch.where(real, torch.minimum(distance, step), distance)
        current = distance.argmax(1)
    return chosen


class PointEncoder(nn.Module):
    """Point clouds ``[B, P, 3]`` xyz (+ ``padding_mask`` ``[B, P]``) → tokens at their centers.

    The cloud is centered on its centroid and scaled into the unit ball. With ``tokens`` set, farthest-point
    sampling picks that many centers; with ``tokens=None`` every real point is a center (padding stays
    padding). Each center groups its ``group_size`` nearest points; a per-point MLP reads each point's offset
    from its center and the center's offset from the centroid (6 numbers), and the group is max-pooled into
    one token (a mini-PointNet; ``group_size=1`` is a plain per-point MLP on xyz relative to the centroid).

    ``mask`` ``[B, tokens]`` (True = hidden, for masked point modeling) replaces those tokens by a learned mask
    token. The output's ``point_groups`` ``[B, tokens, group_size, 3]`` are the groups' offsets from their
    centers, the targets of masked point modeling.
    """

    def __init__(self, dim: int, tokens: int | None, group_size: int, hidden: int = 128,
                 position_scale: float = 8.0) -> None:
        super().__init__()
        if (tokens is not None and tokens < 1) or group_size < 1 or position_scale <= 0:
            raise ValueError(f"point tokens and group_size must be >= 1 and position_scale > 0, got "
                             f"{tokens}, {group_size}, {position_scale}")
        self.tokens, self.group_size, self.position_scale = tokens, group_size, position_scale
        self.mlp = nn.Sequential(nn.Linear(2 * POS_DIM, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.mask_token = nn.Parameter(torch.randn(dim) * EMBEDDING_STD)
        self.type_embedding = nn.Parameter(torch.randn(dim) * EMBEDDING_STD)

    def forward(self, points: Tensor, padding_mask: Tensor | None = None,
                mask: Tensor | None = None) -> EncodedTokens:
        if points.dim() != 3 or points.shape[-1] != POS_DIM or not points.is_floating_point():
            raise ValueError(f"points must be float [batch, points, 3], got {list(points.shape)} {points.dtype}")
        B, P, _ = points.shape
        padding_mask = _check_mask("point_padding_mask", padding_mask, (B, P))
        real = torch.ones(B, P, dtype=torch.bool, device=points.device) if padding_mask is None else ~padding_mask
        points = torch.where(real[..., None], points, 0.0)  # whatever padding holds never reaches the math
        if not torch.isfinite(points).all():
            raise ValueError("points contain NaN or infinite coordinates (outside the padding)")
        fewest = int(real.sum(1).min())
        if fewest < max(self.group_size, self.tokens or 1):
            raise ValueError(f"a point cloud has {fewest} real points, fewer than point_group_size="
                             f"{self.group_size} or point_tokens={self.tokens}")
        weight = real[..., None].to(points.dtype)
        centroid = (points * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True)
        radius = ((points - centroid).norm(dim=-1) * real).amax(1).clamp_min(1e-6)[:, None, None]
        unit = torch.where(real[..., None], (points - centroid) / radius, 0.0)  # [B, P, 3] in the unit ball
        batch = torch.arange(B, device=points.device)[:, None]
        if self.tokens is None:
            centers, center_padding = unit, ~real
        else:
            centers = unit[batch, farthest_point_sampling(unit, self.tokens, padding_mask)]  # [B, G, 3]
            center_padding = torch.zeros(centers.shape[:2], dtype=torch.bool, device=points.device)
        distance = torch.cdist(centers, unit).masked_fill(~real[:, None, :], torch.inf)
        nearest = distance.topk(self.group_size, dim=-1, largest=False).indices  # [B, G, k]
        local = unit[batch[..., None], nearest] - centers[:, :, None]  # [B, G, k, 3]
        features = torch.cat([local, centers[:, :, None].expand_as(local)], dim=-1)
        # The geometry above stays in the input's precision; the MLP reads it in the weights' dtype (bf16 models).
        tokens = self.mlp(features.to(self.mlp[0].weight.dtype)).amax(2)
        mask = _check_mask("point_mask", mask, tuple(tokens.shape[:2]))
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.type_embedding
        pos = (centers * self.position_scale).to(position_dtype(tokens))
        return EncodedTokens(tokens, pos, center_padding, {"points": slice(0, tokens.shape[1])}, local)


def batch_modality(batch: Mapping[str, object]) -> str:
    """The modality of a batch, from which input keys it holds (:data:`MODALITIES`); other keys (labels,
    masks) are not inputs. A batch whose inputs make no modality raises naming them."""
    present = frozenset(key for key in INPUT_KEYS if key in batch)
    if present not in MODALITIES:
        known = "; ".join(f"{name}: {sorted(keys)}" for keys, name in MODALITIES.items())
        raise ValueError(f"batch inputs {sorted(present)} (keys {sorted(batch)}) make no modality; "
                         f"expected one of {known}")
    return MODALITIES[present]


class MultimodalEncoder(nn.Module):
    """The text, image and point-cloud encoders, and their image + text and image pair + text combinations.

    ``forward(batch)`` encodes a batch dict by the modality its keys make (:func:`batch_modality`):

    ================== ===================================================================================
    ``text``           ``text_ids`` ``[B, L]`` (+ ``text_attention_mask`` ``[B, L]``, True/1 = real token)
    ``image``          ``images`` ``[B, C, H, W]`` (+ ``image_mask`` ``[B, h·w]``, masked patch modeling)
    ``image_text``     ``images`` + ``text_ids``: image tokens, then text tokens
    ``image_pair_text`` ``images`` + ``images2`` (+ ``image2_mask``) + ``text_ids``: image, image 2, text
    ``points``         ``points`` ``[B, P, 3]`` (+ ``point_padding_mask`` ``[B, P]``, ``point_mask``
                       ``[B, tokens]``, masked point modeling)
    ================== ===================================================================================

    Text may come with ``text_segment_ids`` ``[B, L]`` (sentence pairs; :class:`TextEncoder`).

    Only the encoders of ``modalities`` (of :data:`ENCODER_MODALITIES`) are built; the others are ``None``, hold no
    parameters, and a batch that needs one raises naming it.
    """

    def __init__(self, dim: int, *, vocab_size: int, pad_id: int = 0, image_channels: int = 3, patch_size: int = 16,
                 image_stem: str = "patchify", point_tokens: int | None = 64, point_group_size: int = 16,
                 point_hidden: int = 128, point_position_scale: float = 8.0, text_segments: int = 1,
                 modalities: Sequence[str] = ENCODER_MODALITIES) -> None:
        super().__init__()
        self.modalities = check_modalities(modalities)
        self.text = TextEncoder(vocab_size, dim, pad_id, text_segments) if "text" in self.modalities else None
        self.image = ImageEncoder(image_channels, dim, patch_size, stem=image_stem) \
            if "image" in self.modalities else None
        self.points = PointEncoder(dim, point_tokens, point_group_size, point_hidden, point_position_scale) \
            if "points" in self.modalities else None

    def forward(self, batch: Mapping[str, Tensor]) -> EncodedTokens:
        modality = batch_modality(batch)
        missing = [name for name in ENCODERS_OF_MODALITY[modality] if name not in self.modalities]
        if missing:
            raise ValueError(f"{modality} batches need the {' and '.join(missing)} encoder, which this model does "
                             f"not build (modalities={list(self.modalities)})")
        if modality == "points":
            return self.points(batch["points"], batch.get("point_padding_mask"), batch.get("point_mask"))
        parts = []
        if "images" in batch:
            parts.append(self.image(batch["images"], batch.get("image_mask"), index=0))
        if "images2" in batch:
            parts.append(self.image(batch["images2"], batch.get("image2_mask"), index=1))
        if "text_ids" in batch:
            parts.append(self.text(batch["text_ids"], batch.get("text_attention_mask"),
                                   batch.get("text_segment_ids")))
        return parts[0] if len(parts) == 1 else EncodedTokens.concat(parts)
