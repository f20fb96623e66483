"""The weights' EMA: the update against a hand computation (with and without warm-up), the swap-in for evaluation
restoring the weights bit for bit, the checkpoint file's exact round trip, bad input refused by name; and on 2
ranks under ZeRO-3 (with layer-wise learning-rate decay and the exactly-once evaluation): the partitions' averages
equal the whole weights', the swap, and a checkpoint file that resumes on one process."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from itnet_scale.data.eval_partition import EvalPartition
from itnet_scale.models.registry import create_model
from itnet_scale.tasks.metrics import accuracy
from itnet_scale.train.ema import EMA_FILE, EMASettings, WeightEMA
from tests.distributed import run_deepspeed
from tests.train.finetune_parts_worker import CLASSES, EVAL_BATCH, EVAL_EXAMPLES, evaluation_batch

WORKER = Path(__file__).with_name("finetune_parts_worker.py")


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


def set_weights(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)


def test_update_by_hand() -> None:
    model = torch.nn.Linear(1, 1)  # two parameters, every element set to the same value below
    set_weights(model, 1.0)
    ema = WeightEMA(model, EMASettings(decay=0.5))
    expected = 1.0
    for value in (3.0, -1.0, 7.0):
        set_weights(model, value)
        assert ema.update() == 0.5
        expected = 0.5 * expected + 0.5 * value  # 2.0, 0.5, 3.75
        assert all(float(a.flatten()[0]) == expected for a in ema.averages.values())
    assert expected == 3.75 and ema.updates == 3

    # warm-up (timm's ModelEmaV3): d_n = min(decay, 1 − (1 + n/γ)^(−p)); the first update copies the weights
    settings = EMASettings(decay=0.6, warmup=True, warmup_gamma=2.0, warmup_power=1.0)
    assert [settings.decay_at(n) for n in range(4)] == pytest.approx([0.0, 1 / 3, 0.5, 0.6])
    set_weights(model, 10.0)
    ema = WeightEMA(model, settings)
    expected = 10.0
    for n, value in enumerate((2.0, 5.0, -4.0, 1.0)):
        set_weights(model, value)
        decay = ema.update()
        assert decay == pytest.approx([0.0, 1 / 3, 0.5, 0.6][n])
        expected = decay * expected + (1 - decay) * value  # 2, 4, 0, 0.4
        assert float(ema.averages["weight"].flatten()[0]) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4)


def test_averages_are_fp32_of_the_trainable_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    model[1].weight.requires_grad_(False)
    ema = WeightEMA(model, EMASettings(decay=0.9))
    assert sorted(ema.averages) == ["0.bias", "0.weight", "1.bias"]
    assert {a.dtype for a in ema.averages.values()} == {torch.float32}
    start = model[0].weight.float()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    expected = 0.9 * start + 0.1 * model[0].weight.float()
    torch.testing.assert_close(ema.averages["0.weight"], expected)


def trained_classifier() -> tuple[torch.nn.Module, WeightEMA]:
    """The tiny classifier after 3 AdamW steps with an EMA (decay 0.7) updated after each."""
    torch.manual_seed(0)
    model = create_model("tiny", task="classification", classes=CLASSES)
    ema = WeightEMA(model, EMASettings(decay=0.7))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        batch = evaluation_batch(list(range(step, step + 4)))
        model.loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
    return model, ema


def test_swap_in_evaluates_the_averages_and_restores_the_weights_exactly() -> None:
    model, ema = trained_classifier()
    model.eval()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = evaluation_batch(list(range(5)))
    with torch.no_grad():
        trained = model(batch)
        with ema.swapped_in():
            for name, parameter in model.named_parameters():
                assert torch.equal(parameter, ema.averages[name]), name
            averaged = model(batch)
        again = model(batch)
        reference = copy.deepcopy(model)
        reference.load_state_dict(ema.state_dict()["weights"])
        torch.testing.assert_close(averaged, reference(batch), rtol=0, atol=0)
    assert not torch.allclose(averaged, trained)  # the averages are not the weights
    assert torch.equal(again, trained)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, weights[name]), name
    with pytest.raises(RuntimeError, match="inside"), ema.swapped_in():
        raise RuntimeError("inside")
    for name, parameter in model.named_parameters():  # restored on an error too
        assert torch.equal(parameter, weights[name]), name


def test_checkpoint_file_round_trip_resumes_exactly(tmp_path: Path) -> None:
    model, ema = trained_classifier()
    os.umask(old := os.umask(0o022))
    path = ema.save(tmp_path / "step000000003")
    assert path == tmp_path / "step000000003" / EMA_FILE
    assert path.stat().st_mode & 0o777 == 0o666 & ~old  # the umask's permissions, as the checkpoint's other files
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    stored = load_file(path)
    assert stored.keys() == dict(model.named_parameters()).keys()  # the model's own names: loads as its weights
    fresh_model = create_model("tiny", task="classification", classes=CLASSES)
    fresh_model.load_state_dict(model.state_dict())
    resumed = WeightEMA(fresh_model, EMASettings(decay=0.7))
    resumed.load(path.parent)
    assert resumed.updates == 3
    for name, average in ema.averages.items():
        assert torch.equal(resumed.averages[name], average), name
    # both go on from the same weights: equal, bit for bit
    with torch.no_grad():
        for a, b in zip(model.parameters(), fresh_model.parameters()):
            a.mul_(1.5)
            b.mul_(1.5)
    ema.update()
    resumed.update()
    for name, average in ema.averages.items():
        assert torch.equal(resumed.averages[name], average), name
    # the state dict is plain tensors and ints: a weights-only load reads it
    torch.save(ema.state_dict(), tmp_path / "state.pt")
    again = WeightEMA(fresh_model, EMASettings(decay=0.7))
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert again.updates == 4 and all(torch.equal(again.averages[n], a) for n, a in ema.averages.items())


def test_bad_settings_and_files_are_refused_by_name(tmp_path: Path) -> None:
    for settings, message in (({"decay": 1.0}, r"ema.decay must be in \[0, 1\) \(0 = no EMA\), got 1.0"),
                              ({"decay": -0.1}, r"ema.decay must be in \[0, 1\)"),
                              ({"warmup_gamma": 0.0}, r"ema.warmup_gamma must be > 0"),
                              ({"warmup_power": -1.0}, r"ema.warmup_power must be > 0")):
        with pytest.raises(ValueError, match=message):
            EMASettings(**settings)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"ema.decay is 0: no EMA is kept"):
        WeightEMA(model, EMASettings())
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"Linear has no trainable parameter to average"):
        WeightEMA(frozen, EMASettings(decay=0.9))
    ema = WeightEMA(model, EMASettings(decay=0.9))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/{EMA_FILE}: no EMA file in the checkpoint"):
        ema.load(tmp_path)
    (tmp_path / EMA_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=rf"{EMA_FILE}: unreadable EMA file \(truncated or corrupt\?\)"):
        ema.load(tmp_path)
    save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, str(tmp_path / EMA_FILE))
    with pytest.raises(ValueError, match=r"not an EMA file of this package"):
        ema.load(tmp_path)
    other = WeightEMA(torch.nn.Linear(2, 3), EMASettings(decay=0.9))
    other.save(tmp_path)
    with pytest.raises(ValueError, match=rf"{EMA_FILE}: EMA state: weight has shape \(3, 2\), the model's parameter "
                                         r"\(2, 2\)"):
        ema.load(tmp_path)
    renamed = WeightEMA(torch.nn.Sequential(torch.nn.Linear(2, 2)), EMASettings(decay=0.9))
    renamed.save(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['bias', 'weight'\], unexpected \['0.bias', '0.weight'\]"):
        ema.load(tmp_path)
    with pytest.raises(ValueError, match=r"updates must be an int >= 0, got -1"):
        ema.load_state_dict({"updates": -1, "weights": {}})


def test_zero3_layouts_it_cannot_average_are_refused() -> None:
    """Parameters that look like ZeRO-3's: hierarchical partitions and NVMe offload are refused by name, as is a
    model partitioned after the EMA was built."""
    model = torch.nn.Linear(2, 2)
    model.weight.ds_tensor = torch.zeros(2)
    with pytest.raises(ValueError, match=r"some parameters are ZeRO-3 partitions and some are not"):
        WeightEMA(model, EMASettings(decay=0.9))
    model.bias.ds_tensor = torch.zeros(1)
    model.weight.ds_secondary_tensor = torch.zeros(1)
    with pytest.raises(ValueError, match=r"parameter weight: ZeRO-3 hierarchical partitioning"):
        WeightEMA(model, EMASettings(decay=0.9))
    del model.weight.ds_secondary_tensor
    model.bias.ds_tensor.final_location = "OffloadDeviceEnum.nvme"
    with pytest.raises(ValueError, match=r"parameter bias: ZeRO-3 parameters offloaded to NVMe"):
        WeightEMA(model, EMASettings(decay=0.9))
    plain = torch.nn.Linear(2, 2)
    ema = WeightEMA(plain, EMASettings(decay=0.9))
    plain.weight.ds_tensor = plain.bias.ds_tensor = torch.zeros(2)
    with pytest.raises(RuntimeError, match=r"partitioned by ZeRO-3 after the EMA was built"):
        ema.update()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_zero3(tmp_path: Path) -> None:
    """2 ranks, ZeRO-3, the tiny classifier (matrices partitioned, biases and norms persistent): the worker checks
    that DeepSpeed steps each layer-decay group at its own rate, that the partitions' averages equal the whole
    weights' average, that the swap restores every partition and persistent parameter bit for bit, that the
    EMA file written from the partitions reads back into them, that a DeepSpeed checkpoint resumes the groups'
    rates in another engine, and evaluates the averaged model on 7 examples
    exactly once (3 + 1 padding / rank). Here, on one process: the file loads into an unpartitioned model, whose
    outputs and accuracy on those examples are the 2 ranks' gathered ones."""
    process = run_deepspeed(WORKER, [str(tmp_path)])
    assert process.returncode == 0, process.stdout[-6000:]
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["forwards"] == [2, 2]  # both ranks ran the same forwards
    assert sorted(result["evaluated"]) == list(range(EVAL_EXAMPLES))  # each example once, on one rank
    model = create_model("tiny", task="classification", classes=CLASSES)
    ema = WeightEMA(model, EMASettings(decay=0.8))
    ema.load(tmp_path / "step000000003")
    assert ema.updates == 3
    for name, average in result["reference"].items():
        assert torch.equal(ema.averages[name], average), name
    partition = EvalPartition(EVAL_EXAMPLES, world_size=1, batch_size=EVAL_BATCH)
    model.eval()
    with torch.no_grad(), ema.swapped_in():
        logits = partition.merge([torch.cat([model(evaluation_batch(list(range(k, min(k + EVAL_BATCH,
                                                                                      EVAL_EXAMPLES)))))
                                             for k in range(0, EVAL_EXAMPLES, EVAL_BATCH)])])
    torch.testing.assert_close(result["logits"], logits, rtol=1e-5, atol=1e-6)
    labels = evaluation_batch(list(range(EVAL_EXAMPLES)))["labels"].numpy()
    assert result["accuracy"] == accuracy(logits.numpy(), labels)
