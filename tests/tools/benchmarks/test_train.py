"""The ``train`` suite: a short run's report, the baseline transformer, the data, the state accounting, ZeRO memory."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks import load_suite
from benchmarks.state_memory import engine_state_bytes, live_tensor_bytes
from benchmarks.train import (
    LABELS,
    METHODS,
    Case,
    TextData,
    TrainBenchConfig,
    TrainResults,
    TransformerForMLM,
    build_method_model,
    evaluate_targets,
    init_single_process,
    lowrank_config,
)
from itnet_scale.models import load_model_config
from itnet_scale.nn.heads import IGNORE


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from itnet_scale.data.demo import build_demo_data

    return build_demo_data(tmp_path_factory.mktemp("demo") / "demo")["tokenizer"]


@pytest.fixture
def single_process() -> None:
    init_single_process()  # a world of one for deepspeed.initialize; it lives until the process exits


def run_suite(options: list[str]):
    suite = load_suite("train")
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    return suite.run(parser.parse_args(options))


def test_short_run_reports_every_length_and_method(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")  # eager tiles: no compile time in a test
    report = run_suite(["--n", "48", "96", "--warmup", "1", "--steps", "1", "--repeats", "2", "--no-memory",
                        "--tokenizer", str(tokenizer_dir)])
    table = report.tables[0]
    rows = {(row[0], row[1]): dict(zip(table.columns, row)) for row in table.rows}
    assert set(rows) == {(n, LABELS[m]) for n in ("48", "96") for m in METHODS}
    data = {(r["n"], r["method"]): r for r in report.data["rows"]}
    for (n, method), row in data.items():
        assert len(row["tokens_per_s"]) == 2 and all(rate > 0 for rate in row["tokens_per_s"])
        assert row["tokens_per_s"] == pytest.approx([n / statistics.median(s) for s in row["step_seconds"]])  # B = 1
        assert float(rows[(str(n), LABELS[method])]["tokens/s"]) == pytest.approx(row["median_tokens_per_s"], abs=0.5)
        assert torch.isfinite(torch.tensor(row["losses"])).all()
        if method != "transformer":  # each ratio: the median of the rounds' own ratios to the baseline
            base = data[(n, "transformer")]["tokens_per_s"]
            expected = statistics.median(a / b for a, b in zip(row["tokens_per_s"], base))
            assert report.data["ratios_vs_transformer"][str(n)][method] == pytest.approx(expected)
    assert data[(48, "itnet-lowrank")]["parameters"] > data[(48, "itnet-exact")]["parameters"]  # + feature maps
    assert [t.name for t in report.targets] == ["exact_vs_transformer", "lowrank_vs_transformer", "zero3_memory"]
    assert [t.status for t in report.targets] == ["not evaluated"] * 3  # neither 1024, 4096 nor memory ran
    # Activation checkpointing: each checkpointed model trains exactly as its twin; the ratios are the rounds' own.
    checkpointing = {(row[0], row[1]): dict(zip(report.tables[1].columns, row)) for row in report.tables[1].rows}
    assert set(checkpointing) == {(n, LABELS[m]) for n in ("48", "96") for m in ("itnet-exact", "itnet-lowrank")}
    assert all(row["same losses"] == "yes" for row in checkpointing.values())
    for n in (48, 96):
        for method, twin in (("itnet-exact-ckpt", "itnet-exact"), ("itnet-lowrank-ckpt", "itnet-lowrank")):
            assert data[(n, method)]["losses"] == data[(n, twin)]["losses"]
            mine, theirs = data[(n, method)]["step_seconds"], data[(n, twin)]["step_seconds"]
            expected = statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(mine, theirs))
            ratios = report.data["activation_checkpointing"][str(n)][twin]
            assert ratios["step_time_ratio"] == pytest.approx(expected)
            assert ratios["peak_memory_ratio"] is None or ratios["peak_memory_ratio"] >= 0


def _results(rates: dict[tuple[int, str], list[float]], memory: dict[str, int] | None = None) -> TrainResults:
    results = TrainResults(TrainBenchConfig(sizes=(1024, 4096), micro_batch=1))
    for (n, method), per_round in rates.items():
        results.cases.append(Case(n, method, step_seconds=[[n / r] for r in per_round],
                                  losses=[[1.0]] * len(per_round)))
    for name, state in (memory or {}).items():
        results.memory.append({"variant": name, "rank": 0, "world_size": 2, "stage": 3 if "3" in name else 0,
                               "counted": {"state": state}})
    return results


def test_targets_follow_the_figures():
    good = _results({(1024, "transformer"): [100, 200], (1024, "itnet-exact"): [80, 150],
                     (4096, "transformer"): [10, 20], (4096, "itnet-lowrank"): [20, 30]},
                    {"ZeRO-0": 1000, "ZeRO-3": 500})
    verdicts = evaluate_targets(good)
    assert [t.status for t in verdicts] == ["met", "met", "met"]
    assert verdicts[0].detail.startswith("0.78×")  # median of 0.8 and 0.75, not the ratio of the medians
    assert good.ratio(4096, "itnet-lowrank") == pytest.approx(1.75)
    bad = _results({(1024, "transformer"): [100], (1024, "itnet-exact"): [60],
                    (4096, "transformer"): [10], (4096, "itnet-lowrank"): [14]}, {"ZeRO-0": 1000, "ZeRO-3": 600})
    assert [t.status for t in evaluate_targets(bad)] == ["not met"] * 3
    assert [t.status for t in evaluate_targets(_results({}))] == ["not evaluated"] * 3


def test_baseline_has_the_tiny_itnet_shapes():
    config = load_model_config("tiny")
    baseline, itnet = TransformerForMLM(config), build_method_model("itnet-exact", config.vocab_size)
    assert len(baseline.blocks) == config.depth == len(itnet.itnet.backbone.blocks) == 4
    for block, it_block in zip(baseline.blocks, itnet.itnet.backbone.blocks):
        mixer = it_block.mixer
        assert block.attn.heads == mixer.heads == config.heads == 4
        q, k, v = (getattr(mixer, f"{x}_proj").weight for x in "qkv")
        assert block.attn.qkv.weight.shape == torch.cat([q, k, v]).shape == (3 * 192, 192)
        assert block.attn.out.weight.shape == mixer.o_proj.weight.shape == (192, 192)
        for name in ("fc1", "fc2"):
            assert getattr(block.mlp, name).weight.shape == getattr(it_block.mlp, name).weight.shape
        assert block.mlp.fc1.weight.shape == (round(192 * config.mlp_ratio), 192)
        assert block.norm1.normalized_shape == it_block.norm1.normalized_shape
    assert baseline.text.embedding.weight.shape == itnet.itnet.encoder.text.embedding.weight.shape == (3000, 192)
    assert baseline.mlm.decoder.weight is baseline.text.embedding.weight  # tied, as the ITNet's
    for a, b in zip(baseline.mlm.transform.parameters(), itnet.mlm.transform.parameters()):
        assert a.shape == b.shape


def test_lowrank_model_puts_every_layer_on_the_lowrank_integrator():
    config = lowrank_config(load_model_config("tiny"), rank=16, feature_map="prf")
    model = build_method_model("itnet-lowrank", 3000, rank=16, feature_map="prf")
    assert config.layers == {}  # the only overrides were the windows of layers 0-1
    for block in model.itnet.backbone.blocks:
        mixer = block.mixer
        assert (mixer.integrator.name, mixer.spec.support, mixer.kernel.width) == ("lowrank", "all", 8)
        assert mixer.features.rank == 16 and mixer.features.kind == "prf"


def test_baseline_trains_and_ignores_padding():
    torch.manual_seed(0)
    model = TransformerForMLM(load_model_config("tiny", vocab_size=200))
    ids = torch.randint(7, 200, (2, 24))
    labels = torch.where(torch.rand(2, 24) < 0.3, ids, IGNORE)
    inputs = torch.where(labels != IGNORE, 4, ids)
    batch = {"text_ids": inputs, "text_attention_mask": torch.ones_like(ids, dtype=torch.bool), "mlm_labels": labels}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = model.losses(batch)["mlm"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    model.eval()
    padded = torch.cat([inputs, torch.zeros(2, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 24, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.hidden(padded, mask)[:, :24], model.hidden(inputs), atol=1e-5, rtol=1e-5)


def test_batches_read_the_stream_on_and_are_reproducible():
    data = TextData(torch.arange(10, 110), vocab_size=120, cls_id=2, sep_id=3, mask_id=4, special_ids=[0, 1, 2, 3, 4])
    batches = data.batches(length=41, micro_batch=2, count=2, seed=5)
    original = [torch.where(b["mlm_labels"] != IGNORE, b["mlm_labels"], b["text_ids"]) for b in batches]
    rows = torch.cat(original)
    assert (rows[:, 0] == 2).all()
    unmasked = rows[:, 1:].flatten()
    masked = torch.cat([b["mlm_labels"] for b in batches])[:, 1:].flatten() != IGNORE
    random_replaced = (torch.cat([b["text_ids"] for b in batches])[:, 1:].flatten() != unmasked) & ~masked
    assert not random_replaced.any()
    expected = 10 + torch.arange(160) % 100  # 4 rows of 40 tokens, wrapping at the end of the 100-token stream
    assert torch.equal(unmasked, expected)
    again = data.batches(length=41, micro_batch=2, count=2, seed=5)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)
    assert all(b["text_attention_mask"].all() for b in batches)


def _engine(stage: int, model: torch.nn.Module, **zero):
    import deepspeed

    from itnet_scale.train.deepspeed_config import DeepSpeedSettings, build_deepspeed_config
    from itnet_scale.train.optimizer import OptimizerSettings, build_optimizer

    config = build_deepspeed_config(DeepSpeedSettings(zero_stage=stage, micro_batch_size=4), on_cpu=True)
    config["zero_optimization"].update(zero)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, OptimizerSettings()),
                                      config=config)
    for step in range(2):  # a step (the moments exist), then the next backward (the gradients exist)
        x = torch.randn(4, 16)
        engine.backward((engine(x) - x.flip(-1)).square().mean())
        if step == 0:
            engine.step()
    return engine


class TiedMLP(torch.nn.Module):
    """16 → 64 → 16 with a second head sharing ``down``'s weight (one storage under two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.norm, self.down = torch.nn.Linear(16, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 16)
        self.head = torch.nn.Linear(64, 16, bias=False)
        self.head.weight = self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.nn.functional.gelu(self.up(x)))
        return self.down(h) + self.head(h)


def test_zero0_accounting_is_16_bytes_per_parameter(single_process):
    torch.manual_seed(0)
    model = TiedMLP()
    params = list(model.parameters())  # 6 tensors: the tied weight once
    numel = sum(p.numel() for p in params)
    counted = engine_state_bytes(_engine(0, model))
    assert counted.parameters == counted.gradients == 4 * numel
    assert counted.optimizer == 8 * numel + 4 * len(params)  # exp_avg, exp_avg_sq and a 4-byte step per tensor
    assert counted.master == counted.buffers == counted.other == 0
    assert counted.state == 16 * numel + 4 * len(params)
    assert live_tensor_bytes() >= counted.total


def test_zero3_accounting_on_one_rank(single_process):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    numel = sum(p.numel() for p in model.parameters())
    engine = _engine(3, model, stage3_param_persistence_threshold=0, reduce_bucket_size=1000)
    counted = engine_state_bytes(engine)
    assert all(p.numel() == 0 for p in engine.module.parameters())  # placeholders: the partitions hold the values
    assert counted.parameters == counted.gradients == 4 * numel  # one rank holds the whole partition
    assert counted.master == 4 * numel  # DeepSpeed 0.19.8's fp32 copy of the partition
    groups = len(engine.optimizer.optimizer.state)  # ZeRO-3 steps one flat partition per parameter group
    assert counted.optimizer == 8 * numel + 4 * groups
    assert counted.buffers == 4 * 1000  # the reduce bucket, reduce_bucket_size fp32 elements
    assert {e["category"] for e in counted.largest} >= {"parameters", "master", "gradients", "optimizer", "buffers"}
    engine.destroy()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero_memory_on_two_ranks(tokenizer_dir):
    """ZeRO-0 holds 16 B/param; ZeRO-3 with every tensor partitioned holds half of each part on each of 2 ranks,
    and no separate fp32 master copy (it aliases the fp32 weights: itnet_scale.train.engine)."""
    report = run_suite(["--n", "32", "--methods", "transformer", "--warmup", "0", "--steps", "1", "--repeats", "1",
                        "--memory-seq", "32", "--tokenizer", str(tokenizer_dir)])
    memory = report.tables[1]
    rows = {row[0]: dict(zip(memory.columns, row)) for row in memory.rows}
    persist0 = "ZeRO-3, stage3_param_persistence_threshold=0"
    assert list(rows) == ["ZeRO-0", "ZeRO-3", persist0]
    assert float(rows["ZeRO-0"]["bytes/param"]) == pytest.approx(16.0, abs=0.01)
    assert rows[persist0]["tensors partitioned / whole"].endswith(" / 0")
    records = {(r["variant"], r["rank"]): r for r in report.data["memory"]}
    assert {rank for _, rank in records} == {0, 1}
    for rank in (0, 1):
        zero0, zero3 = records[("ZeRO-0", rank)]["counted"], records[(persist0, rank)]["counted"]
        for part in ("parameters", "gradients", "optimizer"):
            assert zero3[part] == pytest.approx(zero0[part] / 2, rel=0.01), part
        assert zero3["master"] == 0
        assert all(records[(v, rank)]["losses"][1] < records[(v, rank)]["losses"][0] + 1 for v in rows)
    verdict = report.targets[2]
    assert verdict.status in ("met", "not met") and verdict.detail.startswith("generated config: ")
    ratio = float(verdict.detail.split(": ")[1].split("×")[0])
    assert (verdict.status == "met") == (ratio <= 0.55)
    assert set(METHODS) >= {r["method"] for r in report.data["rows"]}
