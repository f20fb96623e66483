"""The compared models: ITNet wired to every task in one place (:class:`ITNetForTask`), the specialists, and the
search that sizes a specialist to ITNet's parameter count.

**ITNet.** One configuration for every task, :func:`itnet_config`: the library's ``tiny`` model config shrunk
to a CPU budget (:data:`ITNET_OVERRIDES`), every layer global (``tiny``'s local windows on layers 0–1 are
dropped, so that the ``lowrank`` integrator, which integrates global supports only, runs the same model), the
token vocabulary set by the task. ``itnet`` rows use the exact integrator, ``itnet-lowrank`` rows
``layer.integrator=lowrank``, and each ``--itnet NAME:key=value,…`` variant its own overrides (dot keys into
:class:`~itnet_scale.models.ModelConfig`). Images, token sequences and point clouds go through the library's
encoders (:class:`~itnet_scale.models.ITNetModel`); pooled tasks through its classification model
(:class:`~itnet_scale.models.ITNetForClassification`), per-position tasks through a linear head on the hidden
states; fields through a linear lift of each value at its physical position (grid point ``j`` of ``N`` at
``j · N_train / N``), so a finer grid samples the same domain.

**Specialists**, each built at a width (:class:`Specialist`) and sized to ITNet's parameter count by
:func:`match_width`:

- ``resnet``: a ResNet (basic blocks) and ``vit``: a Vision Transformer. timm is the library for both, but on a
  CPU-only torch it cannot be imported: it needs torchvision, whose Linux wheels on PyPI are linked to the CUDA
  build of torch. Both are therefore written here from torch.nn modules, following timm's ``resnet`` (basic
  blocks, BatchNorm, global average pool) and ``vision_transformer`` (patch embedding, learned positions,
  pre-norm encoder, mean pool) layouts;
- ``transformer``: ``torch.nn.TransformerEncoder`` (pre-norm, scaled-dot-product attention) on token sequences;
- ``gru``: ``torch.nn.GRU``;
- ``mamba``: the selective-scan Mamba of the ``mambapy`` package (pure PyTorch, parallel scan on CPU; the
  reference ``mamba-ssm`` needs CUDA);
- ``fno``: neuraloperator's Fourier Neural Operator (``neuralop.models.FNO``);
- ``pointnet``: PointNet (Qi et al. 2017, without the input/feature transforms), written here because no
  maintained library ships one;
- ``logreg`` / ``tfidf``: scikit-learn's logistic regression on pixels / on TF-IDF features of the text
  (fixed-size linear baselines: not sized, their regularization ``C`` is swept instead of a learning rate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from itnet_scale.models import ITNetModel, ModelConfig, create_model, load_model_config
from itnet_scale.nn.encoders import POS_DIM

from .tasks import IGNORE, TaskData

#: The ITNet configuration of every task: ``tiny`` with these fields (and every layer global, see the module doc).
ITNET_OVERRIDES: dict[str, Any] = {"dim": 64, "depth": 3, "heads": 4, "mlp_ratio": 2.0, "patch_size": 2,
                                   "image_channels": 1, "point_tokens": 32, "point_group_size": 16,
                                   "point_hidden": 32}
#: The rows every run has: name → ModelConfig overrides on top of :func:`itnet_config`.
ITNET_ROWS: dict[str, dict[str, Any]] = {"itnet": {}, "itnet-lowrank": {"layer": {"integrator": "lowrank"}}}
#: ``vocab_size`` of tasks without tokens (the text encoder exists but is unused, so it is kept small).
UNUSED_VOCAB = 2
#: Parameter counts must agree within this fraction of ITNet's.
PARAM_TOLERANCE = 0.10


class ModelError(ValueError):
    """A model cannot be built as asked (unknown name, bad override, no size within tolerance)."""


# --------------------------------------------------------------------------------------------------------------
# ITNet
# --------------------------------------------------------------------------------------------------------------


def parse_itnet_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` → ``("itnet-NAME", nested overrides)``; dot keys nest (``layer.kernel_width=16``
    → ``{"layer": {"kernel_width": 16}}``), values are read as YAML scalars. A malformed spec raises naming it."""
    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        raise ModelError(f"--itnet {text!r}: expected NAME:key=value[,key=value…]")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ModelError(f"--itnet {text!r}: the name {name!r} must be letters, digits, '-' or '_'")
    items = [item.strip() for item in body.split(",")]
    bad = [item for item in items if "=" not in item or not item.partition("=")[0]]
    if bad:
        raise ModelError(f"--itnet {text!r}: {bad[0]!r} is not key=value")
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist(items))
    return f"itnet-{name}", overrides


def itnet_config(task: TaskData, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The ITNet configuration of ``task``: ``tiny`` + :data:`ITNET_OVERRIDES`, every layer global, the task's
    vocabulary, then ``overrides`` (a bad key or value raises :class:`ModelError` naming it)."""
    base = dataclasses.replace(load_model_config("tiny", **ITNET_OVERRIDES), layers={},
                               vocab_size=task.vocab_size or UNUSED_VOCAB)
    try:
        return load_model_config(base, **(overrides or {}))
    except ValueError as error:
        raise ModelError(f"ITNet overrides {overrides}: {error}") from None


class ITNetForTask(nn.Module):
    """ITNet on one task (module doc): ``forward(inputs) →`` logits ``[B, classes]``, logits ``[B, L, classes]``
    or field values ``[B, N]``."""

    def __init__(self, config: ModelConfig, task: TaskData) -> None:
        super().__init__()
        self.kind, self.target, self.train_resolution = task.kind, task.target, task.train_resolution
        if task.target == "class":
            self.model = create_model(config, task="classification", classes=task.classes)
        else:
            self.model = create_model(config, task="backbone")
            self.head = nn.Linear(config.dim, task.classes if task.target == "per_position" else 1)
        if task.kind == "field":
            self.lift = nn.Linear(1, config.dim)

    def field_positions(self, points: int, like: Tensor) -> Tensor:
        """``[points, 3]``: grid point ``j`` at ``(j · N_train / points, 0, 0)`` (unit spacing at training)."""
        pos = torch.zeros(points, POS_DIM, dtype=torch.float32, device=like.device)
        pos[:, 0] = torch.arange(points, device=like.device) * (self.train_resolution / points)
        return pos

    def forward(self, inputs: Tensor) -> Tensor:
        if self.kind == "field":
            itnet: ITNetModel = self.model
            tokens = self.lift(inputs[..., None])
            pos = self.field_positions(inputs.shape[1], inputs).expand(inputs.shape[0], -1, -1)
            return self.head(itnet.backbone(tokens, pos, None))[..., 0]
        batch = {"image": {"images": inputs}, "tokens": {"text_ids": inputs}, "points": {"points": inputs}}[self.kind]
        if self.target == "class":
            return self.model(batch)
        return self.head(self.model(batch).hidden)


# --------------------------------------------------------------------------------------------------------------
# Specialists
# --------------------------------------------------------------------------------------------------------------


def masked_mean(hidden: Tensor, ids: Tensor) -> Tensor:
    """``[B, L, D]`` averaged over the real tokens (id ≠ 0) of ``ids`` ``[B, L]`` → ``[B, D]``."""
    keep = (ids != 0)[..., None].to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def last_real(hidden: Tensor, ids: Tensor) -> Tensor:
    """``[B, L, D]`` at each sequence's last real token (id ≠ 0) → ``[B, D]``: how a causal model reads out."""
    last = ((ids != 0).long().cumsum(1).argmax(1))
    return hidden[torch.arange(len(ids), device=ids.device), last]


class TransformerCore(nn.Module):
    """``torch.nn.TransformerEncoder`` (pre-norm, GELU, MLP ratio 2, 4 heads) + learned positions
    + a final LayerNorm: ``[B, N, width] → [B, N, width]``. Shared by ``transformer`` and ``vit``."""

    def __init__(self, width: int, depth: int, max_tokens: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, dim_feedforward=2 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, padding: Tensor | None = None) -> Tensor:
        return self.norm(self.encoder(tokens + self.position[: tokens.shape[1]], src_key_padding_mask=padding))


class SequenceModel(nn.Module):
    """Token ids ``[B, L]`` → embedding → a sequence mixer ``[B, L, width]`` → logits pooled (``class``: mean of
    the real tokens for bidirectional mixers, the last real token for causal ones) or per position."""

    def __init__(self, task: TaskData, width: int, mixer: nn.Module, causal: bool) -> None:
        super().__init__()
        self.per_position, self.causal = task.target == "per_position", causal
        self.embedding = nn.Embedding(task.vocab_size, width, padding_idx=0)
        self.mixer = mixer
        self.head = nn.Linear(width, task.classes)

    def forward(self, ids: Tensor) -> Tensor:
        hidden = self.mixer(self.embedding(ids), ids)
        if self.per_position:
            return self.head(hidden)
        return self.head(last_real(hidden, ids) if self.causal else masked_mean(hidden, ids))


class TransformerMixer(TransformerCore):
    def forward(self, tokens: Tensor, ids: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(tokens, ids == 0)


class GRUMixer(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.gru = nn.GRU(width, width, num_layers=depth, batch_first=True)

    def forward(self, tokens: Tensor, ids: Tensor) -> Tensor:
        return self.gru(tokens)[0]


class MambaMixer(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig

        self.mamba = Mamba(MambaConfig(d_model=width, n_layers=depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, ids: Tensor) -> Tensor:
        return self.norm(self.mamba(tokens))


class BasicBlock(nn.Module):
    """timm's / torchvision's ResNet basic block: two 3×3 conv–BN, a 1×1 conv–BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: 3×3 stem conv of ``width`` channels, stages of one basic block at ``width``, ``2·width``
    (stride 2) and ``4·width`` (stride 2), global average pool, linear classifier. ``[B, C, H, W] → [B, classes]``."""

    def __init__(self, channels: int, classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.stages(self.stem(images)).mean((2, 3)))


class VisionTransformer(nn.Module):
    """A ViT: ``patch × patch`` patch embedding (a strided conv), :class:`TransformerCore`, mean pool, linear
    classifier. ``[B, C, H, W] → [B, classes]``."""

    def __init__(self, channels: int, classes: int, width: int, side: int, patch: int, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, width, patch, patch)
        self.core = TransformerCore(width, depth, (side // patch) ** 2)
        self.head = nn.Linear(width, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.core(self.embed(images).flatten(2).transpose(1, 2)).mean(1))


class PointNet(nn.Module):
    """PointNet (Qi et al., 2017) without its input and feature transforms: clouds centered and scaled to the
    unit ball, a shared per-point MLP 3 → w → w → 4w (BatchNorm, ReLU), max pool, MLP 4w → 2w → classes. Written
    here because no maintained library ships a PointNet. ``[B, P, 3] → [B, classes]``."""

    def __init__(self, classes: int, width: int) -> None:
        super().__init__()

        def layer(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout), nn.ReLU()]

        self.point_mlp = nn.Sequential(*layer(3, width), *layer(width, width), *layer(width, 4 * width))
        self.head = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.BatchNorm1d(2 * width), nn.ReLU(),
                                  nn.Linear(2 * width, classes))

    def forward(self, points: Tensor) -> Tensor:
        centered = points - points.mean(1, keepdim=True)
        unit = centered / centered.norm(dim=-1).amax(1).clamp_min(1e-6)[:, None, None]
        return self.head(self.point_mlp(unit.transpose(1, 2)).amax(2))


class FieldFNO(nn.Module):
    """neuraloperator's FNO on ``[B, N]`` fields (16 Fourier modes, 4 layers, its grid positional embedding, so
    any resolution of the same domain works): ``[B, N] → [B, N]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        from neuralop.models import FNO

        self.fno = FNO(n_modes=(16,), in_channels=1, out_channels=1, hidden_channels=width, n_layers=4)

    def forward(self, fields: Tensor) -> Tensor:
        return self.fno(fields[:, None])[:, 0]


@dataclass(frozen=True)
class Specialist:
    """A specialist: the input kinds and targets it takes, its builder ``(task, width) → module``, and the widths
    its size search may try (increasing, so the parameter count increases with them)."""

    kinds: frozenset[str]
    targets: frozenset[str]
    build: Callable[[TaskData, int], nn.Module]
    widths: range
    library: str

    def accepts(self, task: TaskData) -> bool:
        return task.kind in self.kinds and task.target in self.targets


def _image_side(task: TaskData) -> int:
    return int(task.train.inputs.shape[-1])


SPECIALISTS: dict[str, Specialist] = {
    "resnet": Specialist(frozenset({"image"}), frozenset({"class"}),
                         lambda task, w: ResNet(task.train.inputs.shape[1], task.classes, w), range(2, 257),
                         "torch.nn (timm's ResNet layout)"),
    "vit": Specialist(frozenset({"image"}), frozenset({"class"}),
                      lambda task, w: VisionTransformer(task.train.inputs.shape[1], task.classes, w,
                                                        _image_side(task), ITNET_OVERRIDES["patch_size"]),
                      range(8, 1025, 4), "torch.nn (timm's ViT layout)"),
    "transformer": Specialist(frozenset({"tokens"}), frozenset({"class", "per_position"}),
                              lambda task, w: SequenceModel(task, w, TransformerMixer(w, 3, task.train.inputs.shape[1]),
                                                            causal=False),
                              range(8, 1025, 4), "torch.nn.TransformerEncoder"),
    "gru": Specialist(frozenset({"tokens"}), frozenset({"class", "per_position"}),
                      lambda task, w: SequenceModel(task, w, GRUMixer(w, 2), causal=True), range(4, 1025),
                      "torch.nn.GRU"),
    "mamba": Specialist(frozenset({"tokens"}), frozenset({"class", "per_position"}),
                        lambda task, w: SequenceModel(task, w, MambaMixer(w, 3), causal=True), range(4, 1025),
                        "mambapy"),
    "fno": Specialist(frozenset({"field"}), frozenset({"field"}), lambda task, w: FieldFNO(w), range(4, 513),
                      "neuraloperator"),
    "pointnet": Specialist(frozenset({"points"}), frozenset({"class"}), lambda task, w: PointNet(task.classes, w),
                           range(4, 1025), "written here (no maintained library ships one)"),
}
#: scikit-learn baselines: name → the input kind they take.
LINEAR_BASELINES: dict[str, str] = {"logreg": "image", "tfidf": "tokens"}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def active_parameter_count(model: nn.Module, inputs: Tensor) -> int:
    """The parameters that one forward/backward on ``inputs`` reaches (ITNet builds every modality's encoder;
    only the task's counts)."""
    model.zero_grad(set_to_none=True)
    output = model(inputs)
    output.float().sum().backward()
    count = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return count


def match_width(count_at: Callable[[int], int], widths: range, target: int, name: str,
                tolerance: float = PARAM_TOLERANCE) -> tuple[int, int]:
    """``(width, count)``: the width in ``widths`` whose parameter count ``count_at(width)`` (increasing in the
    width) is nearest ``target``, by bisection. Raises :class:`ModelError` if none is within ``tolerance``."""
    lo, hi = 0, len(widths) - 1
    while lo < hi:  # the first width whose count reaches the target
        mid = (lo + hi) // 2
        if count_at(widths[mid]) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [(abs(count_at(widths[i]) - target), widths[i]) for i in {max(lo - 1, 0), lo}]
    _, width = min(candidates)
    count = count_at(width)
    if abs(count - target) > tolerance * target:
        raise ModelError(f"{name}: no width in {widths.start}..{widths.stop - 1} (step {widths.step}) gives "
                         f"{target} ± {tolerance:.0%} parameters; the nearest, width {width}, has {count}")
    return width, count


def sized_specialist(name: str, task: TaskData, target: int) -> tuple[Callable[[], nn.Module], int, int]:
    """``(build, width, params)``: a builder of specialist ``name`` on ``task`` at the width whose parameter count
    is within :data:`PARAM_TOLERANCE` of ``target``."""
    if name not in SPECIALISTS:
        raise ModelError(f"unknown specialist {name!r}; choose from {', '.join(SPECIALISTS)}")
    specialist = SPECIALISTS[name]
    if not specialist.accepts(task):
        raise ModelError(f"{name} does not take {task.name}'s {task.kind} inputs / {task.target} targets")
    counts: dict[int, int] = {}

    def count_at(width: int) -> int:
        if width not in counts:
            counts[width] = parameter_count(specialist.build(task, width))
        return counts[width]

    width, params = match_width(count_at, specialist.widths, target, f"{name} on {task.name}")
    return (lambda: specialist.build(task, width)), width, params


def build_itnet(task: TaskData, overrides: dict[str, Any]) -> Callable[[], nn.Module]:
    """A builder of ITNet on ``task`` with config ``overrides`` (checked now, so a bad override fails before any
    training)."""
    config = itnet_config(task, overrides)
    return lambda: ITNetForTask(config, task)


def task_loss(task: TaskData, output: Tensor, targets: Tensor) -> Tensor:
    """The training loss: cross-entropy (per position, :data:`IGNORE` skipped) or the relative L2 error of fields."""
    if task.target == "field":
        return relative_l2(output, targets).mean()
    if task.target == "per_position":
        return F.cross_entropy(output.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    return F.cross_entropy(output, targets)


def relative_l2(prediction: Tensor, truth: Tensor) -> Tensor:
    """Per-sample ``‖prediction − truth‖₂ / ‖truth‖₂`` ``[B]`` over the grid (neuraloperator's ``LpLoss.rel``, p=2,
    before its reduction over the batch)."""
    return (prediction - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1).clamp_min(1e-12)


def score_sums(task: TaskData, output: Tensor, targets: Tensor) -> tuple[float, int]:
    """``(sum, count)`` of the metric over one batch: correct predictions / scored positions, or relative L2
    errors / samples."""
    if task.target == "field":
        return float(relative_l2(output, targets).sum()), len(targets)
    scored = targets != IGNORE
    return float(((output.argmax(-1) == targets) & scored).sum()), int(scored.sum())


def model_parameters_for_report(model: nn.Module, task: TaskData) -> int:
    """ITNet: the active count on a training batch; others: every parameter."""
    if isinstance(model, ITNetForTask):
        return active_parameter_count(model, task.train.inputs[:4])
    return parameter_count(model)


__all__ = ["ITNET_OVERRIDES", "ITNET_ROWS", "LINEAR_BASELINES", "PARAM_TOLERANCE", "SPECIALISTS", "ITNetForTask",
           "ModelError", "Specialist", "active_parameter_count", "build_itnet", "itnet_config", "match_width",
           "parameter_count", "parse_itnet_variant", "relative_l2", "score_sums", "sized_specialist", "task_loss"]
