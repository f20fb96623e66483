"""tools/model_sizes.py prints one row per model config, smallest first, with counts that add up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "model_sizes.py"


def test_prints_one_row_per_config():
    result = subprocess.run([sys.executable, str(TOOL), "--markdown"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header][:5] == ["model", "dim", "depth", "heads", "total M"]
    assert [r[0].strip() for r in body] == ["tiny", "small", "base", "large"]
    for row in body:
        total, parts = float(row[4]), [float(c) for c in row[5:10]]
        assert abs(sum(parts) - total) < 0.01 * total + 0.01, row  # the parts are the whole
        assert float(row[11]) <= float(row[10]) + 1e-9  # ZeRO-3 needs no more than ZeRO-2
    base = next(r for r in body if r[0].strip() == "base")
    assert 80 <= float(base[5]) <= 110  # a BERT-base / ViT-B sized backbone
