"""tools/evaluate_pretrained.py on bad input: one line naming what is wrong, exit status 2, no traceback. (Its
metrics equal the run's own evaluation on 1 and 2 ranks: tests/train/test_evaluation.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from itnet_scale.models import create_model
from tests.pretrain_fixtures import DEMO_CONFIG, REPO

EVALUATE = REPO / "tools" / "evaluate_pretrained.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EVALUATE), *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("case", ["missing", "backbone", "bad key"])
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "missing"
    overrides: list[str] = []
    if case != "missing":
        checkpoint = tmp_path / "backbone"
        create_model("tiny", task="backbone").save_pretrained(checkpoint)
    if case == "bad key":
        overrides = ["eval.batchsize=3"]
    result = run(str(checkpoint), "--config", str(DEMO_CONFIG), *overrides)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    expected = {"missing": f"{checkpoint}: no such checkpoint",
                "backbone": "holds a 'backbone' model; held-out evaluation needs a pretraining model",
                "bad key": "batchsize"}[case]
    assert expected in errors[0]
