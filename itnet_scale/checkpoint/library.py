"""The library format: a model as a folder of ``config.yaml`` + ``model.safetensors``, read without unpickling.

Layout (the sharding and the index are Hugging Face's, so the folder looks like one users know)::

    DIR/config.yaml                               # LibraryConfig: task, class, label count, dtype, ties, ModelConfig
    DIR/model.safetensors                         # every tensor, when they fit in max_shard_size
    DIR/model-00001-of-00003.safetensors ...      # or shards of at most max_shard_size bytes each, and
    DIR/model.safetensors.index.json              # {"metadata": {"total_size": bytes}, "weight_map": {name: file}}

Names are the model's own ``state_dict`` keys: ``encoder.*`` / ``backbone.*`` for :class:`ITNetModel`,
``itnet.*`` plus the heads (``mlm.*``, ``head.*`` …) for a task model. Tied weights (the MLM decoder and the text
embedding) are stored once, under the first name, with ``config.yaml``'s ``tied_weights`` naming the alias; they
are tied again on load (the model ties them itself; loading the stored tensor fills both).

- ``model.save_pretrained(DIR)`` / ``Class.from_pretrained(DIR)`` for :class:`ITNetModel` and every task model
  (:class:`PretrainedMixin`). A task model read from another task's folder (e.g. a classifier from a pretraining
  folder) takes the ``itnet.*`` weights and starts fresh heads (a log line says which); ``ITNetModel`` reads the
  backbone out of any folder.
- :func:`load_pretrained_weights` loads a folder into an existing model (the pretraining loop's ``init_from``): the
  backbone must match exactly, heads load when present and matching.
- Fine-tuning differences a load bridges, each logged: a model that builds fewer encoders than the folder holds
  (``ModelConfig.modalities``) skips the others' weights (and a pretraining model the heads it lacks); the image
  stem's first convolution of a model with other ``image_channels`` is adapted (:func:`adapt_input_channels`:
  gray → RGB and back); a parameter the folder lacks that the model marks ``FRESH_IF_ABSENT`` (the text segment
  embedding, zero-initialized) keeps its initialization. Any other missing or misshapen weight is an error.
- :func:`write_library` writes a folder from tensors fetched shard by shard (the checkpoint converter streams
  through it), into a temporary sibling folder renamed into place at the end
  (:func:`~itnet_scale.checkpoint.atomic_writes.atomic_directory`): a folder is complete or absent, and its files
  and itself have the umask's permissions (``0644`` / ``0755`` under ``022``).

Every error names the file and the tensor: a missing shard, a truncated or corrupt file, an index that disagrees
with its shards, a config whose model has other tensor names or shapes than the files.

This module is the one part of :mod:`itnet_scale.checkpoint` below the model classes (they inherit
:class:`PretrainedMixin`); it builds models through :mod:`itnet_scale.models.registry`, which imports no model module.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from itnet_scale.checkpoint.atomic_writes import atomic_directory
from itnet_scale.config import load_yaml, merge_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import TASKS, create_model, load_model_config
from itnet_scale.nn.encoders import ImageEncoder, MultimodalEncoder, adapt_input_channels

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_FILE = "model-{index:05d}-of-{count:05d}.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
#: Output dtypes by name (the tools' ``--dtype``), and their names in ``config.yaml``.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
#: The backbone's prefix in a task model's ``state_dict`` (an :class:`ITNetModel` has none).
BACKBONE_PREFIX = "itnet."
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}

M = TypeVar("M", bound=nn.Module)


# -- config.yaml -----------------------------------------------------------------------------------------------


@dataclass
class LibraryConfig:
    """``config.yaml`` of a library folder.

    ``task`` (a :data:`~itnet_scale.models.registry.TASKS` name) and ``model_class`` say which model the weights
    are; ``labels`` is its label count (``classes`` of a classifier, ``answers`` of VQA; none otherwise);
    ``dtype`` the stored floating-point dtype; ``tied_weights`` maps each alias to the stored tensor it shares;
    ``source`` is free-form provenance (the converter records the checkpoint, step, consumed samples …);
    ``model`` is the :class:`ModelConfig`.
    """

    format_version: int = FORMAT_VERSION
    task: str = "pretraining"
    model_class: str = "ITNetForPretraining"
    labels: int | None = None
    dtype: str = "float32"
    tied_weights: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version={self.format_version}: this library reads version {FORMAT_VERSION}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {sorted(TASKS)}")
        model_class, needed = TASKS[self.task]
        if self.model_class != model_class.__name__:
            raise ValueError(f"task {self.task!r} is model class {model_class.__name__}, not {self.model_class!r}")
        if needed is not None and (self.labels is None or self.labels < 1):
            raise ValueError(f"task {self.task!r} needs labels (its {needed}) >= 1, got {self.labels}")
        if needed is None and self.labels is not None:
            raise ValueError(f"task {self.task!r} takes no label count, got labels={self.labels}")
        dtype_of(self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_of(self.dtype)

    @property
    def backbone_prefix(self) -> str:
        """The prefix of the backbone's tensors in the files: ``""`` for a backbone folder, else ``itnet.``."""
        return "" if self.task == "backbone" else BACKBONE_PREFIX


def dtype_of(name: str | torch.dtype) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` (or ``float32`` …, or a torch dtype) → the torch dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"unsupported dtype {name}; choose from fp32, bf16, fp16")
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from fp32, bf16, fp16")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16`` (the spelling in ``config.yaml``)."""
    return str(dtype).removeprefix("torch.")


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or ``"500MB"`` / ``"2GB"`` / ``"1GiB"`` (decimal and binary units)."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(str(size))
        if not match:
            raise ValueError(f"bad size {size!r}: expected bytes or e.g. 500MB, 2GB, 1GiB")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if value < 1:
        raise ValueError(f"size must be >= 1 byte, got {size!r}")
    return value


def read_library_config(directory: str | Path) -> LibraryConfig:
    """``DIR/config.yaml`` checked against :class:`LibraryConfig` (errors name the file and the key)."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a library-format folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return merge_config(LibraryConfig, [load_yaml(path, "library config")], what="library config", where=str(path))


def library_config_yaml(config: LibraryConfig) -> str:
    """The YAML text of ``config`` (what ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def is_library_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a library folder (has ``config.yaml`` and weights or an index)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and ((path / WEIGHTS_FILE).is_file() or (path / INDEX_FILE).is_file())


# -- models ↔ tasks ----------------------------------------------------------------------------------------------


def task_of(model_or_class: nn.Module | type[nn.Module]) -> str:
    """The :data:`~itnet_scale.models.registry.TASKS` name of a model (or model class)."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for task, (model_class, _) in TASKS.items():
        if cls is model_class:
            return task
    raise ValueError(f"{cls.__name__} is not a registered ITNet model class ({sorted(TASKS)})")


def label_count(model: nn.Module) -> int | None:
    """The label count of a task model (its head's outputs), ``None`` for models without one."""
    if TASKS[task_of(model)].label_argument is None:
        return None
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def model_config_of(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` a model was built from."""
    backbone = model if task_of(model) == "backbone" else model.itnet
    return backbone.config


def build_model(task: str, config: ModelConfig, labels: int | None = None) -> nn.Module:
    """``task``'s model of ``config`` (``labels``: its classes/answers)."""
    needed = TASKS[task].label_argument
    counts = {needed: labels} if needed is not None else {}
    return create_model(config, task=task, **counts)


def backbone_prefix(model: nn.Module) -> str:
    """Where the backbone's tensors sit in ``model.state_dict()``: ``""`` (an ITNetModel) or ``itnet.``."""
    return "" if task_of(model) == "backbone" else BACKBONE_PREFIX


def model_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: first name}`` of a model's tied parameters and buffers (one object under several names)."""
    first: dict[int, str] = {}
    aliases = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    order = {name: i for i, name in enumerate(model.state_dict(keep_vars=True))}
    for name, tensor in sorted(named, key=lambda item: order.get(item[0], len(order))):
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def tied_groups(state: Mapping[str, Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for the entries of a state dict that are one tensor under several names (same
    storage, offset, shape and strides), the first name in ``state``'s order being the one stored."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


# -- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its name, shape and stored dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def stored_dtype(dtype: torch.dtype, output: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is stored in: ``output`` for floating point (when given), else its own."""
    return output if output is not None and dtype.is_floating_point else dtype


def plan_shards(specs: Sequence[TensorSpec], max_shard_size: int | str) -> list[list[TensorSpec]]:
    """Split ``specs`` (in order) into shards of at most ``max_shard_size`` bytes; a tensor larger than that gets a
    shard of its own."""
    limit = parse_size(max_shard_size)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def write_library(directory: str | Path, config: LibraryConfig, specs: Sequence[TensorSpec],
                  fetch: Callable[[list[str]], Iterable[tuple[str, Tensor]]], *,
                  max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
                  check: Callable[[Path], None] | None = None) -> Path:
    """Write a library folder: ``config.yaml``, then the tensors of ``specs`` shard by shard — ``fetch(names)``
    yields one shard's ``(name, tensor)`` pairs (any dtype/device), each cast to its spec's dtype as it comes, so
    a cast never holds two copies of the shard; the shard is written and dropped before the next one is fetched
    — and the index when there are several.

    Everything goes to a temporary sibling folder; ``check(folder)`` (e.g. a verification) runs on it before it is
    renamed to ``directory``. Returns ``directory``."""
    shards = plan_shards(specs, max_shard_size)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tensor names: {sorted({n for n in names if names.count(n) > 1})}")
    with atomic_directory(directory, overwrite) as temporary:
        (temporary / CONFIG_FILE).write_text(library_config_yaml(config), encoding="utf-8")
        weight_map: dict[str, str] = {}
        for index, shard in enumerate(shards, start=1):
            file = WEIGHTS_FILE if len(shards) == 1 else SHARD_FILE.format(index=index, count=len(shards))
            wanted = {spec.name: spec for spec in shard}
            tensors: dict[str, Tensor] = {}
            for name, tensor in fetch(list(wanted)):
                spec = wanted.get(name)
                if spec is None or name in tensors:
                    raise ValueError(f"tensor {name!r} was not asked for {file}")
                if tuple(tensor.shape) != spec.shape:
                    raise ValueError(f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(spec.shape)}")
                tensors[name] = tensor.detach().to(device="cpu", dtype=spec.dtype).contiguous()
                del tensor
            absent = [name for name in wanted if name not in tensors]
            if absent:
                raise ValueError(f"tensor {absent[0]!r} was not produced for {file}")
            save_file(tensors, temporary / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, file))
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs)}, "weight_map": weight_map}
            (temporary / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if check is not None:
            check(temporary)
    return Path(directory)


def save_pretrained(model: nn.Module, directory: str | Path, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                    dtype: str | torch.dtype | None = None, overwrite: bool = False,
                    source: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` (an ITNet model) as a library folder; ``dtype`` (fp32/bf16/fp16) casts the floating-point
    tensors (default: as they are). ``source`` is recorded as provenance. Returns ``directory``."""
    state = model.state_dict()
    tied = model_aliases(model)
    partitioned = [name for name, p in model.named_parameters() if hasattr(p, "ds_id") and p.numel() == 0]
    if partitioned:
        raise ValueError(f"parameter {partitioned[0]!r} is partitioned by ZeRO-3 (empty here): gather the weights "
                         "first (deepspeed.zero.GatheredParameters), or convert the run's checkpoint "
                         "(tools/convert_checkpoint.py library)")
    floating = {t.dtype for t in state.values() if t.dtype.is_floating_point}
    output = dtype_of(dtype) if dtype is not None else (floating.pop() if len(floating) == 1 else torch.float32)
    config = LibraryConfig(task=task_of(model), model_class=type(model).__name__, labels=label_count(model),
                           dtype=dtype_name(output), tied_weights=tied, source=dict(source or {}),
                           model=model_config_of(model))
    specs = [TensorSpec(name, tuple(t.shape), stored_dtype(t.dtype, output)) for name, t in state.items()
             if name not in tied]
    return write_library(directory, config, specs, lambda names: ((name, state[name]) for name in names),
                         max_shard_size=max_shard_size, overwrite=overwrite)


# -- reading -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor of a library folder lives, and its shape and dtype."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


def _safetensors_error(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path}: unreadable safetensors file (truncated or corrupt?): {error}")


class LibraryFolder:
    """An opened library folder: its config, and every tensor's file, shape and dtype (headers only; tensors are
    read on demand, file by file, with :meth:`read`).

    Opening checks the layout: the index and the shard files agree (every listed shard exists, holds what the
    index says, and nothing else), every file's header is whole. Errors name the file and the tensor.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.config = read_library_config(self.directory)
        index_path = self.directory / INDEX_FILE
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
                weight_map = dict(index["weight_map"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{index_path}: not a safetensors index (JSON with a weight_map): {error}") from None
            files: dict[str, list[str]] = {}
            for name, file in weight_map.items():
                files.setdefault(file, []).append(name)
        elif (self.directory / WEIGHTS_FILE).is_file():
            files = {WEIGHTS_FILE: []}
            weight_map = None
        else:
            raise FileNotFoundError(f"{self.directory}: no {WEIGHTS_FILE} (nor {INDEX_FILE}) in it")
        self.tensors: dict[str, StoredTensor] = {}
        for file, listed in files.items():
            path = self.directory / file
            if Path(file).name != file:
                raise ValueError(f"{index_path}: shard {file!r} is not a file name in the folder")
            if not path.is_file():
                example = f" (e.g. {listed[0]!r})" if listed else ""
                raise FileNotFoundError(f"{path}: missing shard; {INDEX_FILE} maps {len(listed)} tensors to it"
                                        f"{example}")
            held = _read_header(path)
            if weight_map is not None:
                absent = sorted(set(listed) - set(held))
                if absent:
                    raise ValueError(f"{path}: {INDEX_FILE} maps tensor {absent[0]!r} to this file, which does not "
                                     f"hold it ({len(absent)} missing)")
                extra = sorted(set(held) - set(listed))
                if extra:
                    raise ValueError(f"{path}: holds tensor {extra[0]!r}, which {INDEX_FILE} does not map to it")
            for name, (shape, dtype) in held.items():
                if name in self.tensors:
                    raise ValueError(f"{path}: tensor {name!r} is also in {self.tensors[name].file}")
                self.tensors[name] = StoredTensor(path, shape, dtype)
        for alias, stored in self.config.tied_weights.items():
            if stored not in self.tensors:
                raise ValueError(f"{self.directory / CONFIG_FILE}: tied weight {alias!r} → {stored!r}, but no file "
                                 f"holds {stored!r}")

    @property
    def files(self) -> list[Path]:
        return sorted({stored.file for stored in self.tensors.values()})

    def resolve(self, name: str) -> str | None:
        """The stored name holding ``name`` (itself, or the tensor it is tied to), or ``None``."""
        if name in self.tensors:
            return name
        stored = self.config.tied_weights.get(name)
        return stored if stored in self.tensors else None

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for stored ``names`` (CPU, stored dtype), one file open at a time."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.tensors[name].file, []).append(name)
        for path, wanted in by_file.items():
            try:
                with safe_open(path, framework="pt") as handle:
                    for name in wanted:
                        yield name, handle.get_tensor(name)
            except SafetensorError as error:
                raise _safetensors_error(path, error) from None

    def state_dict(self) -> dict[str, Tensor]:
        """Every stored tensor (aliases included), read whole."""
        state = dict(self.read(list(self.tensors)))
        for alias, stored in self.config.tied_weights.items():
            state[alias] = state[stored]
        return state


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from a safetensors file's header (the library checks it covers the file)."""
    try:
        with safe_open(path, framework="pt") as handle:
            held, names = {}, handle.keys()
            for name in names:
                view = handle.get_slice(name)
                held[name] = (tuple(view.get_shape()), view.get_dtype())
            return held
    except SafetensorError as error:
        raise _safetensors_error(path, error) from None


# -- loading into models -----------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a load did: the model's tensors loaded; the heads left as initialized, and why; the parts of the
    folder's model this one does not build (``itnet.encoder.text``, ``mlm`` …) with how many tensors each held;
    the weights adapted to another shape (name → (the folder's shape, the model's)); the ``FRESH_IF_ABSENT``
    weights the folder lacks, left as initialized."""

    loaded: list[str] = field(default_factory=list)
    fresh_heads: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    adapted: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    fresh_weights: list[str] = field(default_factory=list)


def _head_of(name: str) -> str:
    return name.split(".", 1)[0]


def _unbuilt_part(model: nn.Module, name: str) -> str | None:
    """The prefix of ``name`` that is a part ``model`` declares but does not build, or ``None``: an encoder outside
    its ``modalities`` (``None`` in its :class:`~itnet_scale.nn.encoders.MultimodalEncoder`) or a head of the task
    model set to ``None`` (a pretraining head those modalities do not serve). Nothing deeper: a weight a built
    module lacks (a segment embedding, say) is no part to skip."""
    module, parts = model, name.split(".")
    for depth, part in enumerate(parts[:-1]):
        if not hasattr(module, part):
            return None
        child = getattr(module, part)
        if child is None and (module is model or isinstance(module, MultimodalEncoder)):
            return ".".join(parts[: depth + 1])
        if not isinstance(child, nn.Module):
            return None
        module = child
    return None


def _fresh_if_absent(model: nn.Module) -> set[str]:
    """The model's parameters that may be missing from a folder (each module class's ``FRESH_IF_ABSENT``)."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(type(module), "FRESH_IF_ABSENT", ())}


def _channel_adaptable(model: nn.Module) -> set[str]:
    """The names of the image stems' first convolution weights (their input channels can be adapted)."""
    return {f"{prefix}.{module.input_weight_name}" if prefix else module.input_weight_name
            for prefix, module in model.named_modules() if isinstance(module, ImageEncoder)}


def load_into(model: nn.Module, folder: LibraryFolder, *, heads: str = "matching",
              described: str | None = None) -> LoadReport:
    """Copy ``folder``'s weights into ``model`` (in place, cast to each parameter's dtype).

    The backbone (``itnet.*`` of a task model, all of an ITNetModel) must match exactly — every tensor present with
    its shape, and no backbone tensor in the folder that the model lacks — else ``ValueError`` naming the file and
    the tensor, with three exceptions (each logged): the tensors of an encoder the model does not build (its
    ``modalities``) are skipped, an image stem's first convolution stored for other input channels is adapted
    (:func:`~itnet_scale.nn.encoders.adapt_input_channels`), and a ``FRESH_IF_ABSENT`` parameter the folder lacks
    keeps its initialization. ``heads="all"``: the heads must match exactly too (those the model does not build are
    skipped); ``"matching"``: each head (``mlm``, ``head`` …) loads when the folder holds all its tensors with the
    same shapes and stays as initialized otherwise (``LoadReport.fresh_heads`` says why). A weight the model ties
    to another is filled through that one. ``described`` names the model in errors (default: the model of the
    folder's ``config.yaml``).
    """
    if heads not in ("all", "matching"):
        raise ValueError(f"heads must be 'all' or 'matching', got {heads!r}")
    model_is = described or f"the model {folder.directory / CONFIG_FILE} describes"
    own_prefix, their_prefix = backbone_prefix(model), folder.config.backbone_prefix
    targets = model.state_dict(keep_vars=True)
    aliases = model_aliases(model)
    optional, adaptable = _fresh_if_absent(model), _channel_adaptable(model)
    report = LoadReport()
    plan: dict[str, str] = {}  # the model's name → the folder's stored name
    head_names: dict[str, list[str]] = {}
    for name, target in targets.items():
        if name in aliases:
            continue
        if not name.startswith(own_prefix):
            head_names.setdefault(_head_of(name), []).append(name)
            continue
        source = their_prefix + name[len(own_prefix):]
        stored = folder.resolve(source)
        if stored is None and name in optional:
            report.fresh_weights.append(name)
            continue
        if stored is None:
            raise ValueError(f"{folder.directory}: no file holds tensor {source!r} {list(target.shape)}, which "
                             f"{model_is} has")
        shape = list(folder.tensors[stored].shape)
        if name in adaptable and len(shape) == 4 and shape[:1] + shape[2:] == [target.shape[0], *target.shape[2:]]:
            if shape != list(target.shape):
                report.adapted[name] = (shape, list(target.shape))
        else:
            _check_shape(folder, stored, name, target, model_is)
        plan[name] = stored

    def skip_unbuilt(names: set[str]) -> list[str]:
        """``names`` less those of parts the model does not build (counted in ``report.skipped``), sorted."""
        left = []
        for stored in sorted(names):
            part = _unbuilt_part(model, own_prefix + stored[len(their_prefix):]) if stored.startswith(their_prefix) \
                else _unbuilt_part(model, stored)
            if part is None:
                left.append(stored)
            else:
                report.skipped[part] = report.skipped.get(part, 0) + 1
        return left

    backbone_stored = {name for name in folder.tensors if name.startswith(their_prefix)}
    unexpected = skip_unbuilt(backbone_stored - set(plan.values()))
    if unexpected:
        raise ValueError(f"{folder.tensors[unexpected[0]].file}: tensor {unexpected[0]!r} is not a parameter of "
                         f"{model_is} ({len(unexpected)} such)")
    for head, names in head_names.items():
        missing = [n for n in names if folder.resolve(n) is None]
        mismatched = [n for n in names if n not in missing
                      and folder.tensors[folder.resolve(n)].shape != tuple(targets[n].shape)]
        if heads == "all":
            if missing:
                raise ValueError(f"{folder.directory}: no file holds tensor {missing[0]!r} "
                                 f"{list(targets[missing[0]].shape)}, which {model_is} has")
            for name in mismatched:
                _check_shape(folder, folder.resolve(name), name, targets[name], model_is)
        if missing:
            report.fresh_heads[head] = ("not in the folder" if len(missing) == len(names) else
                                        f"the folder lacks {missing[0]!r}")
        elif mismatched:
            name = mismatched[0]
            report.fresh_heads[head] = (f"{name!r} is {list(folder.tensors[folder.resolve(name)].shape)} in the "
                                        f"folder, {list(targets[name].shape)} here")
        else:
            plan.update({name: folder.resolve(name) for name in names})
    if heads == "all":
        extra = skip_unbuilt(set(folder.tensors) - set(plan.values()) - backbone_stored)
        if extra:
            raise ValueError(f"{folder.tensors[extra[0]].file}: tensor {extra[0]!r} is not a parameter of "
                             f"{model_is} ({len(extra)} such)")
    wanted: dict[str, list[str]] = {}
    for name, stored in plan.items():
        wanted.setdefault(stored, []).append(name)
    with torch.no_grad():
        for stored, tensor in folder.read(wanted):
            for name in wanted[stored]:
                value = adapt_input_channels(tensor, targets[name].shape[1]) if name in report.adapted else tensor
                targets[name].copy_(value.to(targets[name].dtype))
    report.loaded = sorted(plan)
    _log_adjustments(folder.directory, report)
    return report


def _log_adjustments(directory: Path, report: LoadReport) -> None:
    """One log line per kind of difference a load bridged (see :func:`load_into`)."""
    if report.skipped:
        logger.warning("%s: skipped the weights of parts this model does not build (its modalities): %s", directory,
                       ", ".join(f"{part} ({count} tensors)" for part, count in sorted(report.skipped.items())))
    for name, (stored, wanted) in sorted(report.adapted.items()):
        logger.warning("%s: adapted %s from %s to %s (input channels %d → %d: timm's adapt_input_conv)", directory,
                       name, stored, wanted, stored[1], wanted[1])
    if report.fresh_weights:
        logger.warning("%s: not in the folder, kept at their initialization (zero: the pretrained model's function "
                       "is unchanged): %s", directory, ", ".join(report.fresh_weights))


def _check_shape(folder: LibraryFolder, stored: str, name: str, target: Tensor, model_is: str) -> None:
    shape = tuple(folder.tensors[stored].shape)
    if shape != tuple(target.shape):
        which = "" if name == stored else f" (as {name!r})"
        raise ValueError(f"{folder.tensors[stored].file}: tensor {stored!r} has shape {list(shape)}, not the "
                         f"{list(target.shape)} of {model_is}{which}")


def _config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    one, two = asdict(a), asdict(b)
    return [f"{key}: {one[key]!r} here, {two[key]!r} in the folder" for key in one if one[key] != two.get(key)]


def load_pretrained_weights(model: nn.Module, directory: str | Path) -> LoadReport:
    """Load a library folder's weights into an existing ITNet model (``init_from``): the backbone must match
    exactly (errors name the file and the tensor); heads load when the folder has them with the same shapes and
    stay as initialized otherwise (logged). A model config that differs from the folder's in settings that do not
    change shapes (e.g. a kernel option, dropout) is logged too."""
    folder = LibraryFolder(directory)
    differences = _config_differences(model_config_of(model), folder.config.model)
    if differences:
        logger.warning("%s: the model config differs from the folder's (%s)", directory, "; ".join(differences))
    report = load_into(model, folder, heads="matching", described="the model it is loaded into")
    if report.fresh_heads:
        logger.warning("%s (a %s folder): backbone loaded; fresh heads: %s", directory, folder.config.task,
                       "; ".join(f"{h} ({why})" for h, why in sorted(report.fresh_heads.items())))
    return report


def from_pretrained(cls: type[M], directory: str | Path, *, classes: int | None = None, answers: int | None = None,
                    dtype: str | torch.dtype | None = None, **overrides: Any) -> M:
    """Build ``cls`` (ITNetModel or a task model) from a library folder.

    The model config is the folder's, with ``overrides`` (settings that keep shapes: ``drop_path=0.1`` …). A folder
    of the same task (and label count) loads whole and exactly; from another task's folder the backbone loads and
    the heads start fresh (logged) — ``ITNetModel`` takes the backbone of any folder. ``classes`` / ``answers``:
    the label count of a classifier / VQA model (default: the folder's, when it is one). ``dtype``: the model's
    dtype (default fp32). Overrides may also change what :func:`load_into` bridges: ``modalities`` (fewer
    encoders), ``image_channels`` (an adapted stem), ``text_segments`` (a fresh, zero segment embedding)."""
    folder = LibraryFolder(directory)
    task = task_of(cls)
    needed = TASKS[task].label_argument
    given = {"classes": classes, "answers": answers}
    for name, value in given.items():
        if value is not None and name != needed:
            raise ValueError(f"{cls.__name__} takes no {name} (given {value})")
    same_task = folder.config.task == task
    labels = given.get(needed) if needed else None
    if needed and labels is None:
        if not same_task:
            raise ValueError(f"{directory} holds a {folder.config.task} model: give {cls.__name__} its {needed}=")
        labels = folder.config.labels
    config = load_model_config(folder.config.model, **overrides)
    model = build_model(task, config, labels)
    # Same task and label count: every head must load, unless other input channels reshape the masked patch head.
    whole = same_task and labels == folder.config.labels and config.image_channels == \
        folder.config.model.image_channels
    report = load_into(model, folder, heads="all" if whole else "matching")
    if report.fresh_heads:
        logger.warning("%s: %s from a %s folder: backbone loaded, fresh heads: %s", directory, cls.__name__,
                       folder.config.task, "; ".join(f"{h} ({why})" for h, why in sorted(report.fresh_heads.items())))
    return model.to(dtype_of(dtype)) if dtype is not None else model


class PretrainedMixin:
    """``save_pretrained(dir)`` and ``Class.from_pretrained(dir)`` for the ITNet models (see the module doc)."""

    def save_pretrained(self, directory: str | Path, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                        dtype: str | torch.dtype | None = None, overwrite: bool = False) -> Path:
        """Save as a library folder (``config.yaml`` + ``model.safetensors``, sharded above ``max_shard_size``);
        ``dtype`` fp32/bf16/fp16 casts the floating-point weights. An existing folder is refused unless
        ``overwrite``. See :func:`save_pretrained`."""
        return save_pretrained(self, directory, max_shard_size=max_shard_size, dtype=dtype, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, classes: int | None = None, answers: int | None = None,
                        dtype: str | torch.dtype | None = None, **overrides: Any) -> Self:
        """The model of a library folder; see :func:`from_pretrained`."""
        return from_pretrained(cls, directory, classes=classes, answers=answers, dtype=dtype, **overrides)
