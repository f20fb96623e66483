"""What a training run reports: TensorBoard scalars and, on rank 0, a tqdm bar or plain log lines.

Only rank 0 writes (``tensorboard --logdir RUN/tensorboard``); the other ranks' loggers do nothing, so the loop
calls the same methods everywhere. On a terminal the progress is one tqdm bar with the loss and throughput;
when stdout is not a TTY (a cluster log file) it is one plain line every ``print_every`` steps instead.
Held-out evaluations go to TensorBoard under ``eval/…``, to one progress line each, and as one JSON line each
(``{"step": …, "<metric>": …}``) appended to ``eval_file``. The kernel atlas goes under ``atlas/…``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from itnet_scale.atlas import Atlas

logger = logging.getLogger(__name__)


class Throughput:
    """Samples/s, tokens/s, model FLOPs utilization and the share of time spent waiting for data, per interval.

    ``peak_flops`` is the configured hardware peak of all ranks together (0 = MFU not reported); each step's model
    FLOPs come with :meth:`add` (see :func:`itnet_scale.models.flops.training_flops`).
    """

    def __init__(self, peak_flops: float = 0.0) -> None:
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._samples = 0
        self._tokens = 0
        self._flops = 0.0
        self._data_wait = 0.0

    def add(self, samples: int, tokens: int, data_wait_s: float, flops: float = 0.0) -> None:
        """Count one step's ``samples``, ``tokens`` and training ``flops`` (all ranks) and the seconds it waited
        for its batch."""
        self._samples += samples
        self._tokens += tokens
        self._flops += flops
        self._data_wait += data_wait_s

    def rates(self) -> dict[str, float]:
        """The rates since the last :meth:`reset` (and reset)."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rates = {"throughput/samples_per_s": self._samples / elapsed, "throughput/tokens_per_s": self._tokens / elapsed,
                 "throughput/data_wait_share": self._data_wait / elapsed}
        if self.peak_flops > 0 and self._flops > 0:
            rates["throughput/mfu"] = self._flops / elapsed / self.peak_flops
        self.reset()
        return rates


class MetricsLogger:
    """Rank 0's TensorBoard writer and progress display; a no-op on other ranks."""

    def __init__(self, log_dir: str | Path, *, rank: int, total_steps: int, start_step: int = 0,
                 print_every: int = 10, stream: TextIO | None = None, eval_file: str | Path | None = None) -> None:
        self.active = rank == 0
        self.print_every = max(print_every, 1)
        self.log_dir = Path(log_dir)
        self.eval_file = None if eval_file is None else Path(eval_file)
        self._writer: SummaryWriter | None = None
        self._bar: tqdm | None = None
        self._stream = stream or sys.stdout
        if not self.active:
            return
        self._writer = SummaryWriter(str(self.log_dir))
        if self._stream.isatty():
            self._bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", file=self._stream,
                             dynamic_ncols=True)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write ``scalars`` (``loss/mlm``, ``lr``, ``throughput/tokens_per_s``…) at ``step`` and show progress."""
        if not self.active:
            return
        assert self._writer is not None
        for name, value in scalars.items():
            self._writer.add_scalar(name, float(value), step)
        shown = {name.split("/")[-1]: value for name, value in scalars.items()
                 if name.startswith("loss/") or name in ("throughput/tokens_per_s", "throughput/samples_per_s")}
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=True)
        elif step % self.print_every == 0:
            text = " ".join(f"{name}={value:.4g}" for name, value in shown.items())
            print(f"step {step} {text}", file=self._stream, flush=True)

    def log_evaluation(self, step: int, metrics: Mapping[str, float], line: str) -> None:
        """A held-out evaluation at ``step``: TensorBoard ``eval/<metric>``, the progress ``line``, and one JSON
        line appended to ``eval_file``."""
        if not self.active:
            return
        assert self._writer is not None
        for name, value in metrics.items():
            self._writer.add_scalar(f"eval/{name}", float(value), step)
        self._writer.flush()
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)
        if self.eval_file is not None:
            self.eval_file.parent.mkdir(parents=True, exist_ok=True)
            with self.eval_file.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def log_atlas(self, step: int, stream: str, atlas: Atlas) -> None:
        """The kernel atlas of ``stream``'s batch at ``step``: every finite score as a scalar
        ``atlas/<stream>/<layer>/head<h>/<score>``, the summary as the image ``atlas/<stream>/summary`` and each
        layer call's kernel heatmaps as ``atlas/<stream>/kernels_<k>``."""
        if not self.active:
            return
        assert self._writer is not None
        for name, value in atlas.scalars(f"atlas/{stream}").items():
            self._writer.add_scalar(name, value, step)
        self._writer.add_figure(f"atlas/{stream}/summary", atlas.summary_figure(f"{stream}, step {step}"), step)
        for k in range(len(atlas.layers)):
            self._writer.add_figure(f"atlas/{stream}/kernels_{k}", atlas.query_figure(k), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush the event file and close the bar."""
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
