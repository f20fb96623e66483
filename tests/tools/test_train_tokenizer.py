"""tools/train_tokenizer.py as a subprocess: trains from files and shard sets, reports bad config and input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from itnet_scale.data.shards import write_text_shards
from itnet_scale.data.tokenizer import Tokenizer, load_tokenizer_config

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "train_tokenizer.py"
DEMO_CONFIG = ROOT / "configs" / "tokenizer" / "demo.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_trains_from_files_and_a_shard_set(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = sorted(topics)
    (corpus / "a.txt").write_text("\n\n".join(topics[n] for n in names[::2]))
    (corpus / "b.txt").write_text("\n\n".join(topics[n] for n in names[1::2]))
    write_text_shards(corpus / "b.txt", tmp_path / "b_shards", max_count=100)
    result = run("--config", str(DEMO_CONFIG), "--output", str(tmp_path / "tok"),
                 f"inputs=[{corpus / 'a.txt'},{tmp_path / 'b_shards'}]", "vocab_size=800")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trained unigram tokenizer: 800 pieces")
    assert "from 2 input(s)" in result.stdout and "tokenizer.model" in result.stdout
    tokenizer = Tokenizer.from_dir(tmp_path / "tok")
    assert tokenizer.vocab_size == 800 and tokenizer.special_ids["mask"] == 4
    assert load_tokenizer_config(tmp_path / "tok" / "tokenizer.yaml").vocab_size == 800


def test_bad_override_and_missing_inputs_exit_with_the_reason(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_tokenizer", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--config", str(DEMO_CONFIG), "--output", str(tmp_path / "x"), "vocab=100"])
    assert exit_info.value.code == 2 and "key 'vocab'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config", str(DEMO_CONFIG), "--output", str(tmp_path / "x")])
    assert "inputs: no input files given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "x")])
    assert "none.yaml: no such tokenizer config" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
