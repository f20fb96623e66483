"""itnet_scale.data.tokenizer: config loading, training from text files and shard sets, the Tokenizer wrapper."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import sentencepiece as spm
import torch
from PIL import Image

from itnet_scale.data.shards import write_image_folder_shards, write_text_shards
from itnet_scale.data.tokenizer import (
    SpecialTokens,
    Tokenizer,
    TokenizerConfig,
    load_tokenizer_config,
    train_tokenizer,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"
SENTENCE = "The assert statement is a convenient way to insert debugging assertions into a program."


def write_corpus(folder: Path) -> list[Path]:
    """The stdlib's pydoc topics as three plain-text files (documents separated by blank lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(topics)
    paths = []
    for part in range(3):
        path = folder / f"part{part}.txt"
        path.write_text("\n\n".join(topics[name] for name in names[part::3]), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tokenizer(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    config = TokenizerConfig(vocab_size=1000, inputs=[str(p) for p in corpus])
    return train_tokenizer(config, tmp_path_factory.mktemp("tokenizer"))


def test_training_writes_model_and_resolved_config(tokenizer: Tokenizer, corpus: list[Path]) -> None:
    directory = tokenizer.model_file.parent
    assert tokenizer.model_file.name == "tokenizer.model"
    config = load_tokenizer_config(directory / "tokenizer.yaml")
    assert config == TokenizerConfig(vocab_size=1000, inputs=[str(p) for p in corpus])
    assert tokenizer.vocab_size == 1000
    reloaded = Tokenizer.from_dir(directory)
    assert reloaded.encode(SENTENCE) == tokenizer.encode(SENTENCE)


def test_specials_are_single_fixed_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "image": 5, "point": 6}
    pieces = [tokenizer.processor.id_to_piece(i) for i in range(7)]
    assert pieces == ["<pad>", "<unk>", "<cls>", "<sep>", "<mask>", "<image>", "<point>"]
    # Control symbols are never produced from raw text, and decode drops them.
    ids = tokenizer.encode("fill the <mask> here")
    assert not set(ids) & set(range(7))
    assert tokenizer.decode([tokenizer.cls_id, *tokenizer.encode(SENTENCE), tokenizer.sep_id, 0, 0]) == SENTENCE


def test_training_from_a_shard_set_matches_training_from_the_files(corpus: list[Path], tokenizer: Tokenizer,
                                                                    tmp_path: Path) -> None:
    """The same documents as a text shard set give the same sentences, hence the same model, byte for byte."""
    shards = tmp_path / "shards"
    write_text_shards(corpus[0].parent, shards, max_count=300)
    assert len(list(shards.glob("shard-*.tar"))) > 1
    from_shards = train_tokenizer(TokenizerConfig(vocab_size=1000, inputs=[str(shards)]), tmp_path / "a")
    assert from_shards.model_file.read_bytes() == tokenizer.model_file.read_bytes()
    from_glob = train_tokenizer(TokenizerConfig(vocab_size=1000, inputs=[str(corpus[0].parent / "*.txt")]),
                                tmp_path / "b")
    assert from_glob.model_file.read_bytes() == tokenizer.model_file.read_bytes()


def test_bpe_and_custom_specials(corpus: list[Path], tmp_path: Path) -> None:
    config = load_tokenizer_config(CONFIGS / "demo.yaml", ["model_type=bpe", "vocab_size=600",
                                                           f"inputs=[{corpus[1]}]", "specials.mask='[MASK]'"])
    tokenizer = train_tokenizer(config, tmp_path)
    reloaded = Tokenizer.from_dir(tmp_path)
    assert reloaded.processor.id_to_piece(reloaded.mask_id) == "[MASK]"
    assert reloaded.mask_id == 4 and tokenizer.vocab_size == 600
    assert reloaded.decode(reloaded.encode(SENTENCE)) == SENTENCE


def test_batch_encode_pads_and_masks(tokenizer: Tokenizer) -> None:
    short = "a short text"
    body, short_body = tokenizer.encode(SENTENCE), tokenizer.encode(short)
    ids, mask = tokenizer.batch_encode([SENTENCE, short], max_length=64)
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, : len(body) + 2].tolist() == [2, *body, 3]
    assert ids[1, : len(short_body) + 2].tolist() == [2, *short_body, 3]
    assert mask.sum(1).tolist() == [len(body) + 2, len(short_body) + 2]
    assert (ids[~mask] == tokenizer.pad_id).all()
    assert tokenizer.decode(ids[0]) == SENTENCE and tokenizer.decode(ids[1]) == short

    longest, longest_mask = tokenizer.batch_encode([SENTENCE, short], max_length=64, pad_to="longest")
    assert longest.shape == (2, len(body) + 2) and longest_mask[0].all()
    assert torch.equal(longest, ids[:, : len(body) + 2])
    exact, _ = tokenizer.batch_encode([short], max_length=64, pad_to=40)
    assert exact.shape == (1, 40)
    bare, bare_mask = tokenizer.batch_encode([short], max_length=64, add_cls=False, add_sep=False, pad_to="longest")
    assert bare[0].tolist() == short_body and bare_mask.all()


def test_batch_encode_truncates_counting_specials(tokenizer: Tokenizer) -> None:
    body = tokenizer.encode(SENTENCE)
    assert len(body) > 8
    ids, mask = tokenizer.batch_encode([SENTENCE], max_length=8)
    assert ids[0].tolist() == [2, *body[:6], 3] and mask.all()
    ids, _ = tokenizer.batch_encode([SENTENCE], max_length=8, add_sep=False)
    assert ids[0].tolist() == [2, *body[:7]]


def test_batch_encode_bad_arguments(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"pad_to=4 is shorter than the longest row"):
        tokenizer.batch_encode([SENTENCE], max_length=16, pad_to=4)
    with pytest.raises(ValueError, match=r"pad_to must be None, an int or 'longest'"):
        tokenizer.batch_encode([SENTENCE], max_length=16, pad_to="max")
    with pytest.raises(ValueError, match=r"max_length=1 leaves no room"):
        tokenizer.batch_encode([SENTENCE], max_length=1)
    with pytest.raises(TypeError, match=r"sequence of texts"):
        tokenizer.batch_encode(SENTENCE, max_length=16)


def test_encode_pair_truncates_the_longer_side_first(tokenizer: Tokenizer) -> None:
    a, b = tokenizer.encode(SENTENCE), tokenizer.encode("yes")
    ids, types = tokenizer.encode_pair(SENTENCE, "yes", max_length=64)
    assert ids == [2, *a, 3, *b, 3]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    ids, types = tokenizer.encode_pair(SENTENCE, "yes", max_length=len(b) + 3 + 4)
    assert ids == [2, *a[:4], 3, *b, 3] and len(types) == len(ids) and sum(types) == len(b) + 1
    # both sides long: cut alternately from the longer, ending balanced
    ids, types = tokenizer.encode_pair(SENTENCE, SENTENCE, max_length=13)
    assert ids == [2, *a[:5], 3, *a[:5], 3] and types == [0] * 7 + [1] * 6
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room"):
        tokenizer.encode_pair("a", "b", max_length=2)


def test_batch_encode_pairs_gives_ids_segments_and_mask(tokenizer: Tokenizer) -> None:
    """Sentence pairs as model input: one row per pair, <cls> a <sep> b <sep>, segment 1 from b on, padding in
    segment 0 and masked; longest_first truncation cuts the longer text (the first or the second)."""
    question = "What does the assert statement do?"
    a, q, yes = tokenizer.encode(SENTENCE), tokenizer.encode(question), tokenizer.encode("yes")
    length = len(yes) + len(q) + 4  # row 1 fits with one token to spare; row 0 does not
    assert len(a) > len(q) + 1
    ids, segments, mask = tokenizer.batch_encode_pairs([SENTENCE, "yes"], ["yes", question], max_length=length)
    assert ids.shape == segments.shape == mask.shape == (2, length)
    assert segments.dtype == torch.long and mask.dtype == torch.bool
    budget = length - 3  # the tokens left for the two texts
    # row 0: the first text is the longer one and is cut to fit the short second text whole
    assert ids[0].tolist() == [2, *a[: budget - len(yes)], 3, *yes, 3]
    assert segments[0].tolist() == [0] * (budget - len(yes) + 2) + [1] * (len(yes) + 1)
    assert mask[0].all()
    # row 1: both fit; the rest is padding (id 0, segment 0, masked)
    real = len(yes) + len(q) + 3
    assert ids[1, :real].tolist() == [2, *yes, 3, *q, 3] and (ids[1, real:] == tokenizer.pad_id).all()
    assert segments[1].tolist() == [0] * (len(yes) + 2) + [1] * (len(q) + 1) + [0] * (ids.shape[1] - real)
    assert mask[1].tolist() == [True] * real + [False] * (ids.shape[1] - real)
    assert [ids[1, :real].tolist(), segments[1, :real].tolist()] == list(tokenizer.encode_pair("yes", question, 64))
    # the second text longer: it is the one cut
    cut = tokenizer.batch_encode_pairs(["yes"], [SENTENCE], max_length=len(yes) + 3 + 5, pad_to="longest")
    assert cut.ids[0].tolist() == [2, *yes, 3, *a[:5], 3] and cut.attention_mask.all()
    # equal lengths one token over: the second loses it (Hugging Face's longest_first)
    tie = tokenizer.batch_encode_pairs([question], [question], max_length=2 * len(q) + 2, pad_to="longest")
    assert tie.ids[0].tolist() == [2, *q, 3, *q[:-1], 3]
    assert tokenizer.batch_encode_pairs(["yes"], ["no"], max_length=64, pad_to=32).ids.shape == (1, 32)
    with pytest.raises(ValueError, match=r"batch_encode_pairs: 2 first texts but 1 second texts"):
        tokenizer.batch_encode_pairs(["a", "b"], ["c"], max_length=16)
    with pytest.raises(TypeError, match=r"two sequences of texts, got a str"):
        tokenizer.batch_encode_pairs("a", ["c"], max_length=16)
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room for <cls> and two <sep>"):
        tokenizer.batch_encode_pairs(["a"], ["c"], max_length=2)


def test_shipped_configs_load() -> None:
    demo = load_tokenizer_config(CONFIGS / "demo.yaml")
    assert demo == TokenizerConfig()  # the demo build trains with the dataclass defaults
    default = load_tokenizer_config(CONFIGS / "default.yaml")
    assert default.vocab_size == 32000 and default.model_type == "unigram"
    assert asdict(default.specials) == asdict(SpecialTokens())


@pytest.mark.parametrize(("override", "message"), [
    ("vocab_size=many", r"override 'vocab_size=many'.*key 'vocab_size'"),
    ("vocab_sise=100", r"key 'vocab_sise'.*not in 'TokenizerConfig'"),
    ("specials.masks=[M]", r"key 'specials.masks'"),
    ("vocab_size=10", r"demo\.yaml with overrides \[.vocab_size=10.\]: vocab_size must be >= 23"),
    ("model_type=word", r"model_type must be one of \('unigram', 'bpe'\), got 'word'"),
    ("character_coverage=1.5", r"character_coverage must be in \(0, 1\]"),
    ("num_threads=0", r"num_threads must be >= 1"),
    ("specials.sep=<cls>", r"specials must be distinct"),
    ("specials.pad=a b", r"specials.pad must be a non-empty piece without whitespace"),
    ("vocab_size", r"override 'vocab_size': expected key=value"),
])
def test_bad_config_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_tokenizer_config(CONFIGS / "demo.yaml", [override])


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("vocab_size: 500\nlowercase: true\n")
    with pytest.raises(ValueError, match=r"unknown\.yaml: bad tokenizer config key 'lowercase'"):
        load_tokenizer_config(unknown)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- vocab_size\n")
    with pytest.raises(ValueError, match=r"listed\.yaml: expected a mapping"):
        load_tokenizer_config(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("vocab_size: [500\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        load_tokenizer_config(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: no such tokenizer config"):
        load_tokenizer_config(tmp_path / "missing.yaml")


def test_bad_training_inputs_are_named(corpus: list[Path], tmp_path: Path) -> None:
    def train(inputs: list[str], vocab_size: int = 500) -> Tokenizer:
        return train_tokenizer(TokenizerConfig(vocab_size=vocab_size, inputs=inputs), tmp_path / "out")

    with pytest.raises(ValueError, match=r"inputs: no input files given"):
        train([])
    with pytest.raises(FileNotFoundError, match=r"inputs\[1\]: '.*nothing-\*\.txt' matches no file"):
        train([str(corpus[0]), str(tmp_path / "nothing-*.txt")])
    with pytest.raises(ValueError, match=r"inputs\[0\]: .* is a directory but not a shard set"):
        train([str(tmp_path)])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError, match=r"hold no text to train on"):
        train([str(blank)])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8"):
        train([str(latin1)])
    with pytest.raises(ValueError, match=r"vocab_size: sentencepiece training failed.*Vocabulary size too high"):
        train([str(corpus[0])], vocab_size=100_000)
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(images / "cat" / "a.png")
    write_image_folder_shards(images, tmp_path / "image_set")
    with pytest.raises(ValueError, match=r"image_set: a 'image' shard set has no txt member"):
        train([str(tmp_path / "image_set")])


def test_missing_corrupt_or_foreign_models_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.model: no such tokenizer model"):
        Tokenizer(tmp_path / "nope.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\x01 not a model" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.model: not a sentencepiece model"):
        Tokenizer(corrupt)
    # A valid sentencepiece model with sentencepiece's own specials lacks ours.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(topics["assert"].splitlines() * 3), model_writer=model,
                                   vocab_size=100, minloglevel=2)
    foreign = tmp_path / "foreign.model"
    foreign.write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=r"foreign\.model: has no special piece '<pad>' \(specials\.pad\)"):
        Tokenizer(foreign)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.yaml: no such tokenizer config"):
        Tokenizer.from_dir(tmp_path)
