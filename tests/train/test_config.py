"""The pretraining config: the demo loads; every bad key, type or value is refused naming it."""

from __future__ import annotations

import pytest

from itnet_scale.train.config import load_pretrain_config
from tests.pretrain_fixtures import DEMO_CONFIG


def test_demo_config_loads_with_its_sections():
    config = load_pretrain_config(DEMO_CONFIG, ["steps=7", "deepspeed.zero_stage=3", "objectives.loss_weights.itc=0.5"])
    assert config.steps == 7 and config.deepspeed.zero_stage == 3 and config.model == "tiny"
    assert config.objectives.weight("itc") == 0.5 and config.objectives.weight("mlm") == 1.0
    data = config.data_config()
    assert data.unit_size == 4 and [s.name for s in data.streams] == ["text", "image_text", "image", "points"]
    assert config.model_config(vocab_size=500).vocab_size == 500  # the tokenizer's unless overridden
    assert config.model_config().dim == 192
    assert str(config.checkpoint_dir) == "runs/demo/checkpoints"
    assert config.activation_checkpointing.every == 0  # off unless asked for
    assert load_pretrain_config(DEMO_CONFIG, ["activation_checkpointing.every=2"]).activation_checkpointing.every == 2


@pytest.mark.parametrize(("override", "message"), [
    ("stepz=3", r"Key 'stepz' not in 'PretrainConfig'"),
    ("deepspeed.zero_stage=4", r"deepspeed.zero_stage must be 0, 1, 2 or 3, got 4"),
    ("optimizer.lr=fast", r"bad pretrain config key 'optimizer.lr'"),
    ("objectives.loss_weights.mln=1", r"objectives.loss_weights: unknown objective 'mln'"),
    ("objectives.image_mask_ratio=1.0", r"objectives.image_mask_ratio must be in \(0, 1\)"),
    ("model_overrides.depthh=2", r"model 'tiny' with model_overrides: .*depthh"),
    ("model=huge", r"unknown model 'huge'"),
    ("deepspeed.micro_batch_size=6", r"micro_batch_size=6 must be a multiple of the data config's unit_size=4"),
    ("data=configs/data/nowhere.yaml", r"nowhere.yaml: no such data config"),
    ("data_overrides=[lanes=0]", r"lanes must be >= 1"),
    ("guard.spike_factor=0.5", r"guard.spike_factor must be 0 \(off\) or > 1"),
    ("checkpoint.save_every=0", r"checkpoint.save_every must be >= 1"),
    ("sequence_parallel_size=0", r"sequence_parallel_size must be >= 1"),
    ("activation_checkpointing.every=-2", r"activation_checkpointing.every must be an int >= 0 \(0 = off, 1 = every"),
    ("activation_checkpointing.every=all", r"bad pretrain config key 'activation_checkpointing.every'"),
    ("logging.atlas_every=-1", r"logging.atlas_every must be >= 0 \(0 = off\)"),
    ("logging.atlas_samples=1", r"logging.atlas_samples must be >= 2"),
    ("sequence_parallel_size=2", r"logging.atlas_every needs whole sequences on every rank"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_pretrain_config(DEMO_CONFIG, [override])


def test_the_atlas_needs_held_out_sets(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("streams:\n  - name: text\n    path: shards/text\n    kind: text\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"logging.atlas_every=100 but no stream of .* names a heldout shard set"):
        load_pretrain_config(DEMO_CONFIG, [f"data={data}", "eval.every=0", "eval.zero_shot.stream=''"])
    assert load_pretrain_config(DEMO_CONFIG).logging.atlas_every == 100  # the demo's interval
