"""The sentencepiece tokenizer: its config, training from text files and shard sets, and the wrapper models use.

Special tokens are ``<pad>`` (id 0), ``<unk>`` (id 1) and the control symbols ``<cls> <sep> <mask> <image>
<point>`` (ids 2–6, in that order). Control symbols are single ids that ``encode`` never produces from text (a
literal ``"<mask>"`` in a document is ordinary characters) and ``decode`` drops, so raw text cannot inject them.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, NamedTuple

import sentencepiece as spm
import torch
from torch import Tensor

from itnet_scale.config import load_config, to_yaml
from itnet_scale.data.shards import INDEX_FILE, iter_shard_samples, read_index, split_documents

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer.yaml"
MODEL_TYPES = ("unigram", "bpe")
#: Ordinary pieces a vocabulary must have room for besides the specials.
MIN_ORDINARY_PIECES = 16


@dataclass
class SpecialTokens:
    """The special pieces; ``pad`` gets id 0 and ``unk`` id 1, the rest follow in field order."""

    pad: str = "<pad>"
    unk: str = "<unk>"
    cls: str = "<cls>"
    sep: str = "<sep>"
    mask: str = "<mask>"
    image: str = "<image>"
    point: str = "<point>"

    def __post_init__(self) -> None:
        pieces = list(asdict(self).values())
        for name, piece in asdict(self).items():
            if not piece or any(ch.isspace() for ch in piece):
                raise ValueError(f"specials.{name} must be a non-empty piece without whitespace, got {piece!r}")
        if len(set(pieces)) != len(pieces):
            raise ValueError(f"specials must be distinct, got {pieces}")

    @property
    def controls(self) -> list[str]:
        """The control symbols (every special but pad and unk), in id order."""
        return [self.cls, self.sep, self.mask, self.image, self.point]


@dataclass
class TokenizerConfig:
    """How to train the tokenizer. The defaults are the demo's (``configs/tokenizer/demo.yaml``).

    ``inputs`` are text files, globs, or shard-set directories whose samples hold ``txt`` (``text``,
    ``image_text``); every non-empty line is one training sentence. With ``num_threads > 1`` sentencepiece
    is faster but no longer bit-for-bit deterministic.
    """

    model_type: str = "unigram"
    vocab_size: int = 3000
    character_coverage: float = 1.0
    byte_fallback: bool = False
    normalization_rule_name: str = "nmt_nfkc"
    max_sentence_length: int = 16384
    input_sentence_size: int = 0  # 0 = every sentence; else a random sample of this many
    seed: int = 0  # sentencepiece's random generator (sentence sampling)
    num_threads: int = 1
    inputs: list[str] = field(default_factory=list)
    specials: SpecialTokens = field(default_factory=SpecialTokens)

    def __post_init__(self) -> None:
        if isinstance(self.specials, dict):  # plain construction with a mapping
            self.specials = SpecialTokens(**self.specials)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        minimum = len(asdict(self.specials)) + MIN_ORDINARY_PIECES
        if self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be >= {minimum} ({len(asdict(self.specials))} specials + "
                             f"{MIN_ORDINARY_PIECES} ordinary pieces), got {self.vocab_size}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in (0, 1], got {self.character_coverage}")
        for name in ("max_sentence_length", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.input_sentence_size < 0:
            raise ValueError(f"input_sentence_size must be >= 0, got {self.input_sentence_size}")


def load_tokenizer_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TokenizerConfig:
    """Load a :class:`TokenizerConfig` from a YAML file and ``key=value`` overrides (omegaconf dot-list syntax,
    e.g. ``vocab_size=8000``, ``inputs=[a.txt,b.txt]``, ``specials.mask='[MASK]'`` — quoted, as brackets make
    a list).

    Unknown keys, wrong types and bad values raise ``ValueError`` naming the key and the file or override.
    """
    return load_config(TokenizerConfig, path, overrides, what="tokenizer config")


def _sentences(text: str) -> Iterator[str]:
    """The training sentences of a text: its non-empty stripped lines."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            yield line


def resolve_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand ``inputs`` (files, globs, shard-set directories) into paths, in order; errors name the entry."""
    if not inputs:
        raise ValueError("inputs: no input files given (set inputs=[path, ...])")
    paths: list[Path] = []
    for number, entry in enumerate(inputs):
        matches = sorted(glob.glob(entry, recursive=True)) if glob.has_magic(entry) else [entry]
        if not matches or not Path(matches[0]).exists():
            raise FileNotFoundError(f"inputs[{number}]: {entry!r} matches no file or directory")
        for match in map(Path, matches):
            if match.is_dir() and not (match / INDEX_FILE).is_file():
                raise ValueError(f"inputs[{number}]: {match} is a directory but not a shard set (no {INDEX_FILE})")
            paths.append(match)
    return paths


def iter_training_sentences(inputs: Sequence[str]) -> Iterator[str]:
    """Yield the training sentences of every input: lines of text files, lines of the ``txt`` member of each
    sample of a shard set. A file that is not UTF-8 or a shard set without ``txt`` raises ``ValueError``."""
    for path in resolve_inputs(inputs):
        if path.is_dir():
            index = read_index(path)
            if "txt" not in index["keys"]:
                raise ValueError(f"{path}: a {index['kind']!r} shard set has no txt member to train on")
            for sample in iter_shard_samples(path):
                try:
                    yield from _sentences(sample["txt"].decode("utf-8"))
                except UnicodeDecodeError as error:
                    raise ValueError(f"{sample['__url__']}: sample {sample['__key__']} txt is not UTF-8 "
                                     f"({error})") from None
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: not UTF-8 text ({error})") from None
            for document in split_documents(text):
                yield from _sentences(document)


def train_tokenizer(config: TokenizerConfig, output: str | Path) -> Tokenizer:
    """Train a sentencepiece model on ``config.inputs``; write ``output/tokenizer.model`` and the resolved config
    ``output/tokenizer.yaml``; return the loaded :class:`Tokenizer`.

    Raises ``ValueError`` for empty input or a ``vocab_size`` the text cannot support.
    """
    sentences = list(iter_training_sentences(config.inputs))
    if not sentences:
        raise ValueError(f"inputs: {config.inputs} hold no text to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type=config.model_type,
            vocab_size=config.vocab_size, character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback, normalization_rule_name=config.normalization_rule_name,
            max_sentence_length=config.max_sentence_length, input_sentence_size=config.input_sentence_size,
            shuffle_input_sentence=config.input_sentence_size > 0, num_threads=config.num_threads,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=config.specials.pad, unk_piece=config.specials.unk,
            control_symbols=config.specials.controls, minloglevel=2)
    except RuntimeError as error:
        message = str(error).split("] ", 1)[-1]
        hint = "vocab_size: " if "Vocabulary size" in message else ""
        raise ValueError(f"{hint}sentencepiece training failed on {len(sentences)} sentences: {message}") from None
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MODEL_FILE).write_bytes(model.getvalue())
    (output / CONFIG_FILE).write_text(to_yaml(config), encoding="utf-8")
    return Tokenizer(output / MODEL_FILE, config.specials)


PadTo = int | Literal["longest"] | None


class PairEncoding(NamedTuple):
    """Sentence pairs as model input: ``ids`` ``[B, L]`` (the ``text_ids`` batch key), ``segment_ids`` ``[B, L]``
    (``text_segment_ids``: 0 for ``<cls>``, the first text and its ``<sep>``; 1 for the second text and its
    ``<sep>``; 0 on padding) and ``attention_mask`` ``[B, L]`` (``text_attention_mask``, True = real token)."""

    ids: Tensor
    segment_ids: Tensor
    attention_mask: Tensor


class Tokenizer:
    """A trained sentencepiece model with the project's special ids.

    ``Tokenizer(model_file, specials)`` loads a model; :meth:`from_dir` loads ``tokenizer.model`` with the
    specials recorded in ``tokenizer.yaml``. Raises ``FileNotFoundError``/``ValueError`` naming the file if it is
    missing, not a sentencepiece model, or lacks a special piece.
    """

    def __init__(self, model_file: str | Path, specials: SpecialTokens | None = None) -> None:
        self.model_file = Path(model_file)
        self.specials = specials or SpecialTokens()
        if not self.model_file.is_file():
            raise FileNotFoundError(f"{self.model_file}: no such tokenizer model")
        try:
            self.processor = spm.SentencePieceProcessor(model_proto=self.model_file.read_bytes())
        except RuntimeError:
            raise ValueError(f"{self.model_file}: not a sentencepiece model (corrupt or another format)") from None
        ids = {}
        for name, piece in asdict(self.specials).items():
            piece_id = self.processor.piece_to_id(piece)
            if self.processor.id_to_piece(piece_id) != piece:
                raise ValueError(f"{self.model_file}: has no special piece {piece!r} (specials.{name})")
            ids[name] = piece_id
        if ids["pad"] != 0:
            raise ValueError(f"{self.model_file}: {self.specials.pad!r} must be id 0, is {ids['pad']}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = ids["pad"], ids["unk"], ids["cls"], ids["sep"]
        self.mask_id, self.image_id, self.point_id = ids["mask"], ids["image"], ids["point"]

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        """Load the tokenizer that :func:`train_tokenizer` wrote to ``directory``."""
        directory = Path(directory)
        config = load_tokenizer_config(directory / CONFIG_FILE)
        return cls(directory / MODEL_FILE, config.specials)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return self.processor.vocab_size()

    @property
    def special_ids(self) -> dict[str, int]:
        """``{"pad": 0, "unk": 1, "cls": 2, ...}``."""
        return {f.name: getattr(self, f"{f.name}_id") for f in fields(SpecialTokens)}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no specials added."""
        return self.processor.encode(text)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); pad and control ids decode to nothing."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.processor.decode(list(ids))

    def _wrap(self, ids: list[int], add_cls: bool, add_sep: bool, max_length: int) -> list[int]:
        budget = max_length - int(add_cls) - int(add_sep)
        if budget < 0:
            raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        return [self.cls_id] * add_cls + ids[:budget] + [self.sep_id] * add_sep

    def batch_encode(self, texts: Sequence[str], max_length: int, add_cls: bool = True, add_sep: bool = True,
                     pad_to: PadTo = None) -> tuple[Tensor, Tensor]:
        """Encode ``texts`` as ``[<cls>] ids [<sep>]``, each truncated to ``max_length`` tokens (specials counted).

        ``pad_to``: ``None`` pads every row to ``max_length``, ``"longest"`` to the longest row, an int to exactly
        that length. Returns ``ids`` LongTensor ``[B, L]`` and ``attention_mask`` BoolTensor ``[B, L]`` (True =
        real token).
        """
        if isinstance(texts, str):
            raise TypeError("batch_encode takes a sequence of texts, got one str")
        rows = [self._wrap(ids, add_cls, add_sep, max_length) for ids in self.processor.encode(list(texts))]
        return self.pad(rows, max_length if pad_to is None else pad_to)

    def encode_pair(self, first: str, second: str, max_length: int) -> tuple[list[int], list[int]]:
        """Encode a sentence pair as ``<cls> first <sep> second <sep>`` within ``max_length`` tokens, cutting the
        end of the longer side first, one token at a time (the second on a tie: Hugging Face's ``longest_first``,
        BERT's ``_truncate_seq_pair``). Returns ``(ids, segment_ids)``, segment 0 up to the first ``<sep>``, then 1.
        """
        a, b = self.encode(first), self.encode(second)
        budget = max_length - 3
        if budget < 0:
            raise ValueError(f"max_length={max_length} leaves no room for <cls> and two <sep>")
        while len(a) + len(b) > budget:
            (a if len(a) > len(b) else b).pop()
        ids = [self.cls_id, *a, self.sep_id, *b, self.sep_id]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)

    def batch_encode_pairs(self, firsts: Sequence[str], seconds: Sequence[str], max_length: int,
                           pad_to: PadTo = None) -> PairEncoding:
        """Encode sentence pairs (GLUE's MRPC, QQP, STS-B, MNLI …) as :meth:`encode_pair` does, each within
        ``max_length`` tokens, padded as :meth:`batch_encode` pads (``pad_to``: ``None`` → ``max_length``,
        ``"longest"``, or an int). Returns the ids, segment ids and attention mask (:class:`PairEncoding`)."""
        if isinstance(firsts, str) or isinstance(seconds, str):
            raise TypeError("batch_encode_pairs takes two sequences of texts, got a str")
        if len(firsts) != len(seconds):
            raise ValueError(f"batch_encode_pairs: {len(firsts)} first texts but {len(seconds)} second texts")
        pairs = [self.encode_pair(first, second, max_length) for first, second in zip(firsts, seconds, strict=True)]
        ids, mask = self.pad([row for row, _ in pairs], max_length if pad_to is None else pad_to)
        segment_ids = torch.zeros_like(ids)
        for i, (_, segments) in enumerate(pairs):
            segment_ids[i, : len(segments)] = torch.as_tensor(segments, dtype=torch.long)
        return PairEncoding(ids, segment_ids, mask)

    def pad(self, rows: Sequence[Sequence[int]], pad_to: int | Literal["longest"]) -> tuple[Tensor, Tensor]:
        """Right-pad id rows with ``pad_id`` to ``pad_to`` (an int, or ``"longest"``); returns ``ids`` ``[B, L]``
        and ``attention_mask`` ``[B, L]`` (True = real token)."""
        longest = max((len(row) for row in rows), default=0)
        if pad_to == "longest":
            length = longest
        elif isinstance(pad_to, int) and not isinstance(pad_to, bool):
            if pad_to < longest:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
            length = pad_to
        else:
            raise ValueError(f"pad_to must be None, an int or 'longest', got {pad_to!r}")
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask
