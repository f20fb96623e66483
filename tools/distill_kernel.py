"""Fit a layer's low-rank feature maps to its exact kernel and report the error against the rank R.

The layer comes from a checkpoint (``--checkpoint layer.safetensors`` with ``--layer-config`` a
JSON file of its constructor arguments) or is built at random from the options. For each
``R`` in ``--ranks`` the layer gets fresh feature maps of that rank, which are fitted
(:func:`itnet_scale.nn.distill.fit_feature_maps`: KL between kernel rows in softmax mode,
relative squared error in linear mode; the exact parameters frozen) and evaluated by the
held-out relative output error ``‖y_lowrank − y_exact‖ / ‖y_exact‖`` before and after fitting.
``--save-dir`` writes each fitted layer as ``layer_R{R}.safetensors``.

Usage::

    python tools/distill_kernel.py [--ranks 4 16 64] [--steps 300] [--mode softmax] [--json out.json]
    python tools/distill_kernel.py --checkpoint layer.safetensors --layer-config layer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itnet_scale.nn import IntegralTransform
from itnet_scale.nn.distill import fit_feature_maps, with_rank


def load_layer(checkpoint: Path, config_path: Path) -> IntegralTransform:
    """An ``IntegralTransform`` built from a JSON of constructor arguments, weights from safetensors.

    Feature-map tensors in the checkpoint are ignored (each rank gets fresh ones); every other
    tensor must be present with the right shape, or the error names it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        kwargs = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--layer-config {config_path}: cannot read a JSON object ({err})") from err
    if not isinstance(kwargs, dict) or not {"dim", "heads"} <= kwargs.keys():
        raise SystemExit(f"--layer-config {config_path}: needs a JSON object with at least 'dim' and 'heads'")
    try:
        layer = IntegralTransform(**kwargs)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--layer-config {config_path}: {err}") from err
    try:
        state = load_file(str(checkpoint))
    except (OSError, SafetensorError) as err:
        raise SystemExit(f"--checkpoint {checkpoint}: not a readable safetensors file ({err})") from err
    state = {k: v for k, v in state.items() if not k.startswith("features.")}
    own = {k: v for k, v in layer.state_dict().items() if not k.startswith("features.")}
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise SystemExit(f"--checkpoint {checkpoint} does not match --layer-config: missing {missing}, "
                         f"unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise SystemExit(f"--checkpoint {checkpoint}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"the config needs {tuple(own[name].shape)}")
    layer.load_state_dict(state, strict=False)
    return layer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, fit each rank, print the table, write ``--json``; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64], help="ranks R to fit (default 4 16 64)")
    ap.add_argument("--checkpoint", type=Path, help="a layer's weights (.safetensors)")
    ap.add_argument("--layer-config", type=Path, help="JSON constructor arguments of the checkpoint's layer")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--mode", choices=("softmax", "linear"), default="softmax")
    ap.add_argument("--support", choices=("all", "causal"), default="causal")
    ap.add_argument("--decay", action=argparse.BooleanOptionalAction, default=True,
                    help="learned decay (causal support only; default on)")
    ap.add_argument("--kernel-width", type=int, default=16)
    ap.add_argument("--feature-map", choices=("learned", "prf"), default="learned")
    ap.add_argument("--seq", type=int, default=128, help="fitting length (default 128)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="--ranks 2 16 --steps 60 --seq 48 (a smoke run)")
    ap.add_argument("--save-dir", type=Path, help="write each fitted layer here as layer_R{R}.safetensors")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.ranks, args.steps, args.seq = [2, 16], 60, 48
    if any(r < 1 for r in args.ranks):
        ap.error(f"--ranks must be positive, got {args.ranks}")
    if (args.checkpoint is None) != (args.layer_config is None):
        ap.error("--checkpoint and --layer-config go together")
    torch.manual_seed(args.seed)
    if args.checkpoint is not None:
        base = load_layer(args.checkpoint, args.layer_config)
        source = str(args.checkpoint)
    else:
        decay = args.decay and args.support == "causal"
        base = IntegralTransform(args.dim, args.heads, mode=args.mode, support=args.support, decay=decay,
                                 kernel_width=args.kernel_width)
        source = "random layer"
    results = []
    print(f"{source}: {base.extra_repr()}")
    print(f"{'R':>5}  {'error before':>12}  {'error after':>11}  {'final loss':>10}  {'seconds':>7}")
    for rank in args.ranks:
        layer = with_rank(base, rank, args.feature_map)
        start = time.perf_counter()
        r = fit_feature_maps(layer, steps=args.steps, seq=args.seq, batch=args.batch, lr=args.lr, seed=args.seed)
        seconds = time.perf_counter() - start
        final = r.losses[-1] if r.losses else float("nan")
        print(f"{rank:>5}  {r.error_before:>12.4f}  {r.error_after:>11.4f}  {final:>10.4f}  {seconds:>7.1f}")
        results.append({"rank": rank, "error_before": r.error_before, "error_after": r.error_after,
                        "final_loss": final, "seconds": seconds})
        if args.save_dir is not None:
            from safetensors.torch import save_file

            args.save_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in layer.state_dict().items()},
                      str(args.save_dir / f"layer_R{rank}.safetensors"))
    out = {"source": source, "layer": base.extra_repr(), "feature_map": args.feature_map, "steps": args.steps,
           "seq": args.seq, "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
