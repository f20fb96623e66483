"""Convolution as an exact special case of the integral transform (DESIGN §1 table).

A convolution with taps ``t`` (kernel offsets, dilated by ``dilation``) computes::

    y[o, i] = bias[o] + Σ_t Σ_c W[o, c, t] x[c, i·stride − padding + t·dilation]

with zero padding, i.e. a tap that lands outside the input contributes nothing. As an
integral transform, in linear mode with only the offset-table term (``β = 0``: no bilinear
term, ``r = 0``: no kernel MLP), with ONE HEAD PER TAP:

    * queries are the output positions in input coordinates, ``p_i = i·stride − padding``
      (per spatial dim); sources are the input positions ``p_j = j`` — padding positions are
      simply not sources;
    * head ``h`` (tap ``t_h``) has a one-hot offset table: ``t_h(δ) = 1`` exactly at
      ``δ = p_i − p_j = −t_h·dilation``, so ``K_h(i,j) = 1`` for the one source the tap reads;
    * its values are ``v_j = W[:, :, t_h] x_j`` (``value_dim = C_out``; block-diagonal over
      groups: an output channel reads only its group's input channels);
    * ``o_proj`` sums the heads (identity blocks) and adds the conv bias;
    * a window support of half-width ``max_k (K_k − 1)·dilation_k`` (the taps' reach) lets the
      torch backend skip source tiles no tap can reach.

Every factor of the kernel is exactly 0 or 1, so the result differs from ``F.conv1d`` /
``F.conv2d`` only by the order of the floating-point sums.

The query features carry no information (no bilinear term, no kernel MLP), so the
transform gets one zero channel per query (``dim = 1``). The layer stays trainable: its
table, values and output projection are ordinary parameters; training may leave the
convolution family (e.g. the zero blocks across groups or off the one-hot table entries may
become nonzero), as any ITNet layer may.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform, KernelConfig
from itnet_scale.ops import Exact


class ITNetConv(nn.Module):
    """A convolution (1-D or 2-D) computed by one :class:`IntegralTransform` (see module docs).

    Build it with :func:`from_conv1d` / :func:`from_conv2d`. Layout is PyTorch's: input
    ``[B, C_in, *spatial]`` (or unbatched ``[C_in, *spatial]``), output ``[B, C_out, *out_spatial]``.

    Args:
        in_channels, out_channels: ``C_in``, ``C_out``.
        kernel_size, stride, dilation: per spatial dim.
        padding: per spatial dim, the zero padding before the input (the left/top side).
        padding_total: per spatial dim, the padding on both sides together (differs from
            ``2·padding`` only for ``padding="same"`` with an odd total).
        groups: channel groups (``C_in`` and ``C_out`` divisible by it).
        bias: add a per-output-channel bias.
        integrator: the transform's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).

    Attributes:
        transform: the :class:`IntegralTransform`; head ``h`` is tap ``taps[h]``.
        taps: the kernel taps in row-major order, each a tuple of per-dim kernel indices.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        *,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        padding_total: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int = 1,
        bias: bool = True,
        integrator: Exact | None = None,
    ) -> None:
        super().__init__()
        n = len(kernel_size)
        if not all(len(t) == n for t in (stride, padding, padding_total, dilation)):
            raise ValueError("kernel_size, stride, padding, padding_total and dilation need one entry per spatial dim")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if min(kernel_size) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
            raise ValueError(f"kernel_size, stride, dilation must be >= 1 and padding >= 0, got {kernel_size}, "
                             f"{stride}, {dilation}, {padding}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.padding, self.padding_total = tuple(padding), tuple(padding_total)
        self.taps = list(itertools.product(*(range(k) for k in kernel_size)))
        reach = tuple((k - 1) * d for k, d in zip(kernel_size, dilation))
        self.transform = IntegralTransform(
            1,
            len(self.taps),
            KernelConfig(mode="linear", support="window", support_size=float(max(reach)), width=0, bilinear=False,
                         offset_range=reach),
            integrator,
            head_dim=1,  # unused: no bilinear term
            value_dim=out_channels,
            source_dim=in_channels,
            out_dim=out_channels,
            pos_dim=n,
            bias=bias,
        )
        with torch.no_grad():
            table = self.transform.table
            table.zero_()
            for h, tap in enumerate(self.taps):
                table[h, self._table_index(tuple(-t * d for t, d in zip(tap, dilation)))] = 1.0
            self.transform.o_proj.weight.copy_(torch.eye(out_channels).repeat(1, len(self.taps)))
            if bias:
                self.transform.v_proj.bias.zero_()
        # Until weights are loaded: the transform's random v_proj, restricted to within-group blocks.
        o_bias = self.transform.o_proj.bias
        self.load_conv_weight(self.conv_weight_from(self.transform.v_proj.weight).detach().clone(),
                              None if o_bias is None else o_bias.detach().clone())

    def _table_index(self, offset: tuple[int, ...]) -> int:
        """The column of the offset table holding ``t(offset)`` (row-major over ``−R_k … R_k``)."""
        index = 0
        for delta, r in zip(offset, self.transform.spec.offset_range):
            index = index * (2 * r + 1) + delta + r
        return index

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, padding_total={self.padding_total}, dilation={self.dilation}, "
                f"groups={self.groups}, heads(taps)={len(self.taps)}")

    # -- weights in convolution layout -----------------------------------------------

    def conv_weight_from(self, v_weight: Tensor) -> Tensor:
        """Read a ``v_proj.weight``-shaped tensor ``[taps·C_out, C_in]`` as a conv weight.

        Returns ``[C_out, C_in / groups, *kernel_size]`` from the within-group blocks (the
        blocks across groups are not part of a convolution). Use it on the weight itself or
        on its gradient.
        """
        H, G = len(self.taps), self.groups
        expect = (H * self.out_channels, self.in_channels)
        if tuple(v_weight.shape) != expect:
            raise ValueError(f"v_weight must be [{expect[0]}, {expect[1]}] (taps*C_out, C_in), got "
                             f"{tuple(v_weight.shape)}")
        blocks = v_weight.reshape(H, G, self.out_channels // G, G, self.in_channels // G)
        within = torch.diagonal(blocks, dim1=1, dim2=3)  # [H, C_out/G, C_in/G, G]
        weight = within.permute(3, 1, 2, 0).reshape(self.out_channels, self.in_channels // G, H)
        return weight.reshape(self.out_channels, self.in_channels // G, *self.kernel_size)

    def load_conv_weight(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Set ``v_proj`` (and the ``o_proj`` bias) from a conv weight ``[C_out, C_in/groups, *kernel]``."""
        expect = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        if tuple(weight.shape) != expect:
            raise ValueError(f"weight must be {list(expect)}, got {tuple(weight.shape)}")
        if (bias is None) != (self.transform.o_proj.bias is None):
            raise ValueError("bias must be given exactly when the module was built with bias=True")
        G, H = self.groups, len(self.taps)
        cout_g, cin_g = self.out_channels // G, self.in_channels // G
        per_tap = weight.reshape(self.out_channels, cin_g, H).permute(2, 0, 1)  # [H, C_out, C_in/G]
        with torch.no_grad():
            v = self.transform.v_proj.weight.view(H, self.out_channels, self.in_channels)
            v.zero_()
            for g in range(G):
                rows, cols = slice(g * cout_g, (g + 1) * cout_g), slice(g * cin_g, (g + 1) * cin_g)
                v[:, rows, cols] = per_tap[:, rows]
            if bias is not None:
                self.transform.o_proj.bias.copy_(bias)

    # -- forward ---------------------------------------------------------------------

    def output_size(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output size for a spatial input size (PyTorch's formula)."""
        return tuple(
            (n + p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(input_size, self.padding_total, self.dilation, self.kernel_size, self.stride)
        )

    def forward(self, input: Tensor) -> Tensor:
        """Convolve ``input`` ``[B, C_in, *spatial]`` (or ``[C_in, *spatial]``) → ``[B, C_out, *out_spatial]``."""
        n = len(self.kernel_size)
        if input.dim() not in (n + 1, n + 2) or input.shape[-n - 1] != self.in_channels:
            raise ValueError(f"input must be [batch, {self.in_channels}, {n} spatial dims] or unbatched "
                             f"[{self.in_channels}, {n} spatial dims], got shape {tuple(input.shape)}")
        batched = input.dim() == n + 2
        x = input if batched else input.unsqueeze(0)
        size = tuple(x.shape[2:])
        out_size = self.output_size(size)
        if min(out_size) < 1 or min(size) < 1:
            raise ValueError(f"input spatial size {size} is too small for kernel_size={self.kernel_size}, "
                             f"dilation={self.dilation}, padding={self.padding_total} (output would be {out_size})")
        B = x.shape[0]
        source = x.flatten(2).transpose(1, 2)  # [B, ∏size, C_in], row-major positions
        source_pos = _grid([range(m) for m in size], x)
        query_pos = _grid([range(-p, -p + s * m, s) for p, s, m in zip(self.padding, self.stride, out_size)], x)
        queries = x.new_zeros(B, query_pos.shape[0], 1)  # carry nothing: the kernel reads positions only
        y = self.transform(queries, pos=query_pos, source=source, source_pos=source_pos)  # [B, ∏out, C_out]
        y = y.transpose(1, 2).reshape(B, self.out_channels, *out_size)
        return y if batched else y.squeeze(0)


def _grid(axes: list[range], like: Tensor) -> Tensor:
    """Row-major grid of integer positions ``[∏len(axes), len(axes)]`` in ``like``'s dtype/device."""
    coords = [torch.tensor(list(a), dtype=like.dtype, device=like.device) for a in axes]
    return torch.stack(torch.meshgrid(*coords, indexing="ij"), -1).reshape(-1, len(axes))


def _from_conv(conv: nn.Conv1d | nn.Conv2d, integrator: Exact | None) -> ITNetConv:
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported: only 'zeros' (padding positions are "
                         "simply absent sources)")
    kernel, dilation = tuple(conv.kernel_size), tuple(conv.dilation)
    if conv.padding == "same":
        total = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
        before = tuple(t // 2 for t in total)  # PyTorch pads the odd extra on the far side
    elif conv.padding == "valid":
        total = before = (0,) * len(kernel)
    else:
        before = tuple(conv.padding)
        total = tuple(2 * p for p in before)
    module = ITNetConv(
        conv.in_channels, conv.out_channels, kernel, stride=tuple(conv.stride), padding=before,
        padding_total=total, dilation=dilation, groups=conv.groups, bias=conv.bias is not None,
        integrator=integrator,
    )
    module.to(device=conv.weight.device, dtype=conv.weight.dtype)
    module.load_conv_weight(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
    module.train(conv.training)
    return module


def from_conv1d(conv: nn.Conv1d, *, integrator: Exact | None = None) -> ITNetConv:
    """An :class:`ITNetConv` equal to ``conv``: ``[B, C_in, L]`` → ``[B, C_out, L_out]``.

    Any stride, padding (int, tuple, ``"same"``, ``"valid"``), dilation, groups and bias;
    ``padding_mode`` must be ``"zeros"``. ``integrator`` is the transform's (backend, tile size).
    """
    if not isinstance(conv, nn.Conv1d):
        raise TypeError(f"conv must be a torch.nn.Conv1d, got {type(conv).__name__}")
    return _from_conv(conv, integrator)


def from_conv2d(conv: nn.Conv2d, *, integrator: Exact | None = None) -> ITNetConv:
    """An :class:`ITNetConv` equal to ``conv``: ``[B, C_in, H, W]`` → ``[B, C_out, H_out, W_out]``.

    Positions are 2-D ``(row, col)``; heads are the ``kH·kW`` taps in row-major order. Same
    options as :func:`from_conv1d`.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    return _from_conv(conv, integrator)


__all__ = ["ITNetConv", "from_conv1d", "from_conv2d"]
