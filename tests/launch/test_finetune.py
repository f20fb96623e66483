"""``launch/finetune.py`` and its recipe end to end on fixture data in the benchmarks' real layouts: every task
config at 2 ranks, the submission files of evaluation-only runs, exact mid-epoch resume (from the files and
streamed from shards), and bad input refused before anything starts."""

from __future__ import annotations

import json
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from itnet_scale.checkpoint.library import save_pretrained
from itnet_scale.data.shards import write_text_shards
from itnet_scale.data.tokenizer import TokenizerConfig, train_tokenizer
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.tasks.imagenet import write_imagenet_layout, write_imagenet_shards
from tests.distributed import REPO, run_deepspeed
from tests.modelnet40_fixtures import official_ids, write_normal_resampled
from tests.tasks.glue_fixtures import write_glue_folder
from tests.tasks.nlvr2_fixtures import write_nlvr2_folder
from tests.tasks.vqa_fixtures import write_vqa_root

WORKER = Path(__file__).with_name("finetune_worker.py")
LAUNCH = REPO / "launch" / "finetune.py"


def write_fixture_data(root: Path) -> Path:
    """GLUE, ImageNet (and its training split as shards), ModelNet40, VQA v2 and NLVR2 trees in their real layouts,
    a tokenizer and a small grayscale-pretrained model."""
    write_glue_folder(root / "glue")
    rng = np.random.default_rng(0)

    def images(count: int) -> list[tuple[np.ndarray, int]]:
        return [(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), i % 3) for i in range(count)]

    write_imagenet_layout(root / "imagenet", images(6), images(5), ["n01440764", "n01443537", "n01484850"],
                          ["tench", "goldfish", "great white shark"], test=[pixels for pixels, _ in images(3)])
    write_imagenet_shards(root / "imagenet", "train", root / "imagenet-train-shards", max_count=2)
    train, test = official_ids(2, 1)
    write_normal_resampled(root / "modelnet40" / "modelnet40_normal_resampled", train, test, rows=1024)
    write_vqa_root(root / "vqav2")
    write_nlvr2_folder(root / "nlvr2")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(text for text in pydoc_data.topics.topics.values()), encoding="utf-8")
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=400, inputs=[str(corpus)]), root / "tokenizer")
    # A model "pretrained" on grayscale images (and text): VQA and NLVR2 start from it, in RGB at another size.
    pretrained = ModelConfig(dim=32, depth=2, heads=2, vocab_size=tokenizer.vocab_size, image_channels=1,
                             patch_size=4, point_tokens=8, point_group_size=8, point_hidden=16, contrastive_dim=16)
    torch.manual_seed(0)
    save_pretrained(ITNetForPretraining(pretrained), root / "pretrained-gray")
    return root


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_task_config_fine_tunes_writes_its_submission_and_resumes_mid_epoch_at_two_ranks(tmp_path: Path):
    data = write_fixture_data(tmp_path / "data")
    out = tmp_path / "out"
    result = run_deepspeed(WORKER, ["smoke", str(data), str(out)], timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["train"]) == {"imagenet", "modelnet40", "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli",
                                    "rte", "wnli", "vqav2", "nlvr2", "nlvr2-paired"}
    for task, run in report["train"].items():
        assert run["steps"] and all(np.isfinite(run["losses"])), task
        assert run["same_as_one_process"], f"{task}: the 2-rank evaluation differs from one process's"
        assert len(run["evaluations"]) == 2, task  # after each of the 2 epochs
        assert (out / task / "best" / "config.yaml").is_file() and (out / task / "metrics.json").is_file(), task
    assert "validation_matched/accuracy" in report["train"]["mnli"]["evaluations"][-1]
    assert "validation_mismatched/accuracy" in report["train"]["mnli"]["evaluations"][-1]
    assert {"validation/overall_accuracy", "validation/vote2_overall_accuracy"} <= set(
        report["train"]["modelnet40"]["evaluations"][-1])
    assert {"validation/accuracy", "validation/accuracy/answer_type/yes_no"} <= set(
        report["train"]["vqav2"]["evaluations"][-1])
    assert {"validation/accuracy", "validation/consistency"} <= set(report["train"]["nlvr2"]["evaluations"][-1])
    for task in ("vqav2", "nlvr2", "nlvr2-paired"):  # from the grayscale model, in RGB at 16 × 16 (it saw 8 × 8)
        assert report["started_from_pretrained"][task] == {"backbone": True, "stem": True}, task
    assert json.loads((out / "vqav2" / "metrics.json").read_text())["metric_info"] == {"vqa_eval_revision": "2021"}
    vqa = json.loads((out / "vqav2-test" / "vqa_OpenEnded_mscoco_test-dev2015_itnet_results.json").read_text())
    assert [row["question_id"] for row in vqa] == [1000, 2000] and all(isinstance(r["answer"], str) for r in vqa)
    nlvr2 = (out / "nlvr2-test" / "nlvr2-test-P-predictions.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in nlvr2] == ["test1-0-1-0", "test1-0-2-0"]
    assert {row.split(",")[1] for row in nlvr2} <= {"True", "False"}
    sst2 = (out / "sst2-test" / "SST-2.tsv").read_text().splitlines()
    assert sst2[0] == "index\tprediction" and len(sst2) == 3 and {row.split("\t")[1] for row in sst2[1:]} <= {"0", "1"}
    mnli = (out / "mnli-test" / "MNLI-m.tsv").read_text().splitlines()
    assert {row.split("\t")[1] for row in mnli[1:]} <= {"entailment", "neutral", "contradiction"}
    imagenet = (out / "imagenet-test" / "imagenet-test.csv").read_text().splitlines()
    assert len(imagenet) == 4 and len(imagenet[1].split(",")[1].split()) == 3  # top-5 of 3 classes: all 3
    assert report["resume"] == {"resumed_at_4": True, "same_weights": True, "same_ema": True, "steps": True}
    assert report["streamed_resume"] == report["resume"]  # the training split streamed from its shard set
    ax = (out / "ax-test" / "AX.tsv").read_text().splitlines()
    assert ax[0] == "index\tprediction" and {row.split("\t")[1] for row in ax[1:]} <= {"entailment", "neutral",
                                                                                      "contradiction"}
    assert (out / "imagenet-test" / "init" / "config.yaml").is_file()  # the DeepSpeed checkpoint, converted
    assert report["probe_moved"] == ["head"]
    assert report["stopped_at"] == 2 * report["steps_per_epoch"] and report["stopped_evaluations"] == 2
    predicted = report["predicted"]  # the model folders alone, from raw inputs
    assert set(predicted["sst2"]) <= {"0", "1"} and len(predicted["sst2"]) == 2
    assert predicted["mnli"][0] in {"entailment", "neutral", "contradiction"}
    assert isinstance(predicted["stsb"][0], float)
    assert set(predicted["imagenet"]) <= set(predicted["imagenet_labels"]) == {"n01440764", "n01443537", "n01484850"}
    assert predicted["vqav2"][0] in predicted["vqav2_labels"] and predicted["nlvr2"][0] in {"True", "False"}
    summary = json.loads((out / "modelnet40-test" / "metrics.json").read_text())
    assert "test/overall_accuracy" in summary["metrics"] and len(summary["labels"]) == 40


def test_bad_keys_and_missing_files_are_refused_before_anything_starts(tmp_path: Path):
    """A typo'd key, an unknown task, a missing data root, evaluation without a model, a training shard set that
    is missing, of another kind or in units that do not divide the micro-batch, and a GLUE folder without the task's
    file each exit with status 2 and one line naming the problem, before any run folder exists."""
    (tmp_path / "corpus.txt").write_text("one document\n\nanother one\n", encoding="utf-8")
    text_set = write_text_shards(tmp_path / "corpus.txt", tmp_path / "text-shards").directory
    cases = {("epoch=3",): "epoch",
             ("task=sst3",): "task must name a benchmark",
             ("data_root=''",): "data_root is required",
             ("eval_only=true",): "eval_only=true needs init_from",
             ("optimizer.layer_decay=1.5",): "optimizer.layer_decay must be in",
             (f"train_shards.path={text_set}", "train_shards.unit_size=3"): "a multiple of train_shards.unit_size=3",
             (f"train_shards.path={tmp_path / 'nowhere'}",): "train_shards.path: ",
             (f"train_shards.path={text_set}",): "holds a 'text' shard set; sst2 trains on 'text_label' sets",
             (): "SST-2/train.tsv"}
    for extra, message in cases.items():
        run_dir = tmp_path / "run"
        process = subprocess.run([sys.executable, str(LAUNCH), "--config", str(REPO / "configs" / "finetune" /
                                  "sst2.yaml"), f"run_dir={run_dir}", f"data_root={tmp_path / 'glue'}", *extra],
                                 capture_output=True, text=True, cwd=REPO, timeout=120)
        assert process.returncode == 2, (extra, process.stdout, process.stderr)
        assert process.stderr.startswith("error: ") and message in process.stderr, (extra, process.stderr)
        assert not run_dir.exists()
