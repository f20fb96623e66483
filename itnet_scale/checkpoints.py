"""Checkpoint tools: DeepSpeed checkpoints → the library format, verified; inspecting either kind.

- :func:`open_source` opens what a tool is pointed at — a DeepSpeed tag folder (ZeRO 0–3, any world size, or a
  universal checkpoint), a run's checkpoint folder (its ``latest`` is followed), or a library folder — as a
  :class:`WeightSource`: the model config, every tensor's name and shape, and a reader that yields the tensors one
  at a time. Every DeepSpeed file is read weights-only and memory-mapped (:func:`mmap_weights_only_loads`), so the
  Adam moments next to the fp32 weights are never read.
- :func:`convert_to_library` streams a source into a library folder (:func:`itnet_scale.models.pretrained.
  write_library`), after checking its tensors against the model its config builds (names and shapes). ZeRO 1–3
  weights come from DeepSpeed's own consolidation (``deepspeed.utils.zero_to_fp32`` in its lazy mode): at ZeRO-3
  each tensor is gathered from the memory-mapped partitions when its shard is written; at ZeRO 1–2 DeepSpeed
  merges the partitions into one fp32 vector first. At most one output shard is held besides that, so the peak is
  about 2× the fp32 model (``tests/tools/measure_convert_memory.py``). ``verify=True`` checks the temporary folder
  (:func:`verify_conversion`) before it is renamed into place.
- :func:`verify_conversion` runs :func:`verification_batches` (text, image, image + text, image pair + text, point
  clouds; fixed by a seed) through the model rebuilt from the source and the one read from the library folder and
  raises :class:`VerificationError` unless every output (and every weight) agrees to ``tolerance`` in fp32.
- :func:`inspect_checkpoint`: step, consumed samples per stream, objectives, model config, parameter count and
  per-module sizes of either kind, from the metadata alone.

``tools/convert_checkpoint.py`` and ``tools/inspect_checkpoint.py`` (console scripts ``itnet-convert-checkpoint``,
``itnet-inspect-checkpoint``) are :func:`convert_main` and :func:`inspect_main`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from itnet_scale.config import merge_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.pretrained import (
    BACKBONE_PREFIX,
    CONFIG_FILE,
    DEFAULT_MAX_SHARD_SIZE,
    LibraryConfig,
    LibraryFolder,
    TensorSpec,
    build_model,
    dtype_name,
    dtype_of,
    is_library_folder,
    model_aliases,
    stored_dtype,
    tied_groups,
    write_library,
)
from itnet_scale.train.checkpoint import (
    LATEST_FILE,
    checkpoint_tags,
    convert_to_universal,
    is_universal_checkpoint,
    load_weights_only,
    read_latest,
    weights_only_loads,
)

logger = logging.getLogger(__name__)

#: Reader of a source: ``read(names)`` yields ``(name, tensor)`` for those names, one at a time (CPU, the source's
#: dtype), so that a caller holding one at a time holds one.
Reader = Callable[[list[str]], Iterator[tuple[str, Tensor]]]
_RANK_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_(model|optim)_states\.pt$")
_CLIENT_SKIP = ("module", "optimizer", "frozen_param_fragments")


# -- weights-only, memory-mapped loads ---------------------------------------------------------------------------


def load_mapped(path: str | Path) -> Any:
    """A DeepSpeed file read weights-only and memory-mapped, on the CPU (see
    :func:`itnet_scale.train.checkpoint.load_weights_only`)."""
    return load_weights_only(path, "cpu", mmap=True)


@contextlib.contextmanager
def mmap_weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` (DeepSpeed's too) is weights-only and memory-mapped, so that
    DeepSpeed's consolidation never reads the Adam moments it discards; stdout (DeepSpeed's progress prints) goes
    to stderr."""
    with weights_only_loads(mmap=True), contextlib.redirect_stdout(sys.stderr):
        yield


# -- sources -----------------------------------------------------------------------------------------------------


def _natural(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def resolve_checkpoint(path: str | Path) -> Path:
    """The tag folder ``path`` means: itself when it holds DeepSpeed files, else the tag its ``latest`` names (a
    run's ``checkpoints`` folder, or the run folder holding one). A missing ``latest`` target raises
    ``FileNotFoundError`` naming both."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if list(path.glob("*model_states.pt")) or is_universal_checkpoint(path):
        return path
    if not (path / LATEST_FILE).is_file() and (path / "checkpoints" / LATEST_FILE).is_file():
        path = path / "checkpoints"  # a run folder
    tag = read_latest(path)
    if tag is None:
        tags = checkpoint_tags(path)
        raise FileNotFoundError(f"{path}: not a DeepSpeed checkpoint (no *model_states.pt), nor a run's checkpoint "
                                f"folder with a {LATEST_FILE} file" + (f"; tags here: {tags}" if tags else ""))
    return path / tag


def model_config_from_yaml(text: str, where: str) -> ModelConfig:
    """A :class:`ModelConfig` from its YAML text (``client_state["model_config"]``), checked."""
    return merge_config(ModelConfig, [OmegaConf.create(text)], what="model config", where=where)


def _meta_model(task: str, config: ModelConfig, labels: int | None) -> nn.Module:
    with torch.device("meta"):
        return build_model(task, config, labels)


@dataclass
class WeightSource:
    """Weights to convert, verify or inspect: ``specs`` (stored tensors, in the model's ``state_dict`` order, with
    the source's dtypes), ``aliases`` (tied names → stored name), ``files`` (name → the file holding it, for
    errors), the model (``task``, ``labels``, ``model_config``) and ``reader()`` (a context yielding a
    :data:`Reader`). ``info`` holds what is known about the run (step, consumed samples, objectives …);
    ``config_origin`` says where ``model_config`` came from (for errors)."""

    description: str
    path: Path
    task: str
    labels: int | None
    model_config: ModelConfig | None
    specs: list[TensorSpec]
    aliases: dict[str, str]
    files: dict[str, Path]
    reader: Callable[[], contextlib.AbstractContextManager[Reader]]
    info: dict[str, Any] = field(default_factory=dict)
    config_origin: str = "its model config"

    @property
    def spec_by_name(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.specs}

    def check_against_model(self) -> None:
        """Raise ``ValueError`` naming the file and the tensor unless the tensors are exactly those (names and
        shapes) of the model ``model_config`` builds."""
        if self.model_config is None:
            raise ValueError(f"{self.path}: no model config (client_state['model_config']); give one "
                             "(--model-config FILE.yaml)")
        model = _meta_model(self.task, self.model_config, self.labels)
        expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
        expected_aliases = model_aliases(model)
        specs = self.spec_by_name
        model_is = f"the model {self.config_origin} describes"
        for name, shape in expected.items():
            stored = expected_aliases.get(name, name)
            if stored not in specs:
                raise ValueError(f"{self.path}: no tensor {stored!r} {list(shape)}, which {model_is} has")
            if specs[stored].shape != shape:
                raise ValueError(f"{self.files.get(stored, self.path)}: tensor {stored!r} has shape "
                                 f"{list(specs[stored].shape)}, not the {list(shape)} of {model_is}")
        for name in specs:
            if name not in expected or name in expected_aliases:
                raise ValueError(f"{self.files.get(name, self.path)}: tensor {name!r} is not a parameter of "
                                 f"{model_is}")

    def ordered_like_model(self) -> None:
        """Sort ``specs`` in the order of the model's ``state_dict`` (the order of the written files)."""
        if self.model_config is None:
            return
        order = {name: i for i, name in enumerate(_meta_model(self.task, self.model_config, self.labels).state_dict())}
        self.specs.sort(key=lambda spec: order.get(spec.name, math.inf))


def _rank_files(tag_dir: Path, kind: str) -> list[Path]:
    return sorted((p for p in tag_dir.glob(f"*_{kind}_states.pt") if _RANK_FILE.search(p.name)), key=_natural)


def _zero_stage(client: Mapping[str, Any], optim_files: list[Path]) -> int:
    stage = (client.get("ds_config") or {}).get("zero_optimization", {}).get("stage")
    if stage is not None:
        return int(stage)
    if not optim_files:
        return 0
    return int(load_mapped(optim_files[0])["optimizer_state_dict"]["zero_stage"])


def _check_rank_files(tag_dir: Path, stage: int, world: int, model_files: list[Path], optim_files: list[Path]) -> None:
    """Every rank's files are there (a missing one is named), before DeepSpeed's consolidation reads them."""
    wanted = []
    if stage == 3:
        wanted += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    if stage >= 1:
        wanted += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    present = {p.name for p in [*model_files, *optim_files]}
    bf16 = {name.removeprefix("bf16_") for name in present if name.startswith("bf16_")}
    for name in wanted:
        if name not in present and name not in bf16:
            raise FileNotFoundError(f"{tag_dir / name}: missing; this ZeRO-{stage} checkpoint of {world} ranks needs "
                                    f"every rank's file")


def deepspeed_source(path: str | Path, model_config: ModelConfig | None = None) -> WeightSource:
    """A DeepSpeed checkpoint (tag folder or run checkpoint folder; ZeRO 0–3; universal) as a
    :class:`WeightSource` of the pretraining model. Only rank 0's model-states file is opened here
    (memory-mapped); the weights are read by the reader."""
    tag_dir = resolve_checkpoint(path)
    model_files, optim_files = _rank_files(tag_dir, "model"), _rank_files(tag_dir, "optim")
    rank0 = next((tag_dir / n for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
                  if (tag_dir / n).is_file()), None)
    if rank0 is None:
        raise FileNotFoundError(f"{tag_dir / 'mp_rank_00_model_states.pt'}: missing (nor a ZeRO-3 "
                                "zero_pp_rank_0_mp_rank_00_model_states.pt); not a complete DeepSpeed checkpoint")
    state = load_mapped(rank0)
    client = {key: value for key, value in state.items() if key not in _CLIENT_SKIP}
    universal = is_universal_checkpoint(tag_dir)
    stage = _zero_stage(client, optim_files)
    world = int(client.get("dp_world_size") or client.get("world_size") or max(len(optim_files), 1))
    if not universal:
        _check_rank_files(tag_dir, stage, world, model_files, optim_files)
    origin = "the given model config"
    if model_config is None and client.get("model_config"):
        model_config = model_config_from_yaml(client["model_config"], f"{rank0} (client_state['model_config'])")
        origin = "the checkpoint's client_state['model_config']"
    shared = dict(state.get("shared_params") or {})
    module = state.get("module") or {}
    buffers = {name: module[name] for name in state.get("buffer_names") or [] if name in module}
    specs: list[TensorSpec] = []
    files: dict[str, Path] = {}

    def add(name: str, shape: Any, dtype: torch.dtype, file: Path) -> None:
        specs.append(TensorSpec(name, tuple(int(s) for s in shape), dtype))
        files[name] = file

    param_shapes = {name: tuple(shape) for group in state.get("param_shapes") or [] for name, shape in group.items()}
    if universal:
        kind = f"universal (from ZeRO-{stage})"
        zero = tag_dir / "zero"
        for folder in sorted(p for p in zero.iterdir() if p.is_dir()):
            if folder.name in shared:
                continue
            if not (folder / "fp32.pt").is_file():
                raise FileNotFoundError(f"{folder / 'fp32.pt'}: missing; every parameter folder of a universal "
                                        "checkpoint holds its fp32 weights")
            param = _universal_param(folder / "fp32.pt", param_shapes.get(folder.name))
            add(folder.name, param.shape, param.dtype, folder / "fp32.pt")
    elif stage >= 1:
        kind = f"ZeRO-{stage}"
        where = optim_files[0] if optim_files else rank0
        for group in state.get("param_shapes") or []:
            for name, shape in group.items():
                add(name, shape, torch.float32, where)
        for name, shape in (state.get("frozen_param_shapes") or {}).items():
            add(name, shape, torch.float32, rank0)
    else:
        kind = "ZeRO-0"
        tied = {**tied_groups(module), **shared}
        for name, tensor in module.items():
            if name not in tied and name not in buffers:
                add(name, tensor.shape, tensor.dtype, rank0)
        shared = tied
        dtypes = {spec.dtype for spec in specs}
        if dtypes - {torch.float32}:
            logger.warning("%s: ZeRO-0 weights are %s (the engine's own copy; a 16-bit run's fp32 masters are not "
                           "read)", rank0, ", ".join(sorted(dtype_name(d) for d in dtypes)))
    for name, tensor in buffers.items():
        add(name, tensor.shape, tensor.dtype, rank0)
    del state, module

    @contextlib.contextmanager
    def reader() -> Iterator[Reader]:
        with mmap_weights_only_loads():
            if universal:
                def read(names: list[str]) -> Iterator[tuple[str, Tensor]]:
                    for name in names:
                        yield name, buffers[name] if name in buffers else _universal_param(files[name],
                                                                                           param_shapes.get(name))
                yield read
            elif stage >= 1:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                # No autograd: the saved fp32 partitions require grad, and a recorded torch.cat would keep every
                # partition (and so the whole memory-mapped file) alive as long as the merged weights.
                with torch.no_grad():
                    lazy = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                                    lazy_mode=True)

                def read(names: list[str]) -> Iterator[tuple[str, Tensor]]:
                    for name in names:
                        with torch.no_grad():
                            tensor = lazy[name].contiguous()  # ZeRO-3: gathered from every rank's partition now
                        yield name, tensor
                yield read
                del lazy
            else:
                weights = load_mapped(rank0)["module"]
                yield lambda names: ((name, weights[name].detach()) for name in names)
                del weights

    data = client.get("data") or {}
    info = {"checkpoint": str(tag_dir), "tag": tag_dir.name, "zero_stage": stage, "universal": universal,
            "world_size": world, "step": client.get("step", client.get("global_steps")),
            "consumed": {stream: {"units": s.get("units"), "samples": s.get("samples")} for stream, s in data.items()},
            "global_samples": client.get("global_samples"), "objectives": client.get("objectives"),
            "sequence_parallel_size": client.get("sequence_parallel_size"), "ds_version": client.get("ds_version"),
            "pretrain_config": client.get("config")}
    source = WeightSource(f"DeepSpeed {kind} checkpoint {tag_dir} ({world} ranks)", tag_dir, "pretraining", None,
                          model_config, specs, shared, files, reader, info, origin)
    source.ordered_like_model()
    return source


def _universal_param(path: Path, shape: tuple[int, ...] | None) -> Tensor:
    """The fp32 weights in a universal checkpoint's ``zero/NAME/fp32.pt``: ``{"param": tensor}`` (from ZeRO 1–2)
    or the flat tensor (from ZeRO-3), shaped by the model-states file's ``param_shapes``."""
    loaded = load_mapped(path)
    param = loaded.get("param") if isinstance(loaded, dict) else loaded
    if not isinstance(param, Tensor):
        raise ValueError(f"{path}: no fp32 parameter tensor in it")
    if shape is None or tuple(param.shape) == shape:
        return param
    numel = math.prod(shape)
    if param.dim() != 1 or param.numel() < numel:
        raise ValueError(f"{path}: holds {list(param.shape)}, which is not the parameter's shape {list(shape)}")
    return param[:numel].view(shape)


def library_source(path: str | Path) -> WeightSource:
    """A library folder as a :class:`WeightSource` (headers read; tensors on demand)."""
    folder = LibraryFolder(path)
    specs = [TensorSpec(name, stored.shape, _safetensors_dtype(stored.dtype, stored.file, name))
             for name, stored in folder.tensors.items()]
    files = {name: stored.file for name, stored in folder.tensors.items()}

    @contextlib.contextmanager
    def reader() -> Iterator[Reader]:
        yield folder.read

    config = folder.config
    info = dict(config.source)  # provenance: what the converter knew of the run (step, consumed samples …)
    source = WeightSource(f"library folder {folder.directory} ({config.model_class}, {config.dtype})",
                          folder.directory, config.task, config.labels, config.model, specs,
                          dict(config.tied_weights), files, reader, info, str(folder.directory / CONFIG_FILE))
    source.ordered_like_model()
    return source


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _safetensors_dtype(name: str, file: Path, tensor: str) -> torch.dtype:
    if name not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{file}: tensor {tensor!r} has dtype {name}, which ITNet models do not use")
    return _SAFETENSORS_DTYPES[name]


def open_source(path: str | Path, model_config: ModelConfig | None = None) -> WeightSource:
    """A library folder or a DeepSpeed checkpoint (see the module doc) as a :class:`WeightSource`."""
    if is_library_folder(path):
        if model_config is not None:
            raise ValueError(f"{path} is a library folder: its model config is its {CONFIG_FILE}")
        return library_source(path)
    if Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file():
        return library_source(path)  # a library folder with its weights missing: LibraryFolder names them
    return deepspeed_source(path, model_config)


# -- conversion --------------------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    """What :func:`convert_to_library` wrote: the folder, its files, tensors, bytes and the verification."""

    output: Path
    files: list[str]
    tensors: int
    bytes: int
    verification: VerificationResult | None = None


def _export(source: WeightSource, task: str) -> tuple[list[TensorSpec], dict[str, str], Callable[[str], str]]:
    """The specs and aliases a ``task`` export of ``source`` writes, and the output name → source name map."""
    if task == source.task:
        return list(source.specs), dict(source.aliases), lambda name: name
    if task != "backbone" or source.task == "backbone":
        raise ValueError(f"{source.path} holds a {source.task} model: it converts to task {source.task!r} or "
                         f"'backbone', not {task!r}")
    prefix = BACKBONE_PREFIX
    specs = [TensorSpec(s.name[len(prefix):], s.shape, s.dtype) for s in source.specs if s.name.startswith(prefix)]
    aliases = {a[len(prefix):]: b[len(prefix):] for a, b in source.aliases.items()
               if a.startswith(prefix) and b.startswith(prefix)}
    return specs, aliases, lambda name: prefix + name


def convert_to_library(source_path: str | Path, output: str | Path, *, dtype: str | torch.dtype = "fp32",
                       max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, task: str | None = None,
                       verify: bool = False, tolerance: float = 1e-5, overwrite: bool = False,
                       model_config: ModelConfig | None = None) -> ConversionResult:
    """Convert a DeepSpeed checkpoint (or re-write a library folder) into the library folder ``output``.

    ``dtype``: the floating-point dtype stored; ``max_shard_size``: shard above it (with the index); ``task``:
    ``backbone`` writes the :class:`~itnet_scale.models.ITNetModel` alone (default: the source's model).
    The source's tensors are checked against the model its config builds first (names and shapes; errors name
    the file and the tensor); the output is written to a temporary sibling folder, verified there when ``verify``
    (:func:`verify_conversion`, raising :class:`VerificationError`), and renamed into place. An existing
    ``output`` is refused unless ``overwrite``.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; choose another output folder or overwrite it (--overwrite)")
    source = open_source(source_path, model_config)
    source.check_against_model()
    out_dtype = dtype_of(dtype)
    task = task or source.task
    specs, aliases, source_name = _export(source, task)
    specs = [TensorSpec(s.name, s.shape, stored_dtype(s.dtype, out_dtype)) for s in specs]
    provenance = {key: value for key, value in source.info.items() if key != "pretrain_config" and value is not None}
    provenance["converted_from"] = source.description
    config = LibraryConfig(task=task, model_class=_class_name(task), labels=source.labels if task == source.task
                           else None, dtype=dtype_name(out_dtype), tied_weights=aliases, source=provenance,
                           model=source.model_config)
    result = ConversionResult(output, [], len(specs), sum(s.nbytes for s in specs))

    def check(folder: Path) -> None:
        result.files = sorted(p.name for p in folder.iterdir())
        if verify:
            result.verification = verify_conversion(source, folder, tolerance=tolerance)

    with source.reader() as read:
        def fetch(names: list[str]) -> Iterator[tuple[str, Tensor]]:
            output_name = {source_name(name): name for name in names}
            for name, tensor in read(list(output_name)):
                yield output_name[name], tensor

        write_library(output, config, specs, fetch, max_shard_size=max_shard_size, overwrite=overwrite,
                      check=check)
    return result


def _class_name(task: str) -> str:
    from itnet_scale.models.registry import TASKS

    return TASKS[task].model_class.__name__


# -- verification ------------------------------------------------------------------------------------------------


class VerificationError(Exception):
    """The converted model's outputs differ from the source's by more than the tolerance."""

    def __init__(self, message: str, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


@dataclass
class VerificationResult:
    """The largest absolute difference over every output, per output (``"text/mlm_logits"`` …), and over the
    weights themselves (both models' ``state_dict``, fp32)."""

    max_abs_diff: float
    per_output: dict[str, float]
    tolerance: float
    weights_max_abs_diff: float = 0.0

    def summary(self) -> str:
        worst = max(self.per_output, key=self.per_output.get)
        where = f" (worst: {worst})" if self.max_abs_diff > 0 else ""
        return (f"max abs diff {self.max_abs_diff:.3g} over {len(self.per_output)} outputs{where}, "
                f"{self.weights_max_abs_diff:.3g} over the weights; tolerance {self.tolerance:g}, fp32")


def verification_batches(config: ModelConfig, batch_size: int = 2, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """A fixed batch of every modality for ``config`` (the same for the same seed): ``text`` (``text_ids``
    ``[B, 12]``, the second row padded after 8 tokens, with ``text_attention_mask``), ``image`` (``images``
    ``[B, C, 4p, 4p]``: 16 patches), ``image_text``, ``image_pair_text`` and ``points`` (``[B, P, 3]``, P twice
    what the point encoder needs)."""
    generator = torch.Generator().manual_seed(seed)
    length = 12
    low = 1 if config.pad_id == 0 else 0
    ids = torch.randint(low, config.vocab_size, (batch_size, length), generator=generator)
    ids[ids == config.pad_id] = (config.pad_id + 1) % config.vocab_size
    real = torch.ones(batch_size, length, dtype=torch.bool)
    if batch_size > 1:
        real[1, 8:] = False
    ids = torch.where(real, ids, config.pad_id)
    side = 4 * config.patch_size
    images = torch.randn(batch_size, config.image_channels, side, side, generator=generator)
    images2 = torch.randn(batch_size, config.image_channels, side, side, generator=generator)
    count = 2 * max(config.point_tokens or 1, config.point_group_size)
    points = torch.randn(batch_size, count, 3, generator=generator)
    text = {"text_ids": ids, "text_attention_mask": real}
    return {"text": text, "image": {"images": images}, "image_text": {"images": images, **text},
            "image_pair_text": {"images": images, "images2": images2, **text}, "points": {"points": points}}


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Every output of ``model`` (eval mode) on :func:`verification_batches`: the backbone's hidden states per
    modality and the heads' outputs — MLM logits, contrastive embeddings, masked patch and point predictions of a
    pretraining model; the logits of a task model on each modality it takes."""
    from itnet_scale.models.pretrained import task_of

    task = task_of(model)
    was_training = model.training
    model.eval()
    outputs: dict[str, Tensor] = {}
    try:
        if task in ("backbone", "pretraining"):
            backbone = model if task == "backbone" else model.itnet
            hidden = {kind: backbone(batch) for kind, batch in batches.items()}
            outputs.update({f"{kind}/hidden": out.hidden for kind, out in hidden.items()})
            if task == "pretraining":
                outputs["text/mlm_logits"] = model.mlm(hidden["text"].part("text")[0])
                outputs["image_text/mlm_logits"] = model.mlm(hidden["image_text"].part("text")[0])
                outputs["image/mpm"] = model.mpm(hidden["image"].part("image")[0])
                outputs["points/mpp"] = model.mpp(hidden["points"].part("points")[0])
                image, text = model.contrastive_embeddings(batches["image_text"])
                outputs["image_text/itc_image"], outputs["image_text/itc_text"] = image, text
        else:
            kinds = {"classification": ("text", "image", "image_text", "points"), "vqa": ("image_text",),
                     "nlvr2": ("image_pair_text",)}[task]
            outputs.update({f"{kind}/logits": model(batches[kind]) for kind in kinds})
    finally:
        model.train(was_training)
    return outputs


@contextlib.contextmanager
def _eager_kernels() -> Iterator[None]:
    """The tiled kernels run eagerly (``ITNET_COMPILE=0``): compiling for a few tiny batches costs more than it
    saves, and both models run the same code either way."""
    before = os.environ.get("ITNET_COMPILE")
    os.environ["ITNET_COMPILE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ITNET_COMPILE", None)
        else:
            os.environ["ITNET_COMPILE"] = before


def compare_outputs(reference: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> dict[str, float]:
    """``{name: max |a − b|}`` in fp32 (``inf`` where shapes differ or a value is not finite)."""
    if set(reference) != set(other):
        raise ValueError(f"outputs differ in names: {sorted(set(reference) ^ set(other))}")
    diffs = {}
    for name, want in reference.items():
        got = other[name]
        if want.shape != got.shape:
            diffs[name] = math.inf
            continue
        diff = (want.float() - got.float()).abs()
        finite = bool(torch.isfinite(want).all() and torch.isfinite(got).all())
        diffs[name] = float(diff.max()) if finite and diff.numel() else (0.0 if finite else math.inf)
    return diffs


def _source_model(source: WeightSource, task: str, stored: torch.dtype) -> nn.Module:
    """The fp32 model of ``source`` with its weights rounded to ``stored`` (what a conversion to that dtype keeps),
    loaded tensor by tensor."""
    model = build_model(source.task, source.model_config, source.labels)
    targets = model.state_dict(keep_vars=True)
    aliases = model_aliases(model)
    wanted: dict[str, list[str]] = {}  # the source's stored name → the model's names it fills
    for name in targets:
        if name not in aliases:
            wanted.setdefault(source.aliases.get(name, name), []).append(name)
    with source.reader() as read, torch.no_grad():
        for name, tensor in read(list(wanted)):
            value = tensor.to(stored_dtype(tensor.dtype, stored))
            for target_name in wanted[name]:
                targets[target_name].copy_(value.to(targets[target_name].dtype))
    return model.itnet if task == "backbone" and source.task != "backbone" else model


def verify_conversion(source: WeightSource | str | Path, library: str | Path, *, tolerance: float = 1e-5,
                      seed: int = 0) -> VerificationResult:
    """Run :func:`verification_batches` through the model rebuilt from ``source`` (its weights rounded to the
    library's dtype, so a bf16 output is held to the same standard) and the one read from the library folder,
    both in fp32; raise :class:`VerificationError` (with the max abs diff) unless every output — and every weight
    — agrees to ``tolerance``. Memory: two fp32 models."""
    from itnet_scale.models.registry import TASKS

    source = source if isinstance(source, WeightSource) else open_source(source)
    folder = LibraryFolder(library)
    config = folder.config
    if source.model_config is None:
        raise ValueError(f"{source.path}: no model config to rebuild the source model from")
    stored = config.torch_dtype
    model_class = TASKS[config.task].model_class
    with _eager_kernels():
        reference_model = _source_model(source, config.task, stored)
        converted = model_class.from_pretrained(library)  # the folder's own task and label count
        batches = verification_batches(config.model, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = model_outputs(reference_model, batches)
            torch.manual_seed(seed)
            got = model_outputs(converted, batches)
    diffs = compare_outputs(want, got)
    weights = compare_outputs(reference_model.state_dict(), converted.state_dict())
    result = VerificationResult(max(diffs.values()), diffs, tolerance, max(weights.values(), default=0.0))
    if not (result.max_abs_diff <= tolerance and result.weights_max_abs_diff <= tolerance):
        bad = [f"{name} {value:.3g}" for name, value in sorted({**diffs, **weights}.items()) if not value <= tolerance]
        raise VerificationError(f"verification FAILED: {library} vs {source.path}: {result.summary()}; over the "
                                f"tolerance: {', '.join(bad[:8])}{' …' if len(bad) > 8 else ''}",
                                max(result.max_abs_diff, result.weights_max_abs_diff))
    return result


# -- inspection --------------------------------------------------------------------------------------------------


def module_sizes(specs: list[TensorSpec], depth: int = 2) -> dict[str, dict[str, int]]:
    """``{prefix: {"parameters", "bytes"}}`` for every module prefix up to ``depth`` dots (``itnet``,
    ``itnet.encoder``, ``mlm`` …), in first-seen order."""
    sizes: dict[str, dict[str, int]] = {}
    for spec in specs:
        parts = spec.name.split(".")
        for level in range(1, min(depth, len(parts) - 1) + 1):
            entry = sizes.setdefault(".".join(parts[:level]), {"parameters": 0, "bytes": 0})
            entry["parameters"] += math.prod(spec.shape)
            entry["bytes"] += spec.nbytes
    return sizes


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a DeepSpeed checkpoint or a library folder holds, without reading the weights: format, step, consumed
    samples per stream, objectives, task and model class, the model config, parameter count (tied weights once),
    per-module sizes, dtypes, tied weights and files."""
    source = open_source(path)
    library = is_library_folder(source.path)
    report: dict[str, Any] = {
        "path": str(source.path), "format": "library" if library else "deepspeed",
        "description": source.description, "task": source.task, "model_class": _class_name(source.task),
        "labels": source.labels, "step": source.info.get("step"), "consumed": source.info.get("consumed") or {},
        "objectives": source.info.get("objectives"),
        "parameters": sum(math.prod(s.shape) for s in source.specs), "tensors": len(source.specs),
        "bytes": sum(s.nbytes for s in source.specs), "dtypes": sorted({dtype_name(s.dtype) for s in source.specs}),
        "tied_weights": source.aliases, "modules": module_sizes(source.specs),
        "model_config": OmegaConf.to_container(OmegaConf.structured(source.model_config))
        if source.model_config is not None else None}
    if library:
        report["source"] = source.info
        files = sorted(p for p in source.path.iterdir() if p.is_file())
    else:
        info = source.info
        report["deepspeed"] = {key: info.get(key) for key in ("tag", "zero_stage", "universal", "world_size",
                                                              "sequence_parallel_size", "global_samples",
                                                              "ds_version")}
        pretrain = info.get("pretrain_config")
        report["pretrain_config"] = OmegaConf.to_container(OmegaConf.create(pretrain)) if pretrain else None
        files = sorted(p for p in source.path.rglob("*") if p.is_file())
    report["files"] = {str(p.relative_to(source.path)): p.stat().st_size for p in files}
    return report


def _human(count: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(count) < 1000 or suffix == "T":
            return f"{count:.3g}{suffix}{unit}" if suffix else f"{count:.0f}{unit}"
        count /= 1000
    return str(count)


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable text of :func:`inspect_checkpoint`'s report."""
    lines = [f"{report['description']}"]
    if report["format"] == "deepspeed":
        ds = report["deepspeed"]
        lines.append(f"  tag {ds['tag']}, ZeRO-{ds['zero_stage']}{' (universal)' if ds['universal'] else ''}, "
                     f"{ds['world_size']} data-parallel ranks, sequence parallel {ds['sequence_parallel_size']}, "
                     f"DeepSpeed {ds['ds_version']}")
    lines.append(f"step: {report['step'] if report['step'] is not None else 'unknown'}")
    consumed = report["consumed"]
    if consumed:
        total = sum(entry.get("samples") or 0 for entry in consumed.values())
        lines.append(f"consumed samples: {total} = " + ", ".join(
            f"{stream} {entry.get('samples')} ({entry.get('units')} units)" for stream, entry in consumed.items()))
    else:
        lines.append("consumed samples: unknown")
    lines.append(f"objectives: {', '.join(report['objectives']) if report['objectives'] else 'unknown'}")
    labels = f", {report['labels']} labels" if report["labels"] else ""
    lines.append(f"model: {report['model_class']} (task {report['task']}{labels}), {report['parameters']:,} "
                 f"parameters in {report['tensors']} tensors, {'/'.join(report['dtypes'])}, "
                 f"{_human(report['bytes'], 'B')}")
    for alias, stored in report["tied_weights"].items():
        lines.append(f"  tied: {alias} = {stored}")
    lines.append("modules:")
    for name, size in report["modules"].items():
        indent = "  " * name.count(".")
        share = 100 * size["parameters"] / max(report["parameters"], 1)
        lines.append(f"  {indent}{name:<{34 - len(indent)}} {size['parameters']:>14,}  {share:5.1f}%  "
                     f"{_human(size['bytes'], 'B')}")
    if report["model_config"] is not None:
        lines.append("model config:")
        text = OmegaConf.to_yaml(OmegaConf.create(report["model_config"]))
        lines.extend(f"  {line}" for line in text.rstrip().splitlines())
    lines.append(f"files: {len(report['files'])}, {_human(sum(report['files'].values()), 'B')}")
    return "\n".join(lines)


# -- command lines -----------------------------------------------------------------------------------------------

_CONVERT_DOC = """Convert checkpoints.

  library SOURCE OUTPUT   a DeepSpeed checkpoint (ZeRO 0–3, any world size, universal; a tag folder or a run's
                          checkpoints folder, whose `latest` is followed) → a library folder (config.yaml +
                          model.safetensors); --verify checks the outputs match before the folder appears.
  verify SOURCE LIBRARY   check an existing library folder against its source.
  universal CKPT OUTPUT   a ZeRO 1–3 checkpoint → DeepSpeed's universal checkpoint in OUTPUT/<tag> (resume on any
                          number of ranks with run_dir=<parent of OUTPUT>).

A library folder starts a run: `launch/pretrain.py ... init_from=OUTPUT` (or `Model.from_pretrained(OUTPUT)`).
"""


def _deepspeed_logs_to_stderr() -> None:
    """Import DeepSpeed with stdout sent to stderr: its logger binds to the stream it sees at import (its
    accelerator notice included), so the tools' stdout holds only their own output (``--json`` stays JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401


def _load_model_config_file(path: Path | None) -> ModelConfig | None:
    if path is None:
        return None
    from itnet_scale.models.registry import load_model_config

    return load_model_config(path)


def convert_main(argv: list[str] | None = None) -> int:
    """``itnet-convert-checkpoint`` / ``tools/convert_checkpoint.py``: exit 0 on success, 2 on bad input, 1 when the
    verification fails (the max abs diff printed)."""
    parser = argparse.ArgumentParser(prog="convert_checkpoint", description=_CONVERT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    library = commands.add_parser("library", help="DeepSpeed checkpoint → library format")
    library.add_argument("source", type=Path, help="tag folder, run checkpoints folder, or a library folder")
    library.add_argument("output", type=Path, help="the library folder to write (must not exist)")
    library.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="stored dtype")
    library.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="shard above this (e.g. 2GB)")
    library.add_argument("--task", choices=["pretraining", "backbone"], default=None,
                         help="backbone: write the ITNetModel alone (default: the whole pretraining model)")
    library.add_argument("--verify", action="store_true", help="check the outputs agree (max abs diff <= 1e-5)")
    library.add_argument("--tolerance", type=float, default=1e-5, help=argparse.SUPPRESS)
    library.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    library.add_argument("--model-config", type=Path, default=None,
                         help="the model config YAML, for a checkpoint that does not record one")
    verify = commands.add_parser("verify", help="verify a library folder against its source checkpoint")
    verify.add_argument("source", type=Path)
    verify.add_argument("library", type=Path)
    verify.add_argument("--tolerance", type=float, default=1e-5)
    verify.add_argument("--model-config", type=Path, default=None)
    universal = commands.add_parser("universal", help="ZeRO 1–3 checkpoint → DeepSpeed universal checkpoint")
    universal.add_argument("checkpoint", type=Path, help="a tag folder, e.g. runs/a/checkpoints/step000000200")
    universal.add_argument("output", type=Path, help="the checkpoint folder of the run that resumes it")
    args = parser.parse_args(argv)
    _deepspeed_logs_to_stderr()
    try:
        if args.command == "universal":
            target = convert_to_universal(args.checkpoint, args.output)
            print(f"universal checkpoint: {target} (latest → {target.name})")
        elif args.command == "library":
            result = convert_to_library(args.source, args.output, dtype=args.dtype,
                                        max_shard_size=args.max_shard_size, task=args.task, verify=args.verify,
                                        tolerance=args.tolerance, overwrite=args.overwrite,
                                        model_config=_load_model_config_file(args.model_config))
            print(f"library folder: {result.output} ({result.tensors} tensors, {_human(result.bytes, 'B')} "
                  f"{args.dtype}, {len(result.files)} files: {', '.join(result.files)})")
            if result.verification is not None:
                print(f"verified: {result.verification.summary()}")
            print(f"continue training: launch/pretrain.py --config ... init_from={result.output}")
        else:
            source = open_source(args.source, _load_model_config_file(args.model_config))
            print(f"verified: {verify_conversion(source, args.library, tolerance=args.tolerance).summary()}")
    except VerificationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def inspect_main(argv: list[str] | None = None) -> int:
    """``itnet-inspect-checkpoint`` / ``tools/inspect_checkpoint.py``: exit 0, or 2 on bad input."""
    parser = argparse.ArgumentParser(prog="inspect_checkpoint", description="What a DeepSpeed checkpoint (tag "
                                     "folder or a run's checkpoints folder) or a library folder holds: step, "
                                     "consumed samples, objectives, model config, parameters, module sizes.",
                                     allow_abbrev=False)
    parser.add_argument("path", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    _deepspeed_logs_to_stderr()
    try:
        report = inspect_checkpoint(args.path)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
