"""Parameter counts: total and trainable apart, tied weights once, ZeRO-3 partitions at their full size."""

from __future__ import annotations

import torch

from itnet_scale.models import ModelConfig, ParameterCounts, count_parameters, create_model

SMALL = ModelConfig(dim=32, depth=2, heads=2, vocab_size=60, image_channels=1, patch_size=4, point_tokens=8,
                    point_group_size=4, point_hidden=16, contrastive_dim=16, layer={"kernel_width": 4})


def test_frozen_parameters_count_in_the_total_only():
    model = create_model(SMALL, task="classification", classes=4)
    every = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == ParameterCounts(every, every)
    for parameter in model.itnet.parameters():  # linear probing: only the head trains
        parameter.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    counts = count_parameters(model)
    assert counts == (every, head) and counts.frozen == every - head
    assert str(counts) == f"{every / 1e6:.2f}M parameters, {head / 1e6:.2f}M trainable"


def test_tied_weights_count_once_and_partitions_at_full_size():
    model = create_model(SMALL)
    assert model.mlm.decoder.weight is model.itnet.encoder.text.embedding.weight
    unique = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    assert count_parameters(model).total == sum(unique.values())
    layer = torch.nn.Linear(5, 3)
    layer.weight.data = torch.empty(0)  # as ZeRO-3 leaves a partitioned parameter on a rank
    layer.weight.ds_numel = 15
    assert count_parameters(layer) == ParameterCounts(18, 18)
