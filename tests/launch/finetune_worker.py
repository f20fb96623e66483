"""Runs on every rank (``deepspeed --num_accelerators 2``): each task config of ``configs/finetune`` fine-tuned for
one epoch on fixture data in the benchmarks' real layouts, then evaluated only (the submission files), with a
check that the exactly-once evaluation over the ranks gives what one process computes on the whole split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.train.finetune_config import load_finetune_config
from itnet_scale.train.finetuning import Finetuner
from itnet_scale.train.prediction import FineTunedModel

REPO = Path(__file__).resolve().parents[2]
GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
#: A small model and one step per epoch on the fixtures (2 ranks × 1 example per micro-step).
SMALL = {"model": "tiny", "model_overrides.dim": 32, "model_overrides.depth": 2, "model_overrides.heads": 2,
         "model_overrides.point_tokens": 8, "model_overrides.point_group_size": 8, "model_overrides.patch_size": 4,
         "model_overrides.point_hidden": 16, "deepspeed.micro_batch_size": 1, "deepspeed.precision": "fp32",
         "epochs": 2, "eval.batch_size": 2, "logging.print_every": 1, "ema.decay": 0.0}


def overrides(name: str, data: Path, run: Path, **extra: object) -> list[str]:
    root = {"imagenet": data / "imagenet", "modelnet40": data / "modelnet40", "vqav2": data / "vqav2",
            "nlvr2": data / "nlvr2", **{t: data / "glue" for t in GLUE}}
    values = {**SMALL, "data_root": root[name], "run_dir": run, "tokenizer": data / "tokenizer", **extra}
    if name in ("imagenet", "vqav2", "nlvr2"):
        values |= {"augment.image.size": 16, "eval.batch_size": 3}
    if name in ("vqav2", "nlvr2") and "init_from" not in extra:  # RGB at 16 × 16 from the 8 × 8 grayscale model
        values |= {"init_from": data / "pretrained-gray"}
    if name == "vqav2":
        values |= {"vqav2.min_answer_count": 1}
    if name == "modelnet40":
        values |= {"eval.votes": 2}
    return [f"{key}={value}" for key, value in values.items()]


def config(name: str, data: Path, run: Path, **extra: object):
    """``configs/finetune/NAME.yaml`` small, on the fixture data (``extra``: more overrides, ``task`` included)."""
    return load_finetune_config(REPO / "configs" / "finetune" / f"{name}.yaml", overrides(name, data, run, **extra))


def started_from(trainer: Finetuner, folder: Path) -> dict[str, bool]:
    """Whether the task model starts from ``folder``'s backbone, its grayscale stem adapted to RGB (timm's rule:
    each of the 3 channels gets the gray weight / 3)."""
    pretrained = ITNetForPretraining.from_pretrained(folder).itnet
    model = trainer.engine.module.itnet
    backbone = all(torch.equal(a, b) for a, b in zip(pretrained.backbone.state_dict().values(),
                                                     model.backbone.state_dict().values(), strict=True))
    gray = next(p for p in pretrained.encoder.image.parameters() if p.dim() == 4)
    rgb = next(p for p in model.encoder.image.parameters() if p.dim() == 4)
    return {"backbone": backbone, "stem": rgb.shape[1] == 3 and torch.allclose(rgb, (gray / 3).expand_as(rgb))}


def smoke(data: Path, out: Path) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    report, pretrained = {}, {}
    runs = {task: (task, {}) for task in ("imagenet", "modelnet40", *GLUE, "vqav2", "nlvr2")}
    runs["nlvr2-paired"] = ("nlvr2", {"model_overrides.image_pair_form": "paired"})
    for task, (name, extra) in runs.items():
        trainer = Finetuner(config(name, data, out / task, **extra))
        if name in ("vqav2", "nlvr2"):
            pretrained[task] = started_from(trainer, data / "pretrained-gray")
        result = trainer.run()
        recipe = trainer.recipe
        model = trainer.engine.module
        split = next(iter(recipe.eval_splits.values()))
        gathered = recipe.predict(model, split)
        with torch.no_grad():  # one process, the whole split, no partition
            model.eval()
            inputs = recipe.batcher.inputs(split.examples)
            whole = model(inputs).float().numpy()
            model.train()
        report[task] = {"steps": [r.step for r in result.records], "evaluations": result.evaluations,
                        "examples": len(split.examples), "same_as_one_process": bool(np.allclose(gathered, whole,
                                                                                              atol=1e-5)),
                        "losses": [r.losses["task"] for r in result.records]}
    evaluated = {}
    for task, split in (("sst2", "test"), ("mnli", "test_matched"), ("modelnet40", "test"), ("vqav2", "test-dev"),
                        ("nlvr2", "test-P")):
        best = out / task / "best"
        trainer = Finetuner(config(task, data, out / f"{task}-test", init_from=best, eval_only=True, split=split))
        evaluated[task] = trainer.evaluate_only()
    # A DeepSpeed checkpoint folder as init_from: converted on the fly into RUN/init.
    trainer = Finetuner(config("imagenet", data, out / "imagenet-test", init_from=out / "imagenet" / "checkpoints",
                               eval_only=True, split="test"))
    evaluated["imagenet"] = trainer.evaluate_only()
    # AX: the MNLI model on the diagnostic set (a benchmark without training data).
    trainer = Finetuner(config("mnli", data, out / "ax-test", task="ax", init_from=out / "mnli" / "best",
                               eval_only=True))
    evaluated["ax"] = trainer.evaluate_only()
    resumed = resume(data, out)
    streamed = resume(data, out, **{"train_shards.path": data / "imagenet-train-shards", "train_shards.unit_size": 1})
    others = probe_and_early_stopping(data, out)
    if rank == 0:
        predicted = predictions(data, out)
        (out / "report.json").write_text(json.dumps({"train": report, "eval_only": evaluated, "resume": resumed,
                                                     "started_from_pretrained": pretrained,
                                                     "streamed_resume": streamed,
                                                     "predicted": predicted, **others}))


def probe_and_early_stopping(data: Path, out: Path) -> dict[str, object]:
    """A linear probe moves the head only; early stopping ends a run whose metric stops improving."""
    probe = Finetuner(config("sst2", data, out / "probe", linear_probe=True, epochs=1))
    before = {name: p.detach().clone() for name, p in probe.engine.module.named_parameters()}
    probe.run()
    moved = sorted({name.split(".")[0] for name, p in probe.engine.module.named_parameters()
                    if not torch.equal(p, before[name])})
    # min_delta 10: no evaluation after the first counts as an improvement; patience 1 stops after the second.
    stopping = Finetuner(config("sst2", data, out / "stopping", epochs=4, **{"early_stopping.patience": 1,
                                                                               "early_stopping.min_delta": 10.0}))
    result = stopping.run()
    return {"probe_moved": moved, "stopped_at": stopping.step, "steps_per_epoch": stopping.recipe.plan.steps_per_epoch,
            "stopped_evaluations": len(result.evaluations)}


def predictions(data: Path, out: Path) -> dict[str, object]:
    """The best model folders on their own, from raw inputs, against the recipe's own evaluation of them."""
    sst2 = FineTunedModel.from_pretrained(out / "sst2" / "best")
    mnli = FineTunedModel.from_pretrained(out / "mnli" / "best")
    stsb = FineTunedModel.from_pretrained(out / "stsb" / "best")
    images = FineTunedModel.from_pretrained(out / "imagenet" / "best")
    val = sorted((data / "imagenet" / "val").iterdir())
    vqa = FineTunedModel.from_pretrained(out / "vqav2" / "best")
    coco = sorted((data / "vqav2" / "val2014").iterdir())
    nlvr2 = FineTunedModel.from_pretrained(out / "nlvr2-paired" / "best")
    dev = sorted((data / "nlvr2" / "dev").iterdir())
    return {"vqav2": vqa.predict([(coco[0], "What color is it?")]), "vqav2_labels": vqa.label_names,
            "nlvr2": nlvr2.predict([((dev[0], dev[1]), "Both images show bottles.")]),
            "sst2": sst2.predict(["a gripping film", "tedious and long"]),
            "mnli": mnli.predict([("A man plays a guitar.", "A person makes music.")]),
            "stsb": stsb.predict([("A cat sits.", "A cat is sitting.")]),
            "imagenet": images.predict(val[:2]), "imagenet_labels": images.label_names}


def resume(data: Path, out: Path, **extra: object) -> dict[str, bool]:
    """ImageNet with mixup, label smoothing, augmentation and an EMA, 3 steps per epoch: stopped after step 4 (in
    the middle of the second epoch) and resumed, it ends with the weights and EMA of the uninterrupted run.
    ``extra``: more overrides (``train_shards.path``: the same, streaming the training split from shards)."""
    settings = {"epochs": 3, "ema.decay": 0.9, "augment.mix.mixup_alpha": 0.8, "augment.mix.cutmix_alpha": 1.0,
                "checkpoint.save_every": 100, "eval.every_epochs": 0, "eval.at_end": False, **extra}
    name = "streamed" if extra else "files"
    whole = Finetuner(config("imagenet", data, out / f"whole-{name}", **settings))
    whole.run()
    parted = Finetuner(config("imagenet", data, out / f"parted-{name}", **settings))
    parted.total_steps = 4  # stops after step 4 (and saves); the LR schedule was built for the 9 steps
    parted.run()
    resumed = Finetuner(config("imagenet", data, out / f"parted-{name}", **settings))
    started = resumed.step
    resumed.run()
    same = all(torch.equal(a, b) for a, b in zip(whole.engine.module.state_dict().values(),
                                                 resumed.engine.module.state_dict().values(), strict=True))
    ema = all(torch.equal(a, b) for a, b in zip(whole.recipe.ema.state_dict()["weights"].values(),
                                                resumed.recipe.ema.state_dict()["weights"].values(), strict=True))
    return {"resumed_at_4": started == 4, "same_weights": same, "same_ema": ema,
            "steps": whole.step == resumed.step == 9}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["smoke"])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    smoke(args.data, args.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
