"""Held-out evaluation: the metrics are what they claim (hand-computed retrieval, zero-shot from the model's own
embeddings, losses weighted by what they average over), calibration recomputes the contrastive statistics, the
training state is untouched, bad settings are refused by name. Several ranks: tests/launch/test_evaluation.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from itnet_scale.data.heldout import HeldOutSet
from itnet_scale.nn.heads import IGNORE
from itnet_scale.train.evaluation import metrics_table, objective_counts, retrieval_recall
from tests.distributed import run_deepspeed
from tests.pretrain_fixtures import REPO, config_for, evaluator_for, small_demo_data

WORKER = Path(__file__).with_name("evaluation_worker.py")
EVALUATE = REPO / "tools" / "evaluate_pretrained.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


def test_retrieval_recall_by_hand() -> None:
    eye = torch.eye(3)
    image, text = eye, eye[[0, 2, 1]]  # pair 0 matches exactly; pairs 1 and 2 each point at the other's text
    recall = retrieval_recall(image, text, ks=(1, 2, 3))
    # image 1: text 2 scores 1 > its own 0, and text 0 ties with it (a tie counts against the query): rank 2
    assert recall["retrieval/image_to_text_r1"] == pytest.approx(1 / 3)
    assert recall["retrieval/image_to_text_r2"] == pytest.approx(1 / 3)
    assert recall["retrieval/image_to_text_r3"] == 1.0
    assert recall["retrieval/text_to_image_r1"] == pytest.approx(1 / 3)


def test_objective_counts_are_what_each_loss_averages_over() -> None:
    labels = torch.full((2, 5), IGNORE)
    labels[0, 1] = labels[1, 3] = labels[1, 4] = 7
    batch = {"images": torch.zeros(2, 1, 8, 8), "text_ids": torch.zeros(2, 5, dtype=torch.long),
             "mlm_labels": labels, "image_mask": torch.tensor([[True, False], [True, True]])}
    assert objective_counts(batch) == {"mlm": 3.0, "itc": 2.0, "mpm": 3.0}


def test_evaluation_on_one_rank(data: Path, tmp_path: Path) -> None:
    config = config_for(data, tmp_path)
    evaluator, model = evaluator_for(config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    metrics = evaluator.evaluate(model)
    # the random generators and the training mode are as they were; the weights too (only the head's
    # standardization statistics were recalibrated)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {"itc.image_norm.running_mean", "itc.image_norm.running_var", "itc.text_norm.running_mean",
                       "itc.text_norm.running_var"}
    heldout = {s.name: HeldOutSet(s, batch_size=8).slots for s in config.data_config().streams}
    assert {k: metrics[f"samples/{k}"] for k in heldout} == heldout == {"text": 5, "image_text": 20, "image": 20,
                                                                       "points": 10}
    assert set(metrics) >= {"loss/mlm", "loss/itc", "loss/mpm", "loss/mpp", "zero_shot/top1",
                            "retrieval/image_to_text_r1", "retrieval/text_to_image_r5"}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics_table([{"step": 0, **metrics}]).splitlines()[0] == "| metric | step 0 |"

    # calibration: the statistics of the pooled features of the first 2 batches of training pairs
    model.eval()
    stream = next(s for s in config.data_config().streams if s.name == "image_text")
    builder = evaluator.builders["image_text"]
    with torch.no_grad():
        features = [model.contrastive_features(builder([b.unit]).batch)
                    for b in HeldOutSet(stream, batch_size=8, max_batches=2, training=True).rank_batches(0, 1)]
    image = torch.cat([f[0] for f in features])
    assert image.shape[0] == 16
    torch.testing.assert_close(model.itc.image_norm.running_mean, image.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.itc.image_norm.running_var, image.var(0), rtol=1e-4, atol=1e-7)

    # zero-shot top-1, recomputed from the model's own embeddings
    templates = config.eval.zero_shot.templates
    names = config.eval.zero_shot.classes
    tokenizer = evaluator.tokenizer
    ids, mask = tokenizer.batch_encode([t.format(n) for n in names for t in templates],
                                       config.objectives.max_caption_tokens, pad_to="longest")
    with torch.no_grad():
        classes = F.normalize(model.itc.encode_text(model.text_features(ids, mask)).reshape(10, len(templates), -1)
                              .mean(1), dim=-1)
        correct = total = 0
        held = HeldOutSet(next(s for s in config.data_config().streams if s.name == "image"), batch_size=8)
        for item in held.rank_batches(0, 1):
            part = evaluator.builders["image"]([item.unit])
            predicted = (model.itc.encode_image(model.image_features(part.batch["images"])) @ classes.T).argmax(1)
            correct += int((predicted == part.labels).sum())
            total += len(predicted)
    assert total == 20 and metrics["zero_shot/top1"] == pytest.approx(correct / total)


def test_bad_eval_settings_are_refused_by_name(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eval.zero_shot.stream='nope' must be a stream with a heldout shard set"):
        config_for(data, tmp_path, **{"eval.zero_shot.stream": "nope"})
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        config_for(data, tmp_path, **{"eval.zero_shot.templates": "['a {} of {}']"})
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        config_for(data, tmp_path, **{"eval.zero_shot.templates": "['a {0.__class__}']"})
    with pytest.raises(ValueError, match=r"eval.batch_size must be >= 1"):
        config_for(data, tmp_path, **{"eval.batch_size": 0})
    demo_data = (REPO / "configs" / "data" / "demo.yaml").read_text(encoding="utf-8")
    without = tmp_path / "without_heldout.yaml"
    without.write_text("\n".join(line for line in demo_data.splitlines() if "heldout:" not in line))
    with pytest.raises(ValueError, match=r"eval.every=5 but no stream of .* names a heldout shard set"):
        config_for(data, tmp_path, f"data={without}", **{"eval.every": 5, "eval.zero_shot.stream": "''"})
    config = config_for(data, tmp_path, **{"eval.zero_shot.classes": "[zero,one]"})
    with pytest.raises(ValueError, match=r"names 2 classes, the heldout index of stream 'image' 10"):
        evaluator_for(config)
    config = config_for(data, tmp_path, **{"eval.zero_shot.classes": "[]"})
    assert evaluator_for(config)[0].classes == [str(d) for d in range(10)]  # the index's class names
    config = config_for(data, tmp_path, **{"eval.zero_shot.stream": "image_text"})
    with pytest.raises(ValueError, match=r"holds 'image_text' samples; zero-shot classification reads an image"):
        evaluator_for(config)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_evaluate_each_sample_once_and_training_is_untouched(data: Path, tmp_path: Path) -> None:
    """2 ranks, held-out sets of 1, 3, 3 and 2 batches (rank 1 runs padding batches): the metrics equal one
    rank's. A run that evaluates at the start and every 2 steps trains to the same weights and losses, bit for
    bit, as one that never does; its evaluations reach TensorBoard and ``eval.jsonl``."""
    process = run_deepspeed(WORKER, [str(data), str(tmp_path)], timeout=600)
    assert process.returncode == 0, process.stdout[-6000:]
    evaluator, model = evaluator_for(config_for(data, tmp_path))
    expected = evaluator.evaluate(model)
    two_ranks = json.loads((tmp_path / "metrics.json").read_text())
    assert two_ranks.keys() == expected.keys()
    for name, value in expected.items():
        assert two_ranks[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name

    with_eval = torch.load(tmp_path / "with_eval.pt", weights_only=True)
    without = torch.load(tmp_path / "without_eval.pt", weights_only=True)
    assert with_eval["losses"] == without["losses"]
    for name, weight in without["weights"].items():
        assert torch.equal(with_eval["weights"][name], weight), name
    assert [e["step"] for e in with_eval["evaluations"]] == [0, 2, 4] and without["evaluations"] == []
    lines = [json.loads(line) for line in (tmp_path / "with_eval" / "run" / "eval.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert lines[-1] == pytest.approx(with_eval["evaluations"][-1])
    assert not (tmp_path / "without_eval" / "run" / "eval.jsonl").exists()
    events = EventAccumulator(str(tmp_path / "with_eval" / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/zero_shot/top1")] == [0, 2, 4]
    assert {"eval/loss/mlm", "eval/loss/itc", "eval/loss/mpm", "eval/loss/mpp",
            "eval/retrieval/image_to_text_r1"} <= set(events.Tags()["scalars"])
    # the standalone command gives the run's last evaluation: on its DeepSpeed checkpoint (one process) and on the
    # library folder converted from it (two ranks)
    run = tmp_path / "with_eval" / "run"
    library = tmp_path / "library"
    converted = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "library",
                                str(run / "checkpoints"), str(library)], capture_output=True, text=True, cwd=REPO)
    assert converted.returncode == 0, converted.stderr
    config = ["--config", str(run / "config.yaml")]
    one = subprocess.run([sys.executable, str(EVALUATE), str(run / "checkpoints"), *config, "--json",
                          str(tmp_path / "one.json")], capture_output=True, text=True, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "| metric | step 4 |" in one.stdout and "| zero_shot/top1 |" in one.stdout
    two = run_deepspeed(EVALUATE, [str(library), *config, "--json", str(tmp_path / "two.json")])
    assert two.returncode == 0, two.stdout[-3000:]
    for output in ("one.json", "two.json"):
        metrics = json.loads((tmp_path / output).read_text())
        assert metrics.keys() == lines[-1].keys()
        for name, value in lines[-1].items():
            if name != "step":
                assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-5), (output, name)
