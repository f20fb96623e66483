"""Fit a layer's low-rank feature maps to its exact kernel and report the error against the rank R.

The layer comes from a checkpoint (``--checkpoint layer.safetensors``, an ``IntegralTransform``
state_dict, with ``--layer-config`` its config: ``dim``, ``heads`` (``pos_dim``, default 1) and a model
config's layer keys, ``kernel_width``, ``support``, ``rank`` …, as a JSON file or an inline JSON object)
or is built at random from the options. For each ``R`` in ``--ranks`` a copy of the layer
gets fresh feature maps of that rank, which are fitted while every exact-kernel parameter stays
frozen; ``--own-features`` fits the layer's own feature maps instead (those of its config's
``rank``, loaded from the checkpoint when it holds them).

The fitting itself — random inputs, the kernel-matching loss (row KL in softmax mode, relative
squared error in linear mode), frozen exact parameters, skipped non-finite steps — is
:func:`itnet_scale.nn.distill.distill`; this tool loads or builds the layer and reports.

Reported per ``R``: the held-out relative output error ``‖y_lowrank − y_exact‖ / ‖y_exact‖``
before and after fitting (the same held-out batches for every rank), as a table and with
``--json``. ``--save-dir`` writes each fitted layer as ``layer_R{R}.safetensors`` with its
config in ``layer_R{R}.json`` (so ``--checkpoint … --layer-config … --own-features``
reads it back). As a library: :func:`distill` (a sweep over ranks, or the layer's own features).

Usage::

    python tools/distill_kernel.py [--ranks 4 16 64] [--steps 300] [--mode softmax] [--json out.json]
    python tools/distill_kernel.py --checkpoint layer.safetensors --layer-config layer.json
    python tools/distill_kernel.py --quick          # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from itnet_scale.config import merge_config
from itnet_scale.models import LayerConfig
from itnet_scale.nn import IntegralTransform
from itnet_scale.nn.distill import distill

QUICK = {"ranks": [2, 32], "steps": 60, "seq": 48, "dim": 16, "kernel_width": 8}


# --------------------------------------------------------------------------------------
# Loading a layer
# --------------------------------------------------------------------------------------


SIZES = ("dim", "heads", "pos_dim")


def build_layer(config: dict[str, Any]) -> IntegralTransform:
    """The layer a flat config describes: ``dim``, ``heads``, ``pos_dim`` (default 1) and the rest a model config's
    layer keys (:class:`~itnet_scale.models.LayerConfig`, checked by name and type)."""
    layer = merge_config(LayerConfig, [{k: v for k, v in config.items() if k not in SIZES}], what="layer config")
    return layer.transform().build(config["dim"], config["heads"], config.get("pos_dim", 1))


def parse_layer_config(value: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A layer's flat config (see :func:`build_layer`): a dict, an inline JSON object or a JSON file.

    Raises ``ValueError`` naming the file (or the text) when it is not a JSON object with ``dim`` and ``heads``.
    """
    if isinstance(value, dict):
        kwargs, where = dict(value), "layer config"
    else:
        text = str(value).strip()
        where = "layer config" if text.startswith("{") else f"layer config {text}"
        try:
            kwargs = json.loads(text if text.startswith("{") else Path(text).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{where}: cannot read a JSON object ({err})") from err
    if not isinstance(kwargs, dict) or not {"dim", "heads"} <= kwargs.keys():
        raise ValueError(f"{where}: needs a JSON object with at least 'dim' and 'heads', got {kwargs!r}")
    return kwargs


def load_layer(checkpoint: str | Path, config: str | Path | dict[str, Any]) -> IntegralTransform:
    """An ``IntegralTransform`` built from ``config`` (see :func:`parse_layer_config`) with the weights of a
    ``.safetensors`` checkpoint.

    Every exact-kernel tensor must be present with the right shape. Feature-map tensors
    (``features.*``) are loaded when the config builds feature maps (``rank``) and the checkpoint
    holds them; a checkpoint without them leaves fresh ones, one without ``rank`` in the config
    ignores them. Raises ``ValueError`` naming the file or the tensor.
    """
    kwargs = parse_layer_config(config)
    try:
        layer = build_layer(kwargs)
    except ValueError as err:
        raise ValueError(f"layer config {kwargs}: {err}") from err
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"checkpoint {path}: not a readable safetensors file ({err})") from err
    own = layer.state_dict()
    kernel = {k for k in own if not k.startswith("features.")}
    saved_features = {k for k in state if k.startswith("features.")}
    missing = sorted(kernel - state.keys())
    unexpected = sorted(state.keys() - own.keys() - saved_features)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the layer config: missing tensors {missing}, "
                         f"unexpected tensors {unexpected}")
    wanted = set(kernel)
    if layer.features is not None and saved_features:
        want_features = {k for k in own if k.startswith("features.")}
        if saved_features != want_features:
            raise ValueError(f"checkpoint {path}: feature-map tensors {sorted(saved_features)} do not match the "
                             f"config's feature maps {sorted(want_features)}")
        wanted |= want_features
    for name in sorted(wanted):
        if state[name].shape != own[name].shape:
            raise ValueError(f"checkpoint {path}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                             f"the layer config needs {tuple(own[name].shape)}")
    layer.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return layer


HEADER = f"{'R':>5}  {'error before':>12}  {'error after':>11}  {'final loss':>10}  {'skipped':>7}  {'seconds':>7}"


def _row(r: dict[str, Any]) -> str:
    return (f"{r['rank']:>5}  {r['error_before']:>12.4f}  {r['error_after']:>11.4f}  {r['loss_final']:>10.4f}  "
            f"{r['skipped_steps']:>7d}  {r['seconds']:>7.1f}")


def _finite(obj: Any) -> Any:
    """NaN/inf become None: the JSON stays strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, fit each rank, print the table, write ``--json``; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=None, help="ranks R to fit (default 4 16 64)")
    ap.add_argument("--own-features", action="store_true",
                    help="fit the layer's own feature maps (its config's rank) instead of a sweep over --ranks")
    ap.add_argument("--checkpoint", type=Path, help="a layer's weights (.safetensors)")
    ap.add_argument("--layer-config", help="its config (dim, heads, layer keys): a JSON file or an inline JSON object")
    ap.add_argument("--dim", type=int, default=None, help="random layer: channels (default 32)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--mode", choices=("softmax", "linear"), default="softmax")
    ap.add_argument("--support", choices=("all", "causal"), default="causal")
    ap.add_argument("--decay", action=argparse.BooleanOptionalAction, default=True,
                    help="learned decay (causal support only; default on)")
    ap.add_argument("--kernel-width", type=int, default=None, help="kernel-MLP width r (default 16)")
    ap.add_argument("--feature-map", choices=("learned", "prf"), default=None,
                    help="kind of the fitted feature maps (default: the layer's own, else learned)")
    ap.add_argument("--seq", type=int, default=None, help="fitting and evaluation length (default 128)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="Adam steps per rank (default 300)")
    ap.add_argument("--lr", type=float, default=None, help="Adam's step (default 3e-3 softmax, 1e-3 linear)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-backend", choices=("reference", "auto", "torch"), default="reference",
                    help="backend of the held-out evaluation (default reference: every pair materialized)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: --ranks 2 32 --steps 60 --seq 48 (random layer: --dim 16 --kernel-width 8)")
    ap.add_argument("--save-dir", type=Path, help="write each fitted layer here (layer_R{R}.safetensors + .json)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    defaults = {"ranks": [4, 16, 64], "steps": 300, "seq": 128, "dim": 32, "kernel_width": 16}
    for name, value in (QUICK if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if any(r < 1 for r in args.ranks):
        ap.error(f"--ranks must be positive, got {args.ranks}")
    if args.steps < 0 or args.seq < 1 or args.batch < 1:
        ap.error("--steps must be >= 0, --seq and --batch >= 1")
    if (args.checkpoint is None) != (args.layer_config is None):
        ap.error("--checkpoint and --layer-config go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        if args.checkpoint is not None:
            config = parse_layer_config(args.layer_config)
            base = load_layer(args.checkpoint, config)
            source = str(args.checkpoint)
        else:
            config = {"dim": args.dim, "heads": args.heads, "mode": args.mode, "support": args.support,
                      "decay": args.decay and args.support == "causal", "kernel_width": args.kernel_width}
            if args.own_features:
                config.update(rank=args.ranks[0], feature_map=args.feature_map or "learned")
            base = build_layer(config)
            source = "random layer"
        if args.own_features and base.features is None:
            raise ValueError("--own-features: the layer has no feature maps (give 'rank' in --layer-config)")
    except ValueError as err:
        raise SystemExit(f"distill_kernel: {err}") from err
    print(f"{source}: {base.extra_repr()}")
    print(f"fitting {'its own' if args.own_features else (args.feature_map or 'learned')} feature maps, "
          f"{args.steps} steps × {args.batch} sequences of {args.seq}; held-out ‖y_lowrank − y_exact‖/‖y_exact‖:")
    print(HEADER)
    out = distill(base, None if args.own_features else args.ranks, feature_map=args.feature_map, steps=args.steps,
                  seq=args.seq, batch=args.batch, lr=args.lr, seed=args.seed, save_dir=args.save_dir,
                  config=config, eval_backend=args.eval_backend,
                  progress=lambda r: print(_row(r), flush=True))
    out = _finite({"source": source, "config": config, **out})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    return out


if __name__ == "__main__":
    main()
