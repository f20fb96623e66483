"""Sources: every DeepSpeed file a source reads is loaded weights-only. (Sources of every ZeRO stage, universal
checkpoints and library folders are read in tests/tools/test_convert_checkpoint.py and test_inspect_checkpoint.py.)"""

from __future__ import annotations

import pytest
import torch

from itnet_scale.checkpoint.sources import mmap_weights_only_loads


def test_deepspeed_loads_in_the_sources_context_are_weights_only(tmp_path):
    """Inside the sources' load context every torch.load (DeepSpeed's too) is weights-only: a pickled object is
    refused, naming the file; tensors load. Outside it torch.load is torch's own again."""
    original = torch.load
    torch.save({"ok": torch.ones(2), "bad": _Unsafe()}, tmp_path / "evil.pt")
    with mmap_weights_only_loads():
        with pytest.raises(ValueError, match=r"evil\.pt: holds objects a weights-only load refuses"):
            torch.load(tmp_path / "evil.pt")
        torch.save({"ok": torch.ones(2)}, tmp_path / "fine.pt")
        assert torch.equal(torch.load(tmp_path / "fine.pt")["ok"], torch.ones(2))
    assert torch.load is original


class _Unsafe:
    """Any class a weights-only load does not allow."""
