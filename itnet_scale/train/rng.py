"""Random-generator states (python, numpy, torch CPU and accelerator) as plain tensors and ints.

A resumed run restores them so dropout, masking and sampling continue exactly. The state is made of tensors,
ints and floats only, so it round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` — a
checkpoint never needs unpickling of arbitrary objects.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The current states of python's ``random``, numpy's legacy global generator and torch's generators."""
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned; a malformed state raises ``ValueError`` naming the part."""
    try:
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
        numpy = state["numpy"]
        np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                             numpy["has_gauss"], numpy["cached_gauss"]))
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise ValueError(f"rng state is malformed ({type(error).__name__}: {error})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run the block and put every random generator back as it was: work done between training steps
    (evaluation, the kernel atlas) leaves the run's random draws exactly as if it had not run."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
