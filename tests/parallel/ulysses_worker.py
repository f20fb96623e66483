"""Worker for tests/parallel/test_ulysses.py (2 or 4 ranks): the sequence-parallel layer vs the whole layer."""

from __future__ import annotations

import argparse

import deepspeed
import deepspeed.comm
import torch
import torch.distributed as dist

from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.ops import Exact, LowRank, MonteCarlo
from itnet_scale.parallel import init_distributed, parallelize_transform, shard_sequence

CASES = {
    "exact_causal_decay": (KernelConfig(width=8, support="causal", decay=True, offset_range=3), Exact()),
    "exact_window_linear": (KernelConfig(width=8, support="window", support_size=5.0, mode="linear"), Exact()),
    "exact_all_padding": (KernelConfig(width=8, depth=2), Exact()),
    "exact_per_head_weights": (KernelConfig(width=0), Exact()),
    "lowrank_causal_decay": (KernelConfig(width=8, support="causal", decay=True, rank=8), LowRank()),
    "lowrank_causal_linear": (KernelConfig(width=0, support="causal", rank=8, mode="linear"), LowRank()),
}


def check(name: str, options: tuple[KernelConfig, Exact | LowRank], group: dist.ProcessGroup) -> None:
    torch.manual_seed(0)
    B, N, dim, H = 2, 24, 16, 4
    layer = IntegralTransform(dim, H, *options).double()
    x = torch.randn(B, N, dim, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(N, dtype=torch.float64)[None, :, None].expand(B, N, 1).contiguous()
    weights = padding = None
    if name == "exact_all_padding":
        padding = torch.zeros(B, N, dtype=torch.bool)
        padding[1, -5:] = True
    if name == "exact_per_head_weights":
        weights = torch.rand(B, N, H, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(B, N, dim, dtype=torch.float64)
    # the whole sequence on one rank: the reference
    expected = layer(x, pos, weights=weights, padding_mask=padding)
    (expected * probe).sum().backward()
    reference = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    reference["x"] = x.grad.clone()
    if weights is not None:
        reference["weights"] = weights.grad.clone()
    layer.zero_grad()
    x.grad = None
    if weights is not None:
        weights.grad = None
    # the same sequence, sharded over the group: the same layer (parameters and state_dict) made sequence-parallel
    keys = list(layer.state_dict())
    parallel = parallelize_transform(layer, group)
    assert parallel is layer and list(layer.state_dict()) == keys
    local = parallel(shard_sequence(x, group), shard_sequence(pos, group),
                     weights=None if weights is None else shard_sequence(weights, group),
                     padding_mask=None if padding is None else shard_sequence(padding, group))
    torch.testing.assert_close(local, shard_sequence(expected, group), rtol=1e-9, atol=1e-10,
                               msg=lambda m: f"{name}: outputs differ\n{m}")
    (local * shard_sequence(probe, group)).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    grads["x"] = x.grad
    if weights is not None:
        grads["weights"] = weights.grad
    assert set(grads) == set(reference), (name, sorted(set(reference) - set(grads)))
    for key, grad in grads.items():
        dist.all_reduce(grad, group=group)  # each rank holds the gradient of its part of the loss
        torch.testing.assert_close(grad, reference[key], rtol=1e-8, atol=1e-10,
                                   msg=lambda m, key=key: f"{name}: gradient of {key} differs\n{m}")
    print(f"rank {dist.get_rank()}: {name} matches", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.parse_args()
    init_distributed("gloo")
    mesh = deepspeed.comm.initialize_mesh_device((1, dist.get_world_size()), ("data_parallel", "sequence_parallel"))
    group = mesh.get_group(mesh_dim="sequence_parallel")
    for name, options in CASES.items():
        check(name, options, group)
    try:
        shard_sequence(torch.zeros(1, 4 * dist.get_world_size() + 1, 4), group)
    except ValueError as error:
        print(f"rank {dist.get_rank()}: refused: {error}", flush=True)
    x, pos = torch.randn(1, 4, 12), torch.arange(4.0)[None, :, None]
    for layer in (IntegralTransform(12, 4, integrator=MonteCarlo()), IntegralTransform(12, 3)):
        try:
            parallelize_transform(layer, group)(x, pos)
        except ValueError as error:
            print(f"rank {dist.get_rank()}: refused: {error}", flush=True)
    layer = parallelize_transform(IntegralTransform(12, 4), group)
    layer.integrator = MonteCarlo()  # switched after it was made sequence-parallel: refused at the call
    try:
        layer(x, pos)
    except ValueError as error:
        print(f"rank {dist.get_rank()}: refused at the call: {error}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
