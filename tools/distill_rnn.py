"""Distill a fixed random ``nn.GRU`` (or ``nn.LSTM``) into a small ITNet and report the error reached.

GRU and LSTM are not special cases of one integral transform: their gates read ``h_{t−1}``,
so the recurrence is nonlinear in the state (see :mod:`itnet_scale.nn.special.recurrence`).
This tool measures how close a small stack of ``IntegralTransform`` layers (linear mode,
causal support, learned decay — a gated linear recurrence per head) with pointwise MLPs and
residuals gets to one.

The teacher maps random sequences ``x ~ N(0, 1)`` ``[batch, length, in_dim]`` to its hidden
states ``[batch, length, hidden]`` (``h_0 = 0``). The student is trained on fresh random
sequences every step (MSE) and evaluated on held-out sequences by the relative error
``‖y_itnet − y_rnn‖ / ‖y_rnn‖``, next to two baselines:

- zeros: predicting 0 everywhere (relative error 1.0);
- linear: the best causal linear time-invariant filter ``y_t = Σ_{δ<length} K_δ x_{t−δ} + c``,
  fitted by least squares on the training sequences. Every linear recurrence (S4, LRU,
  a linear RNN of any size) is such a filter, so this bounds what any of them reaches.

Usage::

    python tools/distill_rnn.py [--steps 1500] [--hidden 16] [--length 64] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.ops import BACKENDS, Exact


class ITNetStudent(nn.Module):
    """``in_proj → [x + IT(LN x); x + MLP(LN x)] × layers → LN → out_proj``.

    Each ``IntegralTransform`` runs in linear mode with causal support and learned decay
    (initial decay rates spread over heads from slow to fast) and the bilinear ``q·k`` term;
    ``kernel_width > 0`` adds a sigmoid kernel MLP that can act as an input gate (off by
    default: on this task it trained slower and no better).
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 32, layers: int = 2, heads: int = 8,
                 kernel_width: int = 0, backend: str = "reference") -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_dim, width)
        self.norms1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.norms2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.mixers = nn.ModuleList()
        for _ in range(layers):
            kernel = KernelConfig(width=kernel_width, activation="sigmoid", mode="linear", support="causal", decay=True)
            it = IntegralTransform(width, heads, kernel, Exact(backend))
            with torch.no_grad():  # per-head time scales from ~1/(0.7·e^-4) ≈ 80 steps to ~1.5 steps
                it.decay_log_rate.copy_(torch.linspace(-4.0, 0.0, heads))
            self.mixers.append(it)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)) for _ in range(layers)
        )
        self.norm_out = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[batch, length, in_dim]`` → ``[batch, length, out_dim]`` (causal)."""
        h = self.in_proj(x)
        for n1, it, n2, mlp in zip(self.norms1, self.mixers, self.norms2, self.mlps):
            h = h + it(n1(h))
            h = h + mlp(n2(h))
        return self.out_proj(self.norm_out(h))


def make_teacher(kind: str, in_dim: int, hidden: int) -> nn.Module:
    """A random ``nn.GRU``/``nn.LSTM`` (PyTorch's default init), frozen; call → hidden states."""
    cls = {"gru": nn.GRU, "lstm": nn.LSTM}[kind]
    rnn = cls(in_dim, hidden, batch_first=True)
    for p in rnn.parameters():
        p.requires_grad_(False)
    return rnn


def rel_error(pred: Tensor, target: Tensor) -> float:
    """``‖pred − target‖ / ‖target‖`` over everything."""
    return (torch.linalg.vector_norm(pred - target) / torch.linalg.vector_norm(target)).item()


def _lags(x: Tensor) -> Tensor:
    """``[b, L, c]`` → ``[b·L, L·c + 1]``: row ``t`` holds ``x_t, x_{t−1}, …, x_{t−L+1}`` (zeros before 0), and 1."""
    b, L, c = x.shape
    cols = [F.pad(x, (0, 0, k, 0))[:, :L] for k in range(L)]
    feats = torch.cat([*cols, x.new_ones(b, L, 1)], -1)
    return feats.reshape(b * L, L * c + 1)


def linear_baseline(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, ridge: float = 1e-6) -> float:
    """Held-out relative error of the best causal LTI filter (least squares on all lags, fp64)."""
    A, Y = _lags(x_train.double()), y_train.double().flatten(0, 1)
    gram = A.T @ A
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    W = torch.linalg.solve(gram, A.T @ Y)
    pred = (_lags(x_test.double()) @ W).reshape(y_test.shape)
    return rel_error(pred, y_test.double())


def distill_rnn(
    steps: int = 1500,
    hidden: int = 16,
    length: int = 64,
    seed: int = 0,
    *,
    teacher: str = "gru",
    in_dim: int = 8,
    width: int = 32,
    layers: int = 2,
    heads: int = 8,
    kernel_width: int = 0,
    batch: int = 32,
    lr: float = 5e-3,
    n_test: int = 256,
    n_linear_train: int = 512,
    backend: str = "reference",
    log_every: int = 0,
) -> dict[str, float | int | str]:
    """Train an :class:`ITNetStudent` to reproduce a random RNN; return the errors reached.

    Returns a dict with ``itnet_rel_error`` (held out, after training), ``initial_rel_error``
    (held out, before training), ``zeros_rel_error`` (1.0), ``linear_rel_error`` (best causal
    LTI filter; NaN when ``n_linear_train = 0``), parameter counts, the configuration and the
    wall time. Adam with a cosine learning-rate decay; fresh random sequences every step.
    """
    if steps < 0 or hidden < 1 or length < 1:
        raise ValueError(f"steps must be >= 0 and hidden, length >= 1; got {steps}, {hidden}, {length}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rnn = make_teacher(teacher, in_dim, hidden)
    student = ITNetStudent(in_dim, hidden, width, layers, heads, kernel_width, backend)
    gen = torch.Generator().manual_seed(seed + 1)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, length, in_dim, generator=gen)
        with torch.no_grad():
            return x, rnn(x)[0]

    x_test, y_test = sample(n_test)

    def evaluate() -> float:
        with torch.no_grad():
            return rel_error(student(x_test), y_test)

    initial = evaluate()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1))))
    for step in range(steps):
        x, y = sample(batch)
        loss = F.mse_loss(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:5d}  train rel err {math.sqrt(loss.item() / y.pow(2).mean().item()):.4f}",
                  flush=True)
    final = evaluate()
    linear = float("nan")
    if n_linear_train:
        x_lin, y_lin = sample(n_linear_train)
        linear = linear_baseline(x_lin, y_lin, x_test, y_test)
    return {
        "teacher": teacher,
        "itnet_rel_error": final,
        "initial_rel_error": initial,
        "zeros_rel_error": 1.0,
        "linear_rel_error": linear,
        "teacher_params": sum(p.numel() for p in rnn.parameters()),
        "itnet_params": sum(p.numel() for p in student.parameters()),
        "steps": steps,
        "hidden": hidden,
        "length": length,
        "seed": seed,
        "in_dim": in_dim,
        "width": width,
        "layers": layers,
        "heads": heads,
        "kernel_width": kernel_width,
        "batch": batch,
        "lr": lr,
        "n_test": n_test,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    ap.add_argument("--hidden", type=int, default=16, help="teacher hidden size = output size (default 16)")
    ap.add_argument("--length", type=int, default=64, help="sequence length (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", choices=("gru", "lstm"), default="gru")
    ap.add_argument("--in-dim", type=int, default=8, help="input size (default 8)")
    ap.add_argument("--width", type=int, default=32, help="ITNet width (default 32)")
    ap.add_argument("--layers", type=int, default=2, help="IntegralTransform layers (default 2)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kernel-width", type=int, default=0, help="kernel-MLP width r (default 0: off)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--backend", choices=BACKENDS, default="reference")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = distill_rnn(args.steps, args.hidden, args.length, args.seed, teacher=args.teacher, in_dim=args.in_dim,
                      width=args.width, layers=args.layers, heads=args.heads, kernel_width=args.kernel_width,
                      batch=args.batch, lr=args.lr, backend=args.backend, log_every=args.log_every)
    name = args.teacher.upper()
    print(f"held-out relative error ‖y_itnet − y_{args.teacher}‖/‖y_{args.teacher}‖ on {res['n_test']} sequences "
          f"of length {args.length}:")
    print(f"  ITNet ({args.layers} IntegralTransform layers, {res['itnet_params']} params, {args.steps} steps): "
          f"{res['itnet_rel_error']:.4f}   (before training {res['initial_rel_error']:.4f})")
    print(f"  best causal linear (LTI) filter, least squares:  {res['linear_rel_error']:.4f}")
    print(f"  zeros:                                          {res['zeros_rel_error']:.4f}")
    print(f"  ({name} teacher: hidden {args.hidden}, {res['teacher_params']} params; {res['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
