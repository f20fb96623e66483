"""Worker for tests/train/test_evaluation.py, run on 2 ranks by DeepSpeed's launcher: ``DATA OUT``.

1. The held-out evaluation of a freshly initialized model (seed 0) on 2 ranks → ``OUT/metrics.json``.
2. The same 4-step pretraining run twice, once evaluating at the start and every 2 steps, once never: the
   weights and losses of both → ``OUT/with_eval.pt`` / ``OUT/without_eval.pt`` (rank 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from itnet_scale.parallel import init_distributed
from itnet_scale.train.pretraining import Pretrainer
from tests.pretrain_fixtures import config_for, evaluator_for


def main(data: Path, out: Path) -> None:
    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    evaluator, model = evaluator_for(config_for(data, out), rank, world)
    metrics = evaluator.evaluate(model)
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics))
    for name, settings in (("with_eval", {"eval.every": 2, "eval.at_start": True}),
                           ("without_eval", {"eval.every": 0, "eval.at_start": False, "eval.at_end": False})):
        config = config_for(data, out / name, **{"checkpoint.save_every": 100}, **settings)
        trainer = Pretrainer(config)
        result = trainer.run()
        if rank == 0:
            weights = {k: v.detach().clone() for k, v in trainer.engine.module.named_parameters()}
            torch.save({"weights": weights, "losses": [r.losses for r in result.records],
                        "evaluations": result.evaluations}, out / f"{name}.pt")


if __name__ == "__main__":
    data, out = (Path(arg) for arg in sys.argv[1:] if not arg.startswith("--local_rank"))
    main(data, out)
