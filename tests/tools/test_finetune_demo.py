"""``tools/finetune_demo.py``'s data writers on small stand-ins for the real files (Fashion-MNIST's gzip idx files,
janeaustenr's lazy-load data base) and on the real easy-VQA package and procedural shapes, each read back by its
benchmark's own reader; the runs' commands checked by the fine-tuning config loader; the results table from what the
recipe writes."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import easy_vqa
import numpy as np
import pytest
from PIL import Image

from comparison.tasks import FASHION_FILES, TaskError
from demo_finetuning import datasets
from demo_finetuning.datasets import (
    AUSTEN_NOVELS,
    DATA_FOLDERS,
    DEMO_PAIR_THINGS,
    FASHION_NAMES,
    FASHION_WNIDS,
    SHAPE_CLASSES,
    DemoDataSizes,
    fashion_statements,
    read_descriptions,
    write_austen_sst2,
    write_demo_data,
    write_easyvqa_vqav2,
    write_fashion_imagenet,
    write_fashion_nlvr2,
    write_shapes_modelnet40,
)
from demo_finetuning.runs import DEMO_TASKS, RunResult, plan_runs, read_evaluations, results_markdown
from itnet_scale.data.meshes import SHAPES
from itnet_scale.tasks import ModelNet40, ModelNet40Settings, get_benchmark
from itnet_scale.tasks.imagenet import load_image
from itnet_scale.tasks.modelnet40 import SHAPE_NAMES
from itnet_scale.tasks.nlvr2 import Nlvr2Id
from itnet_scale.tasks.vqa import VQASettings, VQAv2, read_questions
from itnet_scale.train.finetune_config import load_finetune_config
from tests.distributed import REPO
from tests.tools.comparison.readers_fixtures import write_idx, write_lazyload

TOOL = REPO / "tools" / "finetune_demo.py"
SMALL = DemoDataSizes(fashion_train=3, fashion_val=2, fashion_test=4, austen_train=4, austen_dev=2, austen_test=3,
                      shapes_train=5, shapes_test=2, vqa_train=40, vqa_val=16, vqa_test=7, pairs_train_sets=6,
                      pairs_dev_sets=3, pairs_test_sets=2, pairs_train_pool=3, pairs_dev_pool=2, pairs_test_pool=2)


def write_fashion_idx(data_dir: Path, per_class: int = 6, test_per_class: int = 2) -> Path:
    """Fashion-MNIST's four idx files with ``per_class`` training and ``test_per_class`` test images of each class;
    an image of class ``c`` is flat gray ``20·c + 30`` with noise, so its class can be read off a decoded JPEG."""
    folder = data_dir / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for split, labels in (("train", np.repeat(np.arange(10), per_class)),
                          ("test", np.repeat(np.arange(10), test_per_class))):
        labels = labels[rng.permutation(len(labels))]
        images = np.clip(20 * labels[:, None, None] + 30 + rng.integers(-3, 4, (len(labels), 28, 28)), 0, 255)
        write_idx(folder / FASHION_FILES[f"{split}_images"], images)
        write_idx(folder / FASHION_FILES[f"{split}_labels"], labels)
    return data_dir


def test_fashion_mnist_is_written_as_an_imagenet_tree_the_benchmark_reads(tmp_path: Path):
    data = write_fashion_idx(tmp_path / "data")
    root = write_fashion_imagenet(data, tmp_path / "imagenet", SMALL, seed=0)
    imagenet = get_benchmark("imagenet").for_root(root)
    assert imagenet.label_names == FASHION_WNIDS
    assert (root / "LOC_synset_mapping.txt").read_text().splitlines()[0] == "n99000000 T-shirt/top"
    assert len((root / "LOC_synset_mapping.txt").read_text().splitlines()) == len(FASHION_NAMES)
    train, val = imagenet.read(root, "train"), imagenet.read(root, "validation")
    assert np.bincount(train.labels()).tolist() == [3] * 10 and np.bincount(val.labels()).tolist() == [2] * 10
    test = imagenet.read(root, "test")
    assert len(test.examples) == 4 and not test.labelled
    for example in train.examples + val.examples:  # each image is of the class it is filed under
        gray = np.asarray(load_image(example.inputs["image"]))[..., 0].astype(float)
        assert gray.shape == (28, 28) and round((gray.mean() - 30) / 20) == example.label, example.id
    # train and validation are disjoint draws: the 6 images of a class hold 3 + 2 of them
    pixels = [np.asarray(load_image(e.inputs["image"])).tobytes() for e in train.examples + val.examples]
    assert len(set(pixels)) == len(pixels)
    again = write_fashion_imagenet(data, tmp_path / "again", SMALL, seed=0)  # seeded: the same files
    assert (again / "LOC_val_solution.csv").read_text() == (root / "LOC_val_solution.csv").read_text()


def test_fashion_mnist_errors_name_the_missing_files_and_the_short_class(tmp_path: Path):
    with pytest.raises(TaskError, match="make fashion-mnist"):
        write_fashion_imagenet(tmp_path / "nothing", tmp_path / "out", SMALL)
    data = write_fashion_idx(tmp_path / "data", per_class=4)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: class 0 has 4 examples, fewer than the 5"):
        write_fashion_imagenet(data, tmp_path / "out", SMALL)


def novel_lines(name: str, count: int) -> list[str]:
    """A novel's lines as janeaustenr stores them: a title, a chapter heading, sentences that name the novel and
    run over line breaks, blank lines between paragraphs."""
    lines = [name.upper(), "", "CHAPTER 1", ""]
    for i in range(count):
        lines += [f"In {name} the {i} th sentence goes", "on\tover a line break here.", ""]
    return lines


def test_two_austen_novels_are_written_as_sst2_files_the_benchmark_reads(tmp_path: Path):
    pytest.importorskip("rdata")
    shared = ["Nobody could say it was not a very fine morning indeed.", ""]
    vectors = {"emma": novel_lines("emma", 20),
               "prideprejudice": novel_lines("prideprejudice", 12) + shared + novel_lines("prideprejudice", 1),
               "persuasion": novel_lines("persuasion", 10) + shared}
    write_lazyload(tmp_path / "data" / "janeaustenr" / "data", vectors, tmp_path)
    root = write_austen_sst2(tmp_path / "data", tmp_path / "glue", SMALL, seed=0)
    sst2 = get_benchmark("sst2")
    texts: list[str] = []
    for split, per_novel in (("train", 4), ("validation", 2)):
        data = sst2.read(root, split)
        assert np.bincount(data.labels()).tolist() == [per_novel, per_novel]
        for example in data.examples:  # label 0: Pride and Prejudice, 1: Persuasion
            assert f"In {AUSTEN_NOVELS[example.label]} the" in example.inputs["text"]
            assert "\t" not in example.inputs["text"] and "  " not in example.inputs["text"]
        texts += [example.inputs["text"] for example in data.examples]
    test = sst2.read(root, "test")
    assert [example.id for example in test.examples] == [str(i) for i in range(6)] and not test.labelled
    texts += [example.inputs["text"] for example in test.examples]
    assert len(set(texts)) == len(texts) == 2 * (4 + 2 + 3)  # no sentence twice (P&P repeats its first one)
    assert not any("fine morning" in text for text in texts)  # a sentence of both novels has no single label
    assert (root / "SST-2" / "train.tsv").read_text().splitlines()[0] == "sentence\tlabel"
    with pytest.raises(ValueError, match=r"persuasion has 10 distinct sentences, fewer than the 12"):
        write_austen_sst2(tmp_path / "data", tmp_path / "glue2", DemoDataSizes(austen_train=8, austen_dev=2,
                                                                               austen_test=2))


def test_shapes_are_written_as_modelnet40_normal_resampled_the_benchmark_reads(tmp_path: Path):
    root = write_shapes_modelnet40(tmp_path / "modelnet40", SMALL, seed=0)
    folder = root / "modelnet40_normal_resampled"
    assert (folder / "modelnet40_shape_names.txt").read_text().split() == list(SHAPE_NAMES)
    assert set(SHAPE_CLASSES) == set(SHAPES)
    classes = sorted(SHAPE_NAMES.index(name) for name in SHAPE_CLASSES.values())
    benchmark = ModelNet40(ModelNet40Settings(normals=True))
    splits = {split: benchmark.read(root, split) for split in ("train", "validation", "test")}
    assert sorted(set(splits["test"].labels())) == classes
    for label in classes:  # the benchmark holds out round(0.1 · 5) = 1 of each class's 5 training shapes
        assert [int((splits[s].labels() == label).sum()) for s in splits] == [4, 1, 2]
    assert splits["test"].examples[0].id == f"{SHAPE_NAMES[classes[0]]}_0006"  # numbered after the training ids
    for example in splits["train"].examples:
        points = example.inputs["points"]
        assert points.shape == (1024, 6)
        np.testing.assert_allclose(np.linalg.norm(points[:, 3:], axis=1), 1.0, atol=1e-4)
        assert np.linalg.norm(points[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-4)
    # the class is the shape: a box's (dresser's) normals take 6 directions, a sphere's (vase's) hundreds
    by_name = {SHAPE_NAMES[e.label]: e.inputs["points"] for e in splits["train"].examples}
    assert len(np.unique(np.round(by_name["dresser"][:, 3:], 2), axis=0)) == 6
    assert len(np.unique(np.round(by_name["vase"][:, 3:], 2), axis=0)) > 100
    with pytest.raises(FileExistsError, match="not empty"):
        write_shapes_modelnet40(root, SMALL)


def test_easy_vqa_is_written_as_vqa_v2_files_the_benchmark_reads(tmp_path: Path):
    root = write_easyvqa_vqav2(tmp_path / "vqav2", SMALL, seed=0)
    benchmark = VQAv2(VQASettings(min_answer_count=1)).for_root(root)
    assert set(benchmark.label_names) <= set(easy_vqa.get_answers()) and "yes" in benchmark.label_names
    texts, answers, image_ids = easy_vqa.get_train_questions()
    truth = {(image_id, text): answer for text, answer, image_id in zip(texts, answers, image_ids)}
    test_texts, test_answers, test_image_ids = easy_vqa.get_test_questions()
    test_truth = {(image_id, text): answer for text, answer, image_id in zip(test_texts, test_answers, test_image_ids)}
    splits = {split: benchmark.read(root, split) for split in ("train", "validation", "test-dev", "test")}
    assert [len(splits[s].examples) for s in splits] == [40, 16, 4, 7] and not splits["train"].skipped
    for split, known in (("train", truth), ("validation", test_truth)):
        for example in splits[split].examples:
            image_id = int(example.id) // 1000
            answer = known[(image_id, example.inputs["text"])]  # the question and answer easy-VQA gives that image
            annotation = example.annotation
            assert annotation.answers == (answer,) * 10 and annotation.multiple_choice_answer == answer
            assert annotation.answer_type == ("yes/no" if answer in ("yes", "no") else "other")
            assert example.inputs["text"].startswith(annotation.question_type)
            if answer in benchmark.label_names:  # ten equal answers: score 1 (validation keeps unknown answers)
                assert example.label == ((benchmark.label_names.index(answer), 1.0),)
            else:
                assert split == "validation" and example.label == ()
            folder = "train2014" if split == "train" else "val2014"
            assert example.inputs["image"].name == f"COCO_{folder}_{image_id:012d}.jpg"
    example = splits["train"].examples[0]  # the image is easy-VQA's (JPEG-compressed)
    with Image.open(example.inputs["image"]) as written, Image.open(
            easy_vqa.get_train_image_paths()[int(example.id) // 1000]) as source:
        assert written.size == (64, 64) and written.mode == "RGB"
        assert np.abs(np.asarray(written, float) - np.asarray(source.convert("RGB"), float)).mean() < 4
    # every answer is right once predicted: the accuracy of the answers themselves is 1, of "yes" the share of yes
    validation = splits["validation"]
    scores = np.zeros((len(validation.examples), len(benchmark.label_names)))
    for row, example in enumerate(validation.examples):
        scores[row, example.label[0][0] if example.label else 0] = 1
    known = np.mean([bool(example.label) for example in validation.examples])
    assert benchmark.evaluate_split(scores, validation)["accuracy"] == pytest.approx(known)
    yes = np.zeros_like(scores)
    yes[:, benchmark.label_names.index("yes")] = 1
    share = np.mean([e.annotation.answers[0] == "yes" for e in validation.examples])
    assert benchmark.evaluate_split(yes, validation)["accuracy"] == pytest.approx(share)
    # validation and test questions are on disjoint test images; test-dev is part of test (as in VQA v2)
    image_of = {split: {int(e.id) // 1000 for e in splits[split].examples} for split in splits}
    assert not image_of["validation"] & image_of["test"] and image_of["test-dev"] <= image_of["test"]
    assert {e.id for e in splits["test-dev"].examples} <= {e.id for e in splits["test"].examples}
    again = write_easyvqa_vqav2(tmp_path / "again", SMALL, seed=0)  # seeded: the same files
    other = write_easyvqa_vqav2(tmp_path / "other", SMALL, seed=1)
    for name in ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_val2014_annotations.json",
                 "v2_OpenEnded_mscoco_test-dev2015_questions.json"):
        assert (again / name).read_bytes() == (root / name).read_bytes()
    assert read_questions(other / "v2_OpenEnded_mscoco_train2014_questions.json") != read_questions(
        root / "v2_OpenEnded_mscoco_train2014_questions.json")


def test_easy_vqa_errors_name_the_answer_and_the_size(tmp_path: Path, monkeypatch):
    with pytest.raises(ValueError, match=r"DemoDataSizes.vqa_train: easy-VQA has 38575 training questions"):
        write_easyvqa_vqav2(tmp_path / "big", DemoDataSizes(vqa_train=40000), seed=0)
    image = tmp_path / "0.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setitem(datasets.EASY_VQA_SOURCES, "train", (lambda: (["is it red?"], ["Yes."], [0]),
                                                             lambda: {0: str(image)}))
    with pytest.raises(ValueError, match=r"easy-VQA answer 'Yes.' is not in VQA's normal form \('yes'\)"):
        write_easyvqa_vqav2(tmp_path / "vqav2", SMALL, seed=0)


#: Which Fashion-MNIST labels each thing a statement names covers (read off the class names, not the writer's table).
STATEMENT_THINGS = {"a t-shirt": {0}, "trousers": {1}, "a pullover": {2}, "a dress": {3}, "a coat": {4},
                    "a sandal": {5}, "a shirt": {6}, "a sneaker": {7}, "a bag": {8}, "an ankle boot": {9},
                    "footwear": {5, 7, 9}, "clothing for the upper body": {0, 2, 4, 6}}


def statement_is_true(sentence: str, left: int, right: int) -> bool:
    """Whether a statement of the pair data holds of images of labels ``left`` and ``right``."""
    if sentence.startswith("The two images show"):
        return (left == right) == (sentence == "The two images show the same kind of item.")
    form, thing = re.fullmatch(r"(The left image shows|The right image shows|Both images show|Exactly one image "
                               r"shows|Neither image shows) (.+)\.", sentence).groups()
    shows = [label in STATEMENT_THINGS[thing] for label in (left, right)]
    return {"The left image shows": shows[0], "The right image shows": shows[1], "Both images show": all(shows),
            "Exactly one image shows": sum(shows) == 1, "Neither image shows": not any(shows)}[form]


def test_fashion_pairs_are_written_as_nlvr2_files_the_benchmark_reads(tmp_path: Path):
    data = write_fashion_idx(tmp_path / "data")
    root = write_fashion_nlvr2(data, tmp_path / "nlvr2", SMALL, seed=0, things=None)  # all 62 statements
    nlvr2 = get_benchmark("nlvr2")
    pixels: dict[str, set[bytes]] = {}
    sides: list[tuple[int, int]] = []
    for split, sets in (("train", 6), ("validation", 3), ("test-P", 2)):
        read = nlvr2.read(root, split)
        assert len(read.examples) == 4 * sets and not read.skipped
        assert np.bincount(read.labels()).tolist() == [2 * sets, 2 * sets]  # balanced: 2 true, 2 false per set
        by_sentence: dict[str, list] = {}
        for example in read.examples:
            by_sentence.setdefault(Nlvr2Id.parse(example.id).sentence_key, []).append(example)
        assert len(by_sentence) == sets  # one sentence over the 4 pairs of each set
        for group in by_sentence.values():
            assert len({e.inputs["text"] for e in group}) == 1 and sorted(e.label for e in group) == [0, 0, 1, 1]
        for example in read.examples:  # the statement is true of the pair's real classes exactly when labelled True
            images = [np.asarray(load_image(path)) for path in example.inputs["images"]]
            assert all(image.shape == (28, 28, 3) for image in images)
            left, right = (round((image[..., 0].mean() - 30) / 20) for image in images)
            assert statement_is_true(example.inputs["text"], left, right) == bool(example.label), example.id
            sides.append((left, right))
            pixels.setdefault(split, set()).update(image.tobytes() for image in images)
    assert not pixels["train"] & pixels["validation"]  # disjoint pools of the training file
    assert min(len({pair[side] for pair in sides}) for side in (0, 1)) >= 5  # both sides show varied classes
    assert (root / "data" / "test1.json").read_text().startswith('{"identifier": "test1-0-0-0"')
    again = write_fashion_nlvr2(data, tmp_path / "again", SMALL, seed=0, things=None)  # seeded: the same files
    assert (again / "data" / "train.json").read_bytes() == (root / "data" / "train.json").read_bytes()
    assert (again / "images" / "dev" / "dev-2-3-img1.png").read_bytes() == (
        root / "images" / "dev" / "dev-2-3-img1.png").read_bytes()
    with pytest.raises(ValueError, match=r"pairs_\*_pool must be >= 2"):
        write_fashion_nlvr2(data, tmp_path / "small", DemoDataSizes(pairs_dev_pool=1))


def test_every_statement_is_true_of_some_label_pairs_and_false_of_others():
    statements = fashion_statements()
    assert len({sentence for sentence, _ in statements}) == len(statements) == 5 * 12 + 2
    for sentence, table in statements:
        assert table.shape == (10, 10) and table.any() and not table.all(), sentence
        assert all(statement_is_true(sentence, left, right) == table[left, right]
                   for left in range(10) for right in range(10)), sentence
    demo = fashion_statements(DEMO_PAIR_THINGS, same_or_different=False)  # what the demo writes by default
    assert [sentence for sentence, _ in demo] == ["The left image shows footwear.", "The right image shows footwear.",
                                                  "Both images show footwear.", "Exactly one image shows footwear.",
                                                  "Neither image shows footwear."]
    with pytest.raises(ValueError, match=r"unknown things \['hats'\]"):
        fashion_statements(["hats"])


def test_the_demo_pairs_hold_the_footwear_statements_true_of_their_images(tmp_path: Path):
    root = write_fashion_nlvr2(write_fashion_idx(tmp_path / "data"), tmp_path / "nlvr2", SMALL, seed=0)
    read = get_benchmark("nlvr2").read(root, "train")
    assert {example.inputs["text"] for example in read.examples} <= {s for s, _ in fashion_statements(["footwear"])}
    for example in read.examples:
        left, right = (round((np.asarray(load_image(path))[..., 0].mean() - 30) / 20)
                       for path in example.inputs["images"])
        assert statement_is_true(example.inputs["text"], left, right) == bool(example.label), example.id


def write_demo_data_from_stand_ins(tmp_path: Path) -> Path:
    """The five data sets in SMALL sizes from stand-ins for the downloads, as ``finetune_demo.py data`` writes them."""
    pytest.importorskip("rdata")
    data = write_fashion_idx(tmp_path / "downloads")
    write_lazyload(data / "janeaustenr" / "data", {name: novel_lines(name, 12) for name in AUSTEN_NOVELS}, tmp_path)
    write_demo_data(data, tmp_path / "demo", SMALL, seed=0)
    return tmp_path / "demo"


def test_the_manifest_describes_the_data_as_its_benchmarks_read_it(tmp_path: Path):
    out = write_demo_data_from_stand_ins(tmp_path)
    descriptions = read_descriptions(out)
    for name, benchmark, validation in (("fashion", "imagenet", "val"), ("austen", "sst2", "dev"),
                                        ("shapes", "modelnet40", "val"), ("easyvqa", "vqav2", "val questions"),
                                        ("fashion_pairs", "nlvr2", "dev")):
        root = out / DATA_FOLDERS[name]
        reader = (VQAv2(VQASettings(min_answer_count=1)) if benchmark == "vqav2" else
                  get_benchmark(benchmark)).for_root(root)
        counts = [len(reader.read(root, split).examples) for split in ("train", "validation")]
        assert descriptions[name].endswith(f", {counts[0]} train / {counts[1]} {validation}"), descriptions[name]
    assert descriptions["shapes"] == "synthetic shapes, 6 classes, 24 train / 6 val"  # 1 of 5 per class held out
    with pytest.raises(FileNotFoundError, match=r"demo_data.json: missing; write the demo data first"):
        read_descriptions(tmp_path)


def test_every_planned_command_is_a_valid_fine_tuning_config(tmp_path: Path):
    data = write_demo_data_from_stand_ins(tmp_path)
    runs = plan_runs(data, tmp_path / "model", tmp_path / "out")
    assert [(run.task.name, run.init) for run in runs] == [(task.name, init) for task in DEMO_TASKS
                                                           for init in ("pretrained", "scratch")]
    for run in runs:
        assert run.command[1:4] == ["--num_accelerators", "2", "launch/finetune.py"]
        config_file = run.command[run.command.index("--config") + 1]
        overrides = run.command[run.command.index("--config") + 2:]
        config = load_finetune_config(REPO / config_file, overrides)  # every key and value checked
        assert config.task == run.task.name and config.deepspeed.precision == "fp32" and config.ema.decay == 0
        assert Path(config.run_dir) == run.run_dir and Path(config.data_root) == data / DATA_FOLDERS[run.task.data]
        train = config.benchmark.for_root(Path(config.data_root)).read(Path(config.data_root), "train")
        assert not train.skipped  # (vqav2: every answer is a class)
        if run.init == "pretrained":  # the task's layer-wise decay (sst2 0.9, imagenet 0.65; modelnet40 none)
            task_config = load_finetune_config(REPO / config_file, [f"data_root={tmp_path}"])
            assert config.init_from == str(tmp_path / "model")
            assert config.optimizer.layer_decay == task_config.optimizer.layer_decay
        else:
            assert config.init_from is None and config.optimizer.layer_decay == 1.0
    image = load_finetune_config(REPO / runs[0].command[5], runs[0].command[6:])
    assert image.augment.image.size == 32 and image.augment.image.channels == 3
    by_task = {run.task.name: load_finetune_config(REPO / run.command[5], run.command[6:]) for run in runs
               if run.init == "pretrained"}
    assert by_task["vqav2"].vqav2.min_answer_count == 1 and by_task["vqav2"].augment.image.size == 32
    assert by_task["nlvr2"].model_overrides["image_pair_form"] == "single"
    assert by_task["nlvr2"].augment.image.channels == 3 and by_task["nlvr2"].augment.image.hflip == 0


def test_results_table_from_what_the_recipe_writes(tmp_path: Path):
    """metrics.json and eval.jsonl as the recipe writes them → the table and pretrained − scratch."""
    def result(init: str, best: float, curve: list[float]) -> RunResult:
        run = tmp_path / f"sst2-{init}"
        run.mkdir()
        (run / "eval.jsonl").write_text("".join(json.dumps({"step": 10 * (i + 1), "validation/accuracy": v}) + "\n"
                                                for i, v in enumerate(curve)))
        metrics = {"task": "sst2", "primary_metric": "validation/accuracy", "best": best,
                   "best_step": 10 * (curve.index(best) + 1), "steps": 10 * len(curve)}
        return RunResult("sst2", init, "Austen", str(run), ["deepspeed"], 125.0, 0, metrics,
                         read_evaluations(run / "eval.jsonl"))

    failed = RunResult("imagenet", "scratch", "Fashion-MNIST", str(tmp_path / "imagenet-scratch"), ["deepspeed"],
                       3.0, 1)
    table = results_markdown([result("pretrained", 0.8, [0.7, 0.8, 0.75]), result("scratch", 0.72, [0.6, 0.72, 0.7]),
                              failed])
    assert "| sst2 | Austen | pretrained | validation/accuracy | 0.8000 (step 20) | 30 | 2:05 |" in table
    assert ("| sst2 | validation/accuracy | 0.8000 | 0.7200 | +0.0800 | 0.7000 / 0.6000 (step 10) | at step 20 of 30 |"
            in table)
    assert "| imagenet | Fashion-MNIST | scratch | — | failed (exit 1;" in table


def test_the_command_line_refuses_missing_data_and_unknown_tasks(tmp_path: Path, capsys):
    spec = importlib.util.spec_from_file_location("finetune_demo", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    finetune_demo_main = tool.main
    assert finetune_demo_main(["data", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "make fashion-mnist" in capsys.readouterr().err
    assert finetune_demo_main(["run", "--data", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path),
                               "--tasks", "cifar"]) == 2
    assert "unknown task(s) ['cifar']" in capsys.readouterr().err
    assert finetune_demo_main(["run", "--data", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not a library-format model folder" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("task: pretraining\n")
    assert finetune_demo_main(["run", "--data", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "demo_data.json: missing" in capsys.readouterr().err
