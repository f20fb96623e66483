"""Worker for tests/tools/test_convert_checkpoint.py, run on 2 ranks by DeepSpeed's launcher.

``run DATA OUT``, in one process group:

1. ZeRO 0, 1, 2 and 3: a 2-step run each (the demo config, fast overrides), saved as ``OUT/zero{s}/checkpoints``;
   every rank then runs the engine's own model (ZeRO-3 gathering its partitions) on the verification batches, and
   rank 0 writes the outputs to ``OUT/zero{s}/engine_outputs.safetensors``.
2. Rank 0 converts the ZeRO-3 checkpoint to a library folder (``OUT/library``, the converter's API) and saves a
   different backbone with ``ITNetModel.save_pretrained`` (``OUT/backbone``).
3. A run with ``init_from=OUT/library`` (ZeRO 3) and one with ``init_from=OUT/backbone`` (ZeRO 1), one step each:
   before the first step every rank compares the engine's weights (gathered) with the library's and with a fresh
   initialization, and the first micro-step's loss is recomputed with the model read from the library folder
   (same batch, same contrastive all-gather). Rank 0 writes ``OUT/init.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from itnet_scale.checkpoint.conversion import convert_to_library
from itnet_scale.checkpoint.library import read_library_config
from itnet_scale.checkpoint.verification import model_outputs, verification_batches
from itnet_scale.models import ITNetForPretraining, ITNetModel
from itnet_scale.train import pretraining
from itnet_scale.train.config import load_pretrain_config
from itnet_scale.train.objectives import micro_step_losses
from tests.pretrain_fixtures import DEMO_CONFIG, fast_overrides


def gathered_state(engine) -> dict[str, torch.Tensor]:
    """The engine's full weights on every rank (ZeRO-3 partitions gathered), by ``state_dict`` name."""
    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                           enabled=engine.zero_optimization_stage() == 3):
        return {name: tensor.detach().clone() for name, tensor in module.state_dict(keep_vars=True).items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names) -> float:
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in names)


def train_stages(data: Path, out: Path) -> None:
    for stage in (0, 1, 2, 3):
        config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
            data, out / f"zero{stage}", 2, **{"deepspeed.zero_stage": stage, "checkpoint.save_every": 100}))
        trainer = pretraining.Pretrainer(config)
        trainer.run()
        outputs = model_outputs(trainer.engine.module, verification_batches(trainer.model_config))
        if dist.get_rank() == 0:
            save_file({k: v.contiguous() for k, v in outputs.items()},
                      out / f"zero{stage}" / "engine_outputs.safetensors")
        dist.barrier()


def init_runs(data: Path, out: Path) -> None:
    results = {}
    for name, library, stage in (("converted", out / "library", 3), ("backbone", out / "backbone", 1)):
        config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
            data, out / f"init-{name}", 1, **{"deepspeed.zero_stage": stage, "init_from": library}))
        trainer = pretraining.Pretrainer(config)
        weights = gathered_state(trainer.engine)
        reference = ITNetForPretraining.from_pretrained(library) if name == "converted" else None
        torch.manual_seed(config.seed)
        fresh = ITNetForPretraining(trainer.model_config).state_dict()  # the run's own initialization
        if name == "converted":
            expected = reference.state_dict()
        else:
            backbone = ITNetModel.from_pretrained(library).state_dict()
            expected = {**fresh, **{f"itnet.{k}": v for k, v in backbone.items()}}
        backbone_names = [n for n in weights if n.startswith("itnet.")]
        head_names = [n for n in weights if not n.startswith("itnet.") and n != "mlm.decoder.weight"]
        record = {"backbone_diff": max_diff(weights, expected, backbone_names),
                  "head_diff": max_diff(weights, expected, head_names),
                  "head_diff_to_fresh": max_diff(weights, fresh, head_names),
                  "backbone_diff_to_fresh": max_diff(weights, fresh, backbone_names)}
        if reference is not None:
            seen = {}
            original = pretraining.micro_step_losses

            def recorded(model, parts, settings, gather=None, _seen=seen, _original=original, _ref=reference):
                if "library_total" not in _seen:
                    with torch.no_grad():
                        _seen["library_total"] = float(micro_step_losses(_ref, parts, settings, gather)[0])
                total, losses = _original(model, parts, settings, gather)
                _seen.setdefault("engine_total", float(total.detach()))
                return total, losses

            pretraining.micro_step_losses = recorded
            try:
                result = trainer.run()
            finally:
                pretraining.micro_step_losses = original
            record.update(seen, steps=len(result.records))
        else:
            record["steps"] = len(trainer.run().records)
        results[name] = record
    if dist.get_rank() == 0:
        (out / "init.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run"])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    train_stages(args.data, args.out)
    if dist.get_rank() == 0:
        convert_to_library(args.out / "zero3" / "checkpoints", args.out / "library")
        model_config = read_library_config(args.out / "library").model
        torch.manual_seed(1234)
        ITNetModel(model_config).save_pretrained(args.out / "backbone")
    dist.barrier()
    init_runs(args.data, args.out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
