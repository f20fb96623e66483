"""Worker for tests/launch/test_pretrain.py, run on 2 ranks by DeepSpeed's launcher.

``stages DATA OUT``: the same 20-step run at ZeRO 0, 1, 2 and 3 in one process group; writes each stage's loss
curve to ``OUT/losses.json``.
``nan DATA OUT``: rank 1's loss turns NaN at step 4 (save_every=4); writes what every rank saw to
``OUT/nan-rank{r}.json``.
``checkpointing DATA OUT``: 3 steps at ZeRO-3 with dropout and drop path, without and with activation checkpointing
of every block; writes both loss curves to ``OUT/checkpointing.json``.
``bf16 DATA OUT``: one step with ``deepspeed.precision=bf16`` and activation checkpointing of every block; writes
the dtypes of the weights and of what the optimizer steps, the step's record and whether the weights moved to
``OUT/bf16-rank{r}.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from itnet_scale.train import pretraining
from itnet_scale.train.config import load_pretrain_config
from tests.pretrain_fixtures import DEMO_CONFIG, fast_overrides


def stages(data: Path, out: Path) -> None:
    curves, evaluations, aliased = {}, {}, 0
    for stage in (0, 1, 2, 3):
        config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
            data, out / f"zero{stage}", 20, **{"deepspeed.zero_stage": stage, "checkpoint.save_every": 100,
                                               "eval.at_end": True, "eval.batch_size": 8, "eval.max_batches": 2,
                                               "eval.calibration_batches": 2}))
        trainer = pretraining.Pretrainer(config)
        result = trainer.run()
        curves[stage] = [record.losses for record in result.records]
        evaluations[stage] = result.evaluations
        if stage == 3:  # fp32 ZeRO-3 keeps no second master copy (train.engine.share_fp32_master_weights)
            optimizer = trainer.engine.optimizer
            aliased = sum(a is b for a, b in zip(optimizer.fp16_partitioned_groups_flat,
                                                 optimizer.fp32_partitioned_groups_flat))
    if torch.distributed.get_rank() == 0:
        (out / "losses.json").write_text(json.dumps({"curves": curves, "evaluations": evaluations,
                                                        "zero3_aliased_groups": aliased}))


def nan(data: Path, out: Path) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
    original = pretraining.micro_step_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        total, losses = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4 and torch.distributed.get_rank() == 1:
            total = total + float("nan")
        return total, losses

    pretraining.micro_step_losses = poisoned
    config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
        data, out / "run", 6, **{"deepspeed.zero_stage": 2, "checkpoint.save_every": 4, "checkpoint.keep_last": 0}))
    trainer = pretraining.Pretrainer(config)
    result = trainer.run()
    rank = torch.distributed.get_rank()
    finite = all(bool(torch.isfinite(p).all()) for p in trainer.engine.module.parameters())
    (out / f"nan-rank{rank}.json").write_text(json.dumps({
        "applied": [r.applied for r in result.records], "reasons": [r.skip_reason for r in result.records],
        "skipped": dict(trainer.guard.skipped), "finite": finite}))


def checkpointing(data: Path, out: Path) -> None:
    curves = {}
    for every in (0, 1):
        config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
            data, out / f"every{every}", 3, **{"deepspeed.zero_stage": 3, "activation_checkpointing.every": every,
                                               "model_overrides.dropout": 0.1, "model_overrides.drop_path": 0.2,
                                               "checkpoint.save_every": 100}))
        trainer = pretraining.Pretrainer(config)
        curves[every] = [record.losses for record in trainer.run().records]
    if torch.distributed.get_rank() == 0:
        (out / "checkpointing.json").write_text(json.dumps(curves))


def bf16(data: Path, out: Path) -> None:
    from deepspeed.utils import safe_get_full_fp32_param

    config = load_pretrain_config(DEMO_CONFIG, fast_overrides(
        data, out / "run", 1, **{"deepspeed.precision": "bf16", "activation_checkpointing.every": 1,
                                 "checkpoint.save_every": 100}))
    trainer = pretraining.Pretrainer(config)
    parameters = list(trainer.engine.module.parameters())
    masters_before = [safe_get_full_fp32_param(p).clone() for p in parameters]
    result = trainer.run()
    masters = [safe_get_full_fp32_param(p) for p in parameters]
    rank = torch.distributed.get_rank()
    (out / f"bf16-rank{rank}.json").write_text(json.dumps({
        "bf16_enabled": trainer.engine.bfloat16_enabled(),
        "weight_dtypes": sorted({str(p.dtype) for p in parameters}),
        "master_dtypes": sorted({str(m.dtype) for m in masters}),
        "stepped_dtypes": sorted({str(p.dtype) for group in trainer.optimizer.param_groups for p in group["params"]}),
        "moment_dtypes": sorted({str(v.dtype) for state in trainer.optimizer.state.values() for k, v in state.items()
                                 if k.startswith("exp_avg")}),
        "checkpointed_blocks": trainer.engine.module.itnet.backbone.checkpointed_blocks(),
        "applied": [r.applied for r in result.records], "losses": [r.losses for r in result.records],
        "masters_changed": sum(not torch.equal(a, b) for a, b in zip(masters_before, masters)),
        "weights_are_rounded_masters": all(torch.equal(p.detach(), m.to(p.dtype)) for p, m in zip(parameters, masters)),
        "parameters": len(parameters)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stages", "nan", "bf16", "checkpointing"])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    {"stages": stages, "nan": nan, "bf16": bf16, "checkpointing": checkpointing}[args.mode](args.data, args.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
