"""What the Triton kernel tests share: the sizes and supports, float32 inputs with ``τ`` in float64, the
GPU marker's skip, and a fresh interpreter without ``TRITON_INTERPRET`` for the "CPU without the interpreter"
error. (The eager torch backend they compare against is ``conftest.eager_torch_backend``.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itnet_scale.ops import KernelSpec
from itnet_scale.ops.triton import interpreting

from .conftest import random_inputs

REPO = Path(__file__).resolve().parents[2]
SIZES = [(1, 1), (63, 63), (130, 130), (63, 130)]
SUPPORTS = ["all", "causal", "window", "radius", "causal_window"]
#: What forcing ``triton`` on CPU tensors says when the interpreter is off.
NO_INTERPRETER_ERROR = ("RuntimeError: backend 'triton' runs on CUDA tensors, or on the CPU under Triton's interpreter "
                        "(TRITON_INTERPRET=1 set before itnet_scale is imported); these tensors are on cpu and the "
                        "interpreter is off")

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(),
                               reason="needs a CUDA GPU and compiled kernels (TRITON_INTERPRET=0)")


def fp32_inputs(Nq: int, Ns: int, spec: KernelSpec, *, requires_grad: bool, **terms):
    """float32 inputs, ``τ`` one float64 tensor for queries and sources (as the layer passes it)."""
    inp = random_inputs(Nq, Ns, spec=spec, dtype=torch.float32, requires_grad=requires_grad, **terms)
    if inp.tau_q is not None:
        tau = inp.tau_q.detach().double()
        inp.tau_q = inp.tau_s = tau.requires_grad_() if requires_grad else tau
    return inp


def run_without_interpreter(script: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python with ``TRITON_INTERPRET=0`` and no forced backend."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(REPO)}
    env.pop("ITNET_BACKEND", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
