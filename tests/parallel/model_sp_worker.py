"""Worker for tests/parallel/test_model_sequence_parallel.py: ``sequence_parallel_size=2`` on 2 or 4 ranks.

Every rank builds the same models (fp32); data-parallel group ``g`` (``W/2`` of them) takes batch ``g``. The
reference is the plain model in this process (what 1 rank computes): outputs and losses of this group's batch,
and the mean gradient over every group's batch (what data parallelism gives). The other copy runs
sequence-parallel. Printed lines ``rank R: ... matches`` are what the test looks for; a mismatch raises.
"""

from __future__ import annotations

import argparse
import copy
import os
from dataclasses import replace

os.environ.setdefault("ITNET_COMPILE", "0")  # tiny sequences: compiling the tiles would cost seconds per shape

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

from itnet_scale.models import LayerConfig, create_model, load_model_config
from itnet_scale.nn import IntegralTransform, ITNetBackbone
from itnet_scale.nn.heads import mask_tokens
from itnet_scale.parallel import (
    SequenceParallel,
    SequenceParallelBackbone,
    apply_sequence_parallel,
    init_distributed,
    remove_sequence_parallel,
    sequence_parallel_deepspeed_config,
)

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
LR = 0.5


def text_ids(generator: torch.Generator, B: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(7, 3000, (B, L), generator=generator)
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=3000, special_ids=range(7), generator=generator)
    labels[:, 0], inputs[:, 0] = ids[:, 0], 4  # at least one masked token per row
    return inputs, labels


def batches(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Data-parallel group ``seed``'s batches: text of odd length (37, with padding in one row: 38 after the
    sequence-parallel padding), image–text (64 patches + 13 tokens = 77: MLM and contrastive; 6 pairs, since the
    contrastive head standardizes over the batch and 2 rows would make that ill-conditioned), points (32 tokens,
    masked point modeling)."""
    generator = torch.Generator().manual_seed(seed)
    ids, labels = text_ids(generator, 2, 37)
    ids[1, 30:], labels[1, 30:] = 0, -100  # padding
    pair_ids, pair_labels = text_ids(generator, 6, 13)
    return {
        "text_mlm": {"text_ids": ids, "mlm_labels": labels},
        "image_text": {"images": torch.randn(6, 1, 32, 32, generator=generator), "text_ids": pair_ids,
                       "mlm_labels": pair_labels},
        "points_mpp": {"points": torch.randn(2, 100, 3, generator=generator),
                       "point_mask": torch.rand(2, 32, generator=generator) < 0.5},
    }


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    tiny = create_model("tiny")
    causal = replace(load_model_config("tiny"), layers={"2-3": {"decay": False, "mode": "linear"}},
                     layer=LayerConfig(kernel_width=8, support="causal", decay=True, integrator="lowrank", rank=8))
    torch.manual_seed(1)
    return {"tiny": tiny, "lowrank_causal": create_model(causal)}


def run(model: torch.nn.Module, batch: dict[str, torch.Tensor], scale: float = 1.0):
    """``(hidden [B, N, dim], losses, parameter gradients of scale · Σ losses)``; unused parameters get 0."""
    model.zero_grad(set_to_none=True)
    hidden = model.itnet(batch).hidden
    losses = model(batch)
    (scale * sum(losses.values())).backward()
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    return hidden, losses, grads


def data_parallel_gradients(model: torch.nn.Module, case: str, sp: SequenceParallel) -> dict[str, torch.Tensor]:
    """The true gradient: the mean over the data-parallel groups' batches of each one's loss gradient."""
    per_group = [run(model, batches(group)[case])[2] for group in range(sp.data_parallel_size)]
    return {name: sum(grads[name] for grads in per_group) / sp.data_parallel_size for name in per_group[0]}


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda m: f"{what}\n{m}")


def check_model(name: str, case: str, reference: torch.nn.Module, sp: SequenceParallel) -> None:
    """Outputs and losses of this group's batch, and gradients (``loss_scale`` · loss per rank, summed over
    the world and divided by the data-parallel size, as DeepSpeed does), of the sequence-parallel copy against
    the plain model."""
    batch = batches(sp.data_parallel_rank)[case]
    parallel = apply_sequence_parallel(copy.deepcopy(reference), sp)
    assert list(parallel.state_dict()) == list(reference.state_dict()), f"{name}: state_dict keys changed"
    assert [n for n, _ in parallel.named_parameters()] == [n for n, _ in reference.named_parameters()]
    hidden, losses, _ = run(reference, batch)
    grads = data_parallel_gradients(reference, case, sp)
    sp_hidden, sp_losses, sp_grads = run(parallel, batch, sp.loss_scale)
    close(sp_hidden, hidden, f"{name}/{case}: hidden states differ")
    assert set(sp_losses) == set(losses), (case, sorted(losses), sorted(sp_losses))
    for objective in losses:
        close(sp_losses[objective], losses[objective], f"{name}/{case}: loss {objective} differs")
    for key, grad in sp_grads.items():
        dist.all_reduce(grad)
        close(grad / sp.data_parallel_size, grads[key], f"{name}/{case}: gradient of {key} differs")
    backbones = [m for m in parallel.modules() if isinstance(m, ITNetBackbone)]
    assert all(isinstance(b, SequenceParallelBackbone) for b in backbones), f"{name}: not sequence-parallel"
    remove_sequence_parallel(parallel)  # back to whole sequences, on this rank alone
    assert all(type(b) is ITNetBackbone and all(type(k.mixer) is IntegralTransform for k in b.blocks)
               for b in backbones), f"{name}: classes not restored"
    close(run(parallel, batch)[0], hidden, f"{name}/{case}: hidden states differ after remove_sequence_parallel")
    print(f"rank {dist.get_rank()}: {name}/{case} matches", flush=True)


def check_engine(stage: int, reference: torch.nn.Module, case: str, sp: SequenceParallel) -> None:
    """One SGD step through a DeepSpeed engine (mpu = ``sp.mpu``, gradient clipping active) at ZeRO ``stage``:
    the reduced gradients, their norm and the weights after the step match the plain model's step on the
    mean gradient of the data-parallel groups' batches."""
    grads = data_parallel_gradients(reference, case, sp)
    # in float64: torch's float32 CPU norm of the 576k-entry embedding gradient is off by ~5e-6 relative
    norm = torch.stack([g.double().square().sum() for g in grads.values()]).sum().sqrt().float()
    clip = 0.5 * norm.item()
    expected = {name: p.detach() - LR * min(1.0, clip / (norm.item() + 1e-6)) * grads[name]
                for name, p in reference.named_parameters()}
    model = apply_sequence_parallel(copy.deepcopy(reference), sp)
    model.zero_grad(set_to_none=True)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": clip,
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, mpu=sp.mpu,
                                      config=sequence_parallel_deepspeed_config(config, sp))
    assert engine.train_batch_size() == 2 * sp.data_parallel_size, engine.train_batch_size()
    losses = engine(batches(sp.data_parallel_rank)[case])
    engine.backward(sum(losses.values()) * sp.loss_scale)
    for name, p in engine.module.named_parameters():
        close(safe_get_full_grad(p), grads[name], f"ZeRO {stage}: reduced gradient of {name} differs")
    engine.step()
    if engine.get_global_grad_norm() is not None:  # ZeRO 0 in fp32 does not keep it (the clipped step shows it)
        close(torch.as_tensor(engine.get_global_grad_norm()).float(), norm, f"ZeRO {stage}: grad norm differs")
    for name, p in engine.module.named_parameters():
        weight = safe_get_full_fp32_param(p)  # None without ZeRO: the module's own parameter is the weight
        close(p.detach() if weight is None else weight, expected[name], f"ZeRO {stage}: weight {name} differs")
    print(f"rank {dist.get_rank()}: zero{stage} step matches", flush=True)


def check_refusals(world: int) -> None:
    for size in (0, -1, world + 1):
        try:
            SequenceParallel.setup(size)
        except ValueError as error:
            print(f"rank {dist.get_rank()}: refused: {error}", flush=True)
    single = SequenceParallel.setup(1)
    assert (single.mpu, single.group, single.size, single.loss_scale) == (None, None, 1, 1.0)
    assert (single.data_parallel_rank, single.data_parallel_size) == (dist.get_rank(), world)


def check_groups(sp: SequenceParallel, world: int) -> None:
    """DeepSpeed's layout (consecutive ranks per sequence-parallel group) and the data-parallel groups."""
    rank = dist.get_rank()
    assert (sp.size, sp.rank, sp.data_parallel_rank, sp.data_parallel_size) == (2, rank % 2, rank // 2, world // 2)
    assert sp.loss_scale == 0.5
    assert sp.mpu.get_sequence_data_parallel_world_size() == world
    members = [torch.zeros(1, dtype=torch.long) for _ in range(sp.data_parallel_size)]
    dist.all_gather(members, torch.tensor([rank]), group=sp.data_parallel_group)
    assert [int(m) for m in members] == list(range(sp.rank, world, 2)), members
    assert SequenceParallel.setup(2).group is sp.group  # a second call reuses DeepSpeed's groups
    for key in ("reduce_scatter", "contiguous_gradients"):
        try:
            sequence_parallel_deepspeed_config({"zero_optimization": {"stage": 3, key: key == "reduce_scatter"}}, sp)
        except ValueError as error:
            print(f"rank {rank}: refused: {error}", flush=True)
    print(f"rank {rank}: groups match", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--cases", default="tiny/text_mlm,tiny/image_text,tiny/points_mpp,lowrank_causal/text_mlm")
    parser.add_argument("--stages", default="0,1,2,3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    init_distributed("gloo")
    world = dist.get_world_size()
    check_refusals(world)
    sp = SequenceParallel.setup(2)
    check_groups(sp, world)
    built = models()
    for name, case in (item.split("/") for item in args.cases.split(",") if item):
        check_model(name, case, built[name], sp)
    for stage in map(int, filter(None, args.stages.split(","))):
        check_engine(stage, built["tiny"], "image_text", sp)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
