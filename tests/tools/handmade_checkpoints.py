"""Small DeepSpeed-layout checkpoints made by hand, for the fast tests of the checkpoint tools.

A ZeRO-0 checkpoint is DeepSpeed's ``mp_rank_00_model_states.pt`` (the whole ``module`` state dict plus the
engine's and the loop's ``client_state`` entries) — the same file the engine writes, so the tools read it as they
read a real one. A ZeRO-3 stub has the model-states records of every rank (``param_shapes``, ``shared_params``, no
weights) and placeholder optimizer files: enough for what reads only the metadata (inspection, rank checks).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from itnet_scale.checkpoint.deepspeed_checkpoint import step_tag, write_latest
from itnet_scale.config import to_yaml
from itnet_scale.models import ModelConfig, create_model

SMALL = ModelConfig(dim=32, depth=2, heads=2, vocab_size=60, image_channels=1, patch_size=4, point_tokens=8,
                    point_group_size=4, point_hidden=16, contrastive_dim=16, layer={"kernel_width": 4},
                    layers={"0": {"support": "window", "support_size": 3.0}})
DATA = {"text": {"units": 6, "samples": 24}, "image_text": {"units": 4, "samples": 16},
        "image": {"units": 2, "samples": 8}}


def client_state(step: int, stage: int, world: int, config: ModelConfig = SMALL) -> dict:
    """What the engine and the trainer core put next to the weights (``itnet_scale.train.loop``'s
    ``Trainer._client_state``)."""
    return {"buffer_names": [], "optimizer": None, "lr_scheduler": {}, "ds_config": {"zero_optimization": {
        "stage": stage}}, "ds_version": "0.19.8", "dp_world_size": world, "mp_world_size": 1, "global_steps": step,
        "global_samples": 48 * step, "step": step, "data": DATA, "guard": {}, "config": "run_dir: runs/handmade\n",
        "model_config": to_yaml(config), "objectives": ["itc", "mlm", "mpm"], "world_size": world,
        "sequence_parallel_size": 1}


def zero0_checkpoint(save_dir: Path, model: torch.nn.Module | None = None, *, step: int = 5,
                     config: ModelConfig = SMALL, module: dict | None = None) -> Path:
    """Save ``model`` (default: a fresh pretraining model of ``config``) as ZeRO-0 tag ``stepN`` of ``save_dir``
    with ``latest`` naming it; ``module`` replaces the saved state dict. Returns the tag folder."""
    model = model if model is not None else create_model(config)
    tag_dir = Path(save_dir) / step_tag(step)
    tag_dir.mkdir(parents=True)
    state = {"module": module if module is not None else model.state_dict(), **client_state(step, 0, 1, config),
             "param_shapes": None, "frozen_param_shapes": None, "shared_params": None}
    torch.save(state, tag_dir / "mp_rank_00_model_states.pt")
    write_latest(save_dir, tag_dir.name)
    return tag_dir


def zero3_stub(tag_dir: Path, world: int = 2, config: ModelConfig = SMALL, missing: str | None = None) -> Path:
    """A ZeRO-3 tag folder of ``world`` ranks holding only the metadata (placeholder optimizer files); ``missing``
    names a file not to write."""
    tag_dir.mkdir(parents=True)
    model = create_model(config)
    shapes = OrderedDict((name, p.shape) for name, p in model.named_parameters())
    for rank in range(world):
        state = {"module": {}, **client_state(3, 3, world, config), "param_shapes": [shapes],
                 "frozen_param_shapes": OrderedDict(), "shared_params": {
                     "mlm.decoder.weight": "itnet.encoder.text.embedding.weight"}}
        names = {"model": f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt",
                 "optim": f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"}
        if names["model"] != missing:
            torch.save(state, tag_dir / names["model"])
        if names["optim"] != missing:
            (tag_dir / names["optim"]).write_bytes(b"placeholder")
    return tag_dir
