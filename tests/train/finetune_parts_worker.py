"""Worker for tests/train/test_ema.py, run on 2 ranks by DeepSpeed's launcher: ``OUT``.

The tiny classifier under ZeRO-3 with layer-wise learning-rate decay (0.6, head × 4) trains 3 steps with a weights'
EMA (decay 0.8, warm-up), then checks, on every rank:

1. the learning rate DeepSpeed reports for every group is base × schedule × the group's scale, and the first Adam
   step moved a weight of each checked layer by its group's rate;
2. the EMA of the partitions equals the EMA of the whole weights (gathered after each step), exactly;
3. inside the swap the gathered weights are the averages; after it every partition, every persistent parameter and
   the model's output are bit for bit as before;
4. the EMA file written from the partitions reads back into them exactly;
5. a DeepSpeed checkpoint of the run resumes the groups' rates and scales and the weights in another engine;
6. the averaged model evaluated on 7 examples, batches of 3, split by :class:`EvalPartition`: 2 forwards per rank,
   every example counted once, gathered in order.

Rank 0 writes what the test compares on one process to ``OUT/result.pt`` and the EMA file to ``OUT/step000000003``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from itnet_scale.checkpoint.deepspeed_checkpoint import load_checkpoint, save_checkpoint
from itnet_scale.data.eval_partition import EvalPartition
from itnet_scale.models.registry import create_model
from itnet_scale.parallel import init_distributed
from itnet_scale.tasks.metrics import accuracy
from itnet_scale.train.command_line import exit_process, leave_process_group
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.ema import EMASettings, WeightEMA
from itnet_scale.train.engine import build_engine
from itnet_scale.train.optimizer import OptimizerSettings, lr_factor
from itnet_scale.train.param_groups import parameter_layers

#: The evaluation's examples and batch size (odd: rank 0 gets 4 slots, rank 1 gets 3 and a padding slot).
EVAL_EXAMPLES, EVAL_BATCH = 7, 3
CLASSES = 10
LR, WARMUP, TOTAL_STEPS = 1e-3, 2, 10


def evaluation_batch(indices: list[int]) -> dict[str, torch.Tensor]:
    """Example ``i``: a 16 × 16 one-channel image drawn from seed ``1000 + i``, label ``i % CLASSES``."""
    images = [torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1000 + i)) for i in indices]
    return {"images": torch.stack(images), "labels": torch.tensor([i % CLASSES for i in indices])}


def main(out: Path) -> None:
    import deepspeed  # here, not at the top: the test imports this module's examples without DeepSpeed's import

    init_distributed("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = create_model("tiny", task="classification", classes=CLASSES)
    layers, depth = parameter_layers(model)
    settings = OptimizerSettings(lr=LR, warmup_steps=WARMUP, layer_decay=0.6, head_lr_multiplier=4.0)
    engine, _ = build_engine(model, DeepSpeedSettings(zero_stage=3, micro_batch_size=4), settings,
                                     TOTAL_STEPS, model_width=model.itnet.config.dim)
    module = engine.module
    parameters = dict(module.named_parameters())
    persistent = [name for name, p in parameters.items() if p.ds_persist]
    assert persistent and len(persistent) < len(parameters), "the test needs both kinds of ZeRO-3 parameters"

    def whole_weights() -> dict[str, torch.Tensor]:
        with deepspeed.zero.GatheredParameters(list(parameters.values())):
            return {name: p.detach().clone() for name, p in parameters.items()}

    def scale_of(name: str) -> float:
        layer = layers[name]
        return 0.6 ** (depth + 1 - layer.layer) * (4.0 if layer.head else 1.0)

    scales = [group["lr_scale"] for group in engine.optimizer.param_groups]
    assert len(scales) == 13, scales
    ema = WeightEMA(module, EMASettings(decay=0.8, warmup=True))
    reference = {name: w.float() for name, w in whole_weights().items()}
    for step in range(3):
        expected = [LR * lr_factor(step, WARMUP, TOTAL_STEPS, 0.1) * scale for scale in scales]
        assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(engine.get_lr(), expected)), engine.get_lr()
        generator = torch.Generator().manual_seed(100 * rank + step)
        images, labels = torch.randn(4, 1, 16, 16, generator=generator), torch.randint(0, CLASSES, (4,),
                                                                                       generator=generator)
        before = whole_weights()
        engine.backward(F.cross_entropy(engine({"images": images}), labels))
        engine.step()
        weights = whole_weights()
        if step == 0:  # Adam's first step: lr · sign(gradient) after the decoupled weight decay
            for name in ("head.fc.weight", "itnet.backbone.blocks.1.mlp.fc1.weight",
                         "itnet.encoder.image.stem.weight", "itnet.backbone.blocks.3.norm2.bias"):
                lr = LR * lr_factor(0, WARMUP, TOTAL_STEPS, 0.1) * scale_of(name)
                decay = settings.weight_decay if weights[name].ndim >= 2 else 0.0
                moved = float((weights[name] - before[name] * (1 - lr * decay)).abs().max())
                assert math.isclose(moved, lr, rel_tol=1e-2), (name, moved, lr)
        decay = ema.update()
        for name, average in reference.items():
            average.lerp_(weights[name].float(), 1.0 - decay)
    state = ema.state_dict()
    assert state["updates"] == 3 and state["weights"].keys() == reference.keys()
    for name, average in reference.items():
        assert torch.equal(state["weights"][name], average), name

    module.eval()
    probe = evaluation_batch([0, 1, 2, 3])
    with torch.no_grad():
        trained = module(probe)  # gathers the persistent parameters it reads, which stay gathered
        held = {name: p.ds_tensor.detach().clone() for name, p in parameters.items()}
        whole = {name: parameters[name].detach().clone() for name in persistent if parameters[name].numel()}
        assert whole, "no persistent parameter is gathered"
        with ema.swapped_in():
            inside = whole_weights()
            for name, average in reference.items():
                assert torch.equal(inside[name], average), name
            partition = EvalPartition(EVAL_EXAMPLES, world_size=2, batch_size=EVAL_BATCH)
            indices, padding = partition.rank_indices(rank), partition.rank_padding(rank)
            outputs = [module(evaluation_batch(indices[k:k + EVAL_BATCH]))
                       for k in range(0, partition.per_rank, EVAL_BATCH)]
            logits = partition.gather(torch.cat(outputs))
            evaluated = partition.gather(torch.where(padding, -1, torch.tensor(indices)))
            counted = torch.tensor([float((~padding).sum())])
            dist.all_reduce(counted)
            forwards = partition.gather(torch.full((partition.per_rank,), len(outputs)))  # per slot: its rank's
        after = module(probe)
    assert torch.equal(after, trained)
    for name, parameter in parameters.items():
        assert torch.equal(parameter.ds_tensor, held[name]), name
    for name, weight in whole.items():
        assert torch.equal(parameters[name].detach(), weight), name
    assert evaluated.tolist() == list(range(EVAL_EXAMPLES)) and int(counted) == EVAL_EXAMPLES

    tag = out / "step000000003"
    ema.save(tag)
    resumed = WeightEMA(module, EMASettings(decay=0.8, warmup=True))
    resumed.load(tag)
    assert resumed.updates == 3
    for name, average in ema.averages.items():
        assert torch.equal(resumed.averages[name], average), name
    # a DeepSpeed checkpoint of the layer-decay groups resumes them: rates, scales and weights
    module.train()
    save_checkpoint(engine, out / "checkpoints", 3, {"step": 3})
    torch.manual_seed(1)  # other initial weights: the checkpoint must bring the trained ones
    other, _ = build_engine(create_model("tiny", task="classification", classes=CLASSES),
                            DeepSpeedSettings(zero_stage=3, micro_batch_size=4), settings, TOTAL_STEPS,
                            model_width=model.itnet.config.dim)
    load_checkpoint(other, out / "checkpoints")
    assert other.get_lr() == engine.get_lr() and other.lr_scheduler.last_epoch == 3
    assert [g["lr_scale"] for g in other.optimizer.param_groups] == scales
    with deepspeed.zero.GatheredParameters(list(other.module.parameters())):
        resumed_weights = {name: p.detach().clone() for name, p in other.module.named_parameters()}
    assert all(torch.equal(resumed_weights[name], w) for name, w in whole_weights().items())
    if rank == 0:
        labels = evaluation_batch(list(range(EVAL_EXAMPLES)))["labels"].numpy()
        torch.save({"reference": reference, "logits": logits, "evaluated": evaluated.tolist(),
                    "forwards": [int(forwards[0]), int(forwards[1])],
                    "accuracy": accuracy(logits.numpy(), labels)}, out / "result.pt")
    print(f"rank {rank}: ZeRO-3 EMA, layer decay and exactly-once evaluation checked", flush=True)
    leave_process_group()
    exit_process(0)


if __name__ == "__main__":
    main(Path(next(arg for arg in sys.argv[1:] if not arg.startswith("--local_rank"))))
