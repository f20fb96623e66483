"""The exactly-once evaluation split: for many sizes, ranks and batch sizes every example is evaluated once, every
rank runs the same forwards, padding is marked and dropped, the merge restores the split's order; and what
DistributedSampler would have done instead. On 2 ranks under ZeRO-3 (7 examples, batches of 3; the gathered
outputs and accuracy equal one process's): tests/train/test_ema.py::test_two_ranks_zero3."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from itnet_scale.data.eval_partition import EvalPartition


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_every_example_once_and_the_same_forwards_on_every_rank(world_size: int) -> None:
    for examples in [*range(1, 20), 31, 100, 101]:
        for batch_size in (1, 2, 3, 5, 64):
            partition = EvalPartition(examples, world_size, batch_size)
            counted: Counter[int] = Counter()
            for rank in range(world_size):
                indices, padding = partition.rank_indices(rank), partition.rank_padding(rank)
                assert len(indices) == len(padding) == partition.per_rank == math.ceil(examples / world_size)
                assert all(0 <= i < examples for i in indices)
                assert int(padding.sum()) <= 1 and (not padding.any() or bool(padding[-1]))  # at most the last slot
                counted.update(i for i, pad in zip(indices, padding.tolist()) if not pad)
                batches = [indices[k:k + batch_size] for k in range(0, len(indices), batch_size)]
                assert len(batches) == partition.forwards == math.ceil(partition.per_rank / batch_size)
            assert counted == Counter(range(examples)), (examples, world_size, batch_size)
            # each rank's outputs: the example index it evaluated in each slot (a padding slot: a repeat, or -1)
            outputs = [torch.where(partition.rank_padding(r), -1, torch.tensor(partition.rank_indices(r)))
                       for r in range(world_size)]
            assert partition.merge(outputs).tolist() == list(range(examples))


def test_fewer_examples_than_ranks_and_an_odd_split() -> None:
    partition = EvalPartition(examples=2, world_size=4, batch_size=8)
    assert partition.per_rank == 1 and partition.forwards == 1
    assert [partition.rank_indices(r) for r in range(4)] == [[0], [1], [0], [1]]
    assert [partition.rank_padding(r).tolist() for r in range(4)] == [[False], [False], [True], [True]]
    partition = EvalPartition(examples=7, world_size=2, batch_size=3)
    assert partition.rank_indices(0) == [0, 2, 4, 6] and partition.rank_indices(1) == [1, 3, 5, 0]
    assert partition.rank_padding(1).tolist() == [False, False, False, True] and partition.forwards == 2
    # outputs of any trailing shape come back in the split's order
    outputs = [torch.tensor([[float(i), -float(i)] for i in partition.rank_indices(r)]) for r in range(2)]
    assert partition.merge(outputs)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_rank_indices_drive_a_data_loader() -> None:
    """``rank_indices`` is the sampler and the partition's batch size the loader's: the loader's batches are the
    partition's forwards."""
    dataset = torch.arange(100, 111)  # 11 examples whose value names them
    partition = EvalPartition(len(dataset), world_size=3, batch_size=2)
    for rank in range(3):
        loader = DataLoader(dataset, batch_size=partition.batch_size, sampler=partition.rank_indices(rank))
        batches = list(loader)
        assert len(batches) == partition.forwards == 2
        assert torch.cat(batches).tolist() == [100 + i for i in partition.rank_indices(rank)]


def test_distributed_sampler_counts_repeats_and_the_partition_does_not() -> None:
    """The trap: DistributedSampler pads 7 examples to 8 on 2 ranks with a repeat of example 0 that nothing marks
    (an accuracy over its outputs counts example 0 twice); with drop_last it leaves example 6 out. The partition
    assigns the same slots, marks the repeat, and its merge has the 7 examples once."""
    examples = 7
    sampled = [list(DistributedSampler(range(examples), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert sorted(sampled[0] + sampled[1]) == [0, 0, 1, 2, 3, 4, 5, 6]
    dropped = [list(DistributedSampler(range(examples), num_replicas=2, rank=r, shuffle=False, drop_last=True))
               for r in range(2)]
    assert sorted(dropped[0] + dropped[1]) == [0, 1, 2, 3, 4, 5]
    partition = EvalPartition(examples, world_size=2, batch_size=4)
    assert [partition.rank_indices(r) for r in range(2)] == sampled  # the same slots
    correct = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # only example 0 is right: accuracy 1/7
    with_repeats = torch.cat([correct[torch.tensor(s)] for s in sampled])
    assert float(with_repeats.mean()) == 2 / 8  # what the sampler's outputs report
    merged = partition.merge([correct[torch.tensor(partition.rank_indices(r))] for r in range(2)])
    assert float(merged.mean()) == pytest.approx(1 / 7)


def test_gather_on_one_process(monkeypatch) -> None:
    partition = EvalPartition(examples=5, world_size=1, batch_size=2)
    local = torch.arange(10.0).reshape(5, 2)
    assert torch.equal(partition.gather(local), local)  # with or without a (one-rank) process group
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    assert torch.equal(partition.gather(local), local)
    with pytest.raises(ValueError, match=r"the partition is for 2 ranks but no process group is initialized"):
        EvalPartition(examples=5, world_size=2, batch_size=2).gather(torch.zeros(3))


def test_bad_input_is_refused_by_name() -> None:
    for field, values in (("examples", (0, -1, 2.5, True)), ("world_size", (0,)), ("batch_size", (0, "8"))):
        for value in values:
            arguments = {"examples": 4, "world_size": 2, "batch_size": 2, field: value}
            with pytest.raises(ValueError, match=rf"EvalPartition.{field} must be an int >= 1, got {value!r}"):
                EvalPartition(**arguments)
    partition = EvalPartition(examples=5, world_size=2, batch_size=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        partition.rank_indices(2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got -1"):
        partition.rank_padding(-1)
    with pytest.raises(ValueError, match=r"gather takes this rank's 3 per-slot outputs \[per_rank, \.\.\.\], got "
                                         r"shape \(5,\)"):
        partition.gather(torch.zeros(5))
    with pytest.raises(ValueError, match=r"merge takes one output per rank \(2\), got 1"):
        partition.merge([torch.zeros(3)])
