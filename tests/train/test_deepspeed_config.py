"""The generated DeepSpeed JSON: every setting lands where DeepSpeed reads it; bad values and files are named."""

from __future__ import annotations

import json

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from itnet_scale.train.deepspeed_config import DeepSpeedSettings, build_deepspeed_config, resolve_deepspeed_config


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_parses_what_we_generate(stage, precision):
    settings = DeepSpeedSettings(zero_stage=stage, precision=precision, micro_batch_size=4,
                                 gradient_accumulation_steps=3, gradient_clipping=0.5,
                                 offload_optimizer=stage >= 1, offload_param=stage == 3)
    config = build_deepspeed_config(settings, on_cpu=True)
    parsed = DeepSpeedConfig(resolve_deepspeed_config(config))
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == 4 and parsed.gradient_accumulation_steps == 3
    assert parsed.gradient_clipping == 0.5
    assert parsed.bfloat16_config.enabled == (precision == "bf16")
    assert parsed.float16_config.enabled == (precision == "fp16")
    assert (parsed.zero_config.offload_optimizer is not None) == (stage >= 1)
    assert (parsed.zero_config.offload_param is not None) == (stage == 3)
    assert parsed.optimizer_name is None and parsed.zero_allow_untested_optimizer  # ours is passed in
    assert parsed.scheduler_name is None  # the schedule is ours too (itnet_scale.train.optimizer)


def test_user_file_wins_section_by_section(tmp_path):
    generated = build_deepspeed_config(DeepSpeedSettings(zero_stage=1), on_cpu=True)
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.0,
                                "train_micro_batch_size_per_gpu": 2}))
    config = resolve_deepspeed_config(generated, user)
    assert config["zero_optimization"]["stage"] == 2 and config["gradient_clipping"] == 0.0
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["fp16"] == generated["fp16"]  # untouched sections stay generated


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"zero_stage": 4}, r"deepspeed\.zero_stage must be 0, 1, 2 or 3, got 4"),
        ({"precision": "fp8"}, r"deepspeed\.precision must be one of"),
        ({"micro_batch_size": 0}, r"deepspeed\.micro_batch_size must be >= 1"),
        ({"offload_optimizer": True}, r"offload_optimizer needs zero_stage >= 1"),
        ({"zero_stage": 2, "offload_param": True}, r"offload_param needs zero_stage 3"),
        ({"gradient_clipping": -1.0}, r"gradient_clipping must be >= 0"),
    ],
)
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        DeepSpeedSettings(**changes)


def test_bad_user_files_are_named(tmp_path):
    generated = build_deepspeed_config(DeepSpeedSettings(), on_cpu=True)
    with pytest.raises(FileNotFoundError, match=r"absent\.json: no such DeepSpeed config"):
        resolve_deepspeed_config(generated, tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"zero_optimization\": ")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        resolve_deepspeed_config(generated, broken)
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"listed\.json: a DeepSpeed config is a JSON object"):
        resolve_deepspeed_config(generated, listed)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"zero_optimization": {"stgae": 2}}))
    with pytest.raises(ValueError, match=r"typo\.json: DeepSpeed rejects the config: .*stgae"):
        resolve_deepspeed_config(generated, typo)
    bad_stage = tmp_path / "stage.json"
    bad_stage.write_text(json.dumps({"zero_optimization": {"stage": 9}}))
    with pytest.raises(ValueError, match=r"stage\.json: DeepSpeed rejects the config: .*stage"):
        resolve_deepspeed_config(generated, bad_stage)
