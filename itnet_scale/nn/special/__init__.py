"""Exact special cases of the integral transform (DESIGN §1 table).

Each constructor returns a module (or computes a function) whose sequence mixing runs
through one :class:`itnet_scale.nn.IntegralTransform` with exact parameters, and equals the
original to round-off:

- attention: :func:`from_multihead_attention` (``nn.MultiheadAttention``; SDPA);
- convolution: :func:`from_conv1d`, :func:`from_conv2d` (stride, padding, dilation, groups);
- recurrence: :func:`selective_scan` (Mamba-1), :func:`ssd` (Mamba-2), :func:`s4_lti` /
  :func:`from_s4` (S4, LTI), :func:`from_min_gru`, :func:`from_min_lstm`.

LSTM and GRU are *not* single-layer special cases (their gates read ``h_{t−1}``); see
:mod:`itnet_scale.nn.special.recurrence` and ``tools/distill_rnn.py``.
"""

from itnet_scale.nn.special.attention import ITNetMultiheadAttention, from_multihead_attention
from itnet_scale.nn.special.convolution import ITNetConv, from_conv1d, from_conv2d
from itnet_scale.nn.special.recurrence import (
    S4LTI,
    MinGRU,
    MinLSTM,
    from_min_gru,
    from_min_lstm,
    from_s4,
    s4_kernel,
    s4_lti,
    selective_scan,
    ssd,
)

__all__ = [
    "S4LTI",
    "ITNetConv",
    "ITNetMultiheadAttention",
    "MinGRU",
    "MinLSTM",
    "from_conv1d",
    "from_conv2d",
    "from_min_gru",
    "from_min_lstm",
    "from_multihead_attention",
    "from_s4",
    "s4_kernel",
    "s4_lti",
    "selective_scan",
    "ssd",
]
