"""Checkpoints of either kind as :class:`WeightSource`: the model config, every tensor's name and shape, and a reader
that yields the tensors one at a time — what conversion, verification and inspection read.

:func:`open_source` opens what a tool is pointed at: a DeepSpeed tag folder (ZeRO 0–3, any world size, or a
universal checkpoint), a run's checkpoint folder (its ``latest`` is followed), or a library folder. Every DeepSpeed
file is read weights-only and memory-mapped (:func:`mmap_weights_only_loads`), so the Adam moments next to the fp32
weights are never read. ZeRO 1–3 weights come from DeepSpeed's own consolidation (``deepspeed.utils.zero_to_fp32``
in its lazy mode): at ZeRO-3 each tensor is gathered from the memory-mapped partitions when it is read; at ZeRO 1–2
DeepSpeed merges the partitions into one fp32 vector first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from itnet_scale.checkpoint.deepspeed_checkpoint import (
    LATEST_FILE,
    checkpoint_tags,
    is_universal_checkpoint,
    load_weights_only,
    read_latest,
    weights_only_loads,
)
from itnet_scale.checkpoint.library import (
    CONFIG_FILE,
    LibraryFolder,
    TensorSpec,
    build_model,
    dtype_name,
    is_library_folder,
    model_aliases,
    stored_dtype,
    tied_groups,
)
from itnet_scale.config import merge_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import TASKS

logger = logging.getLogger(__name__)

#: Reader of a source: ``read(names)`` yields ``(name, tensor)`` for those names, one at a time (CPU, the source's
#: dtype), so that a caller holding one at a time holds one.
Reader = Callable[[list[str]], Iterator[tuple[str, Tensor]]]
_RANK_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_(model|optim)_states\.pt$")
_CLIENT_SKIP = ("module", "optimizer", "frozen_param_fragments")


# -- weights-only, memory-mapped loads ---------------------------------------------------------------------------


def load_mapped(path: str | Path) -> Any:
    """A DeepSpeed file read weights-only and memory-mapped, on the CPU (see
    :func:`~itnet_scale.checkpoint.deepspeed_checkpoint.load_weights_only`)."""
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


def meta_model(task: str, config: ModelConfig, labels: int | None) -> nn.Module:
    """``task``'s model of ``config`` on the meta device: its tensor names and shapes, no memory."""
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
        model = meta_model(self.task, self.model_config, self.labels)
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
        order = {name: i for i, name in enumerate(meta_model(self.task, self.model_config, self.labels).state_dict())}
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
        if name not in files:  # a universal checkpoint holds the buffers as folders of their own too
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
    streams = {name: state for name, state in data.items() if isinstance(state, dict) and "units" in state}
    info = {"checkpoint": str(tag_dir), "tag": tag_dir.name, "zero_stage": stage, "universal": universal,
            "world_size": world, "step": client.get("step", client.get("global_steps")),
            "consumed": {name: {"units": s.get("units"), "samples": s.get("samples")} for name, s in streams.items()},
            "global_samples": client.get("global_samples"), "objectives": client.get("objectives"),
            "sequence_parallel_size": client.get("sequence_parallel_size"), "ds_version": client.get("ds_version"),
            "pretrain_config": client.get("config")}
    # The trainer records its model's task and label count (a fine-tuning run's classifier); older pretraining
    # checkpoints have neither.
    task, labels = client.get("task", "pretraining"), client.get("labels")
    if task not in TASKS:
        raise ValueError(f"{tag_dir}: the checkpoint's model task {task!r} is not a registered task ({sorted(TASKS)})")
    source = WeightSource(f"DeepSpeed {kind} checkpoint {tag_dir} ({world} ranks)", tag_dir, task, labels,
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


def load_source_model(source: WeightSource, stored: torch.dtype | None = None) -> nn.Module:
    """The fp32 model of ``source`` (its task, label count and model config), loaded tensor by tensor, checked
    against it first; ``stored``: round each weight to that dtype first (what a conversion to it keeps)."""
    source.check_against_model()
    model = build_model(source.task, source.model_config, source.labels)
    targets = model.state_dict(keep_vars=True)
    aliases = model_aliases(model)
    wanted: dict[str, list[str]] = {}  # the source's stored name → the model's names it fills
    for name in targets:
        if name not in aliases:
            wanted.setdefault(source.aliases.get(name, name), []).append(name)
    with source.reader() as read, torch.no_grad():
        for name, tensor in read(list(wanted)):
            value = tensor if stored is None else tensor.to(stored_dtype(tensor.dtype, stored))
            for target_name in wanted[name]:
                targets[target_name].copy_(value.to(targets[target_name].dtype))
    return model


def open_source(path: str | Path, model_config: ModelConfig | None = None) -> WeightSource:
    """A library folder or a DeepSpeed checkpoint (see the module doc) as a :class:`WeightSource`."""
    if is_library_folder(path):
        if model_config is not None:
            raise ValueError(f"{path} is a library folder: its model config is its {CONFIG_FILE}")
        return library_source(path)
    if Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file():
        return library_source(path)  # a library folder with its weights missing: LibraryFolder names them
    return deepspeed_source(path, model_config)
