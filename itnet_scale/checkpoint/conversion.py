"""DeepSpeed checkpoints → the library format.

:func:`convert_to_library` streams a :class:`~itnet_scale.checkpoint.sources.WeightSource` (a DeepSpeed checkpoint
of any ZeRO stage and world size, a universal one, or a library folder to re-shard or re-cast) into a library folder
(:func:`~itnet_scale.checkpoint.library.write_library`), after checking its tensors against the model its config
builds (names and shapes). At most one output shard is held besides what DeepSpeed's consolidation holds, so the
peak is about 2× the fp32 model (``tests/tools/measure_convert_memory.py``). ``verify=True`` checks the temporary
folder (:func:`~itnet_scale.checkpoint.verification.verify_conversion`) before it is renamed into place.

The other direction is not a conversion: a run starts from a library folder with ``init_from``
(:func:`~itnet_scale.checkpoint.library.load_pretrained_weights`), and DeepSpeed writes its own checkpoints from
there. DeepSpeed's universal format (any world size) is
:func:`~itnet_scale.checkpoint.deepspeed_checkpoint.convert_to_universal`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from itnet_scale.checkpoint.library import (
    BACKBONE_PREFIX,
    DEFAULT_MAX_SHARD_SIZE,
    LibraryConfig,
    TensorSpec,
    dtype_name,
    dtype_of,
    stored_dtype,
    write_library,
)
from itnet_scale.checkpoint.sources import WeightSource, open_source
from itnet_scale.checkpoint.verification import VerificationResult, verify_conversion
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import TASKS


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
    config = LibraryConfig(task=task, model_class=TASKS[task].model_class.__name__,
                           labels=source.labels if task == source.task else None, dtype=dtype_name(out_dtype),
                           tied_weights=aliases, source=provenance, model=source.model_config)
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
