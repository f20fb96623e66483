"""What a checkpoint holds, from its metadata alone: :func:`inspect_checkpoint` (a report) and
:func:`format_report` (its text).

For a DeepSpeed checkpoint (ZeRO 0–3, universal; a tag folder or a run's checkpoint folder) or a library folder:
step, consumed samples per stream, objectives, task and model class, model config, parameter count (tied weights
once), per-module sizes, dtypes and files — read from the headers and ``client_state`` (weights-only,
memory-mapped); the weights themselves are not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from itnet_scale.checkpoint.library import TensorSpec, dtype_name, is_library_folder
from itnet_scale.checkpoint.sources import meta_model, open_source
from itnet_scale.models.registry import TASKS


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
    samples per stream, objectives, task and model class, the model config, parameter count (tied weights once;
    buffers such as the contrastive head's running statistics counted apart), per-module sizes, dtypes, tied
    weights and files."""
    source = open_source(path)
    library = is_library_folder(source.path)
    buffer_names: set[str] = set()
    if source.model_config is not None:
        buffer_names = {name for name, _ in meta_model(source.task, source.model_config, source.labels).named_buffers()}
    parameters = [spec for spec in source.specs if spec.name not in buffer_names]
    report: dict[str, Any] = {
        "path": str(source.path), "format": "library" if library else "deepspeed",
        "description": source.description, "task": source.task, "model_class": TASKS[source.task].model_class.__name__,
        "labels": source.labels, "step": source.info.get("step"), "consumed": source.info.get("consumed") or {},
        "objectives": source.info.get("objectives"),
        "parameters": sum(math.prod(s.shape) for s in parameters),
        "buffers": sum(math.prod(s.shape) for s in source.specs if s.name in buffer_names),
        "tensors": len(source.specs),
        "bytes": sum(s.nbytes for s in source.specs), "dtypes": sorted({dtype_name(s.dtype) for s in source.specs}),
        "tied_weights": source.aliases, "modules": module_sizes(parameters),
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


def human_size(count: float, unit: str = "") -> str:
    """``count`` with a decimal prefix and three significant digits: ``human_size(463_800_000, "B")`` is
    ``"464MB"``."""
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
                 f"{human_size(report['bytes'], 'B')}")
    for alias, stored in report["tied_weights"].items():
        lines.append(f"  tied: {alias} = {stored}")
    lines.append("modules:")
    for name, size in report["modules"].items():
        indent = "  " * name.count(".")
        share = 100 * size["parameters"] / max(report["parameters"], 1)
        lines.append(f"  {indent}{name:<{34 - len(indent)}} {size['parameters']:>14,}  {share:5.1f}%  "
                     f"{human_size(size['bytes'], 'B')}")
    if report["model_config"] is not None:
        lines.append("model config:")
        text = OmegaConf.to_yaml(OmegaConf.create(report["model_config"]))
        lines.extend(f"  {line}" for line in text.rstrip().splitlines())
    lines.append(f"files: {len(report['files'])}, {human_size(sum(report['files'].values()), 'B')}")
    return "\n".join(lines)
