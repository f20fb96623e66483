"""Multi-head attention as an exact special case of the integral transform (DESIGN §1 table).

``torch.nn.MultiheadAttention`` computes, per head ``h`` with head dim ``d``::

    q_i = Wq x_i + bq     k_j = Wk key_j + bk     v_j = Wv value_j + bv
    y_i = Wo concat_h Σ_j softmax_j(q_i·k_j/√d + mask(i,j)) v_j + bo

which is the ITNet kernel in softmax mode with only the bilinear term (``β = 1``; the core
already divides by ``√d``), no kernel MLP (``r = 0``), no offset table and no decay.

:func:`from_multihead_attention` builds an :class:`ITNetMultiheadAttention` whose every
attention computation runs through one :class:`~itnet_scale.nn.IntegralTransform` with the
MHA's weights copied in. Key and value may be different tensors with different widths
(``kdim``/``vdim``), while the transform reads one source feature per token; so the sources
are ``concat([key, value])`` (``source_dim = kdim + vdim``), and ``k_proj``/``v_proj`` read only
their own block (zeros elsewhere), which is exact. ``add_bias_kv`` and ``add_zero_attn`` append
extra source tokens: each carries a one-hot indicator channel whose ``k_proj``/``v_proj``
column makes its projected key and value equal to ``bias_k``/``bias_v`` (respectively exactly
zero), as PyTorch appends them after the projection.

The result is a trainable ITNet layer initialised to equal the MHA. Training updates all
of its parameters, so the zero blocks (key reading value and vice versa) may become nonzero:
the layer then leaves the MHA family, as any ITNet layer may.

Differences from PyTorch, both by design of the operator:
    * a query that sees no key (every key masked) gets zeros from the attention (then the
      output projection's bias), where PyTorch returns NaN;
    * attention dropout does not exist: ``dropout > 0`` raises in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform, KernelConfig
from itnet_scale.ops import Exact


class ITNetMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` whose attention is one :class:`IntegralTransform`.

    Build it with :func:`from_multihead_attention` (which copies a trained MHA's weights); a
    direct construction keeps :class:`IntegralTransform`'s default initialisation, with the
    key/value cross blocks zeroed, the bias token starting at the projection biases and the
    zero token at zero.

    Args:
        embed_dim: ``E``, the width of queries and outputs.
        num_heads: ``H``; ``E`` must be divisible by it (head dim ``d = E // H``).
        kdim, vdim: key and value widths (default ``E``).
        bias: biases on the input and output projections.
        add_bias_kv: append one learned key/value token (PyTorch's ``bias_k``/``bias_v``).
        add_zero_attn: append one token whose key and value are zero.
        batch_first: inputs and outputs are ``[B, N, E]`` instead of ``[N, B, E]``.
        dropout: PyTorch's attention dropout probability; only 0 can be used while training.
        integrator: the transform's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).

    Attributes:
        transform: the :class:`IntegralTransform`. Its sources are, per token,
            ``[key (kdim) | value (vdim) | bias-token flag | zero-token flag]`` (flags only when
            the option is on), and the extra tokens follow the ``S`` keys in that order.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
        integrator: Exact | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a positive multiple of num_heads={num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.add_bias_kv, self.add_zero_attn = add_bias_kv, add_zero_attn
        self.extra_tokens = int(add_bias_kv) + int(add_zero_attn)
        head_dim = embed_dim // num_heads
        self.transform = IntegralTransform(
            embed_dim,
            num_heads,
            KernelConfig(mode="softmax", support="all", width=0, bilinear=True),
            integrator,
            head_dim=head_dim,
            value_dim=head_dim,
            source_dim=self.kdim + self.vdim + self.extra_tokens,
            out_dim=embed_dim,
            bias=bias,
        )
        t = self.transform
        with torch.no_grad():
            t.beta.fill_(1.0)
            t.k_proj.weight[:, self.kdim:].zero_()
            t.v_proj.weight[:, : self.kdim].zero_()
            t.v_proj.weight[:, self.kdim + self.vdim:].zero_()
            if add_zero_attn and bias:  # the zero token's key and value: column + bias = 0
                t.k_proj.weight[:, -1].copy_(-t.k_proj.bias)
                t.v_proj.weight[:, -1].copy_(-t.v_proj.bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
                f"add_bias_kv={self.add_bias_kv}, add_zero_attn={self.add_zero_attn}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")

    # -- forward ---------------------------------------------------------------------

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``, with ``nn.MultiheadAttention``'s signature.

        Shapes (``L`` queries, ``S`` keys, ``B`` batch): ``query`` ``[L, B, E]`` (``[B, L, E]`` if
        ``batch_first``, ``[L, E]`` unbatched), ``key`` ``[S, B, kdim]``, ``value`` ``[S, B, vdim]``
        in the same layout.

        Args:
            key_padding_mask: ``[B, S]`` (``[S]`` unbatched); bool True = ignore that key, or
                float added to the scores.
            need_weights: also return the attention weights (materialized ``[B, H, L, S']``).
            attn_mask: ``[L, S]`` or ``[B·H, L, S]``; bool True = may NOT attend (PyTorch's
                convention), or float added to the scores.
            average_attn_weights: average the returned weights over heads.
            is_causal: PyTorch's hint that ``attn_mask`` is the causal mask; as in PyTorch it
                needs ``attn_mask``, which is what is applied.

        Returns ``(attn_output, attn_weights)``: the output in the query's layout with ``E``
        channels, and ``[B, L, S']`` (averaged) or ``[B, H, L, S']`` weights (batch dim dropped
        when unbatched) or None. ``S' = S`` plus one per ``add_bias_kv``/``add_zero_attn`` token.
        """
        if self.training and self.dropout > 0:
            raise ValueError(f"dropout={self.dropout} cannot be applied while training: the integral transform has "
                             "no attention dropout (call .eval() or convert an MHA with dropout=0)")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True needs attn_mask (PyTorch's is_causal is a hint that attn_mask is the "
                             "causal mask)")
        x, source, batched = self._inputs(query, key, value)
        (B, L, _), S = x.shape, source.shape[1] - self.extra_tokens
        padding, mask = self._masks(key_padding_mask, attn_mask, B, L, S, batched, x.dtype)

        out = self.transform(x, source=source, padding_mask=padding, attn_mask=mask)
        weights = None
        if need_weights:
            weights = self.transform.kernel_matrix(x, source=source, padding_mask=padding, attn_mask=mask)
            if average_attn_weights:
                weights = weights.mean(1)
            if not batched:
                weights = weights.squeeze(0)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    # -- input preparation -----------------------------------------------------------

    def _inputs(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Queries ``[B, L, E]`` and sources ``[B, S', kdim + vdim + extra]``, and whether batched."""
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be [L, E] (unbatched) or 3-D batched, got shape {tuple(query.shape)}")
        batched = query.dim() == 3
        for name, t in (("key", key), ("value", value)):
            if t.dim() != query.dim():
                raise ValueError(f"{name} must have the same rank as query ({query.dim()}), got shape {tuple(t.shape)}")
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        B = query.shape[0]
        for name, t, width in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[0] != B or t.shape[-1] != width:
                layout = "[N, E]" if not batched else ("[B, N, E]" if self.batch_first else "[N, B, E]")
                raise ValueError(f"{name} must be {layout} with batch {B} and {width} channels, got shape "
                                 f"{tuple(t.shape)} (in [B, N, E] order)")
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"key and value must have the same number of tokens, got {key.shape[1]} and "
                             f"{value.shape[1]}")
        source = torch.cat([key, value], -1)
        if self.extra_tokens:
            source = F.pad(source, (0, self.extra_tokens))
            flags = torch.eye(self.extra_tokens, dtype=source.dtype, device=source.device)
            extra = torch.cat([flags.new_zeros(self.extra_tokens, self.kdim + self.vdim), flags], -1)
            source = torch.cat([source, extra.expand(B, -1, -1)], 1)
        return query, source, batched

    def _masks(
        self,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        B: int,
        L: int,
        S: int,
        batched: bool,
        dtype: torch.dtype,
    ) -> tuple[Tensor | None, Tensor | None]:
        """PyTorch's masks in the operator's conventions: ``(padding [B, S'], attn_mask)``.

        The operator's ``attn_mask`` is bool True = may interact, or float added to the score
        (one tensor, ``[L, S']`` or ``[B, H, L, S']``); bool key padding stays a padding mask.
        Float key padding and a bool ``attn_mask`` beside a float mask become one float mask
        with ``-inf`` where masked, as PyTorch merges them.
        """
        H, n = self.num_heads, self.extra_tokens
        padding: Tensor | None = None
        float_parts: list[Tensor] = []
        allowed: Tensor | None = None
        if key_padding_mask is not None:
            kpm = key_padding_mask if batched else key_padding_mask.unsqueeze(0)
            _check_mask_dtype("key_padding_mask", kpm)
            if tuple(kpm.shape) != (B, S):
                expect = f"[{B}, {S}]" if batched else f"[{S}]"
                raise ValueError(f"key_padding_mask must be {expect} (batch, keys), got shape "
                                 f"{tuple(key_padding_mask.shape)}")
            if kpm.dtype == torch.bool:
                padding = F.pad(kpm, (0, n), value=False)
            else:
                float_parts.append(kpm.to(dtype)[:, None, None, :])
        if attn_mask is not None:
            _check_mask_dtype("attn_mask", attn_mask)
            if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (B * H, L, S):
                am = attn_mask.view(B, H, L, S)
            elif tuple(attn_mask.shape) == (L, S):
                am = attn_mask
            else:
                raise ValueError(f"attn_mask must be [L={L}, S={S}] or [batch*num_heads={B * H}, {L}, {S}], "
                                 f"got shape {tuple(attn_mask.shape)}")
            if am.dtype == torch.bool:
                allowed = ~am
            else:
                float_parts.append(am.to(dtype))
        if float_parts:
            mask = float_parts[0] if len(float_parts) == 1 else float_parts[0] + float_parts[1]
            if allowed is not None:
                mask = torch.where(allowed, mask, float("-inf"))
            if mask.dim() == 4:
                mask = mask.expand(B, H, L, S)
            return padding, F.pad(mask, (0, n), value=0.0)
        if allowed is not None:
            allowed = F.pad(allowed, (0, n), value=True)
        return padding, allowed


def _check_mask_dtype(name: str, mask: Tensor) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"{name} must be bool or floating point, got {mask.dtype}")


def from_multihead_attention(mha: nn.MultiheadAttention, *, integrator: Exact | None = None
                             ) -> ITNetMultiheadAttention:
    """An :class:`ITNetMultiheadAttention` that computes exactly what ``mha`` computes.

    Copies ``mha``'s projections into the transform (``q_proj`` ← ``Wq``; ``k_proj``/``v_proj`` ←
    ``Wk``/``Wv`` in their blocks of the ``[key | value]`` source features; ``o_proj`` ←
    ``out_proj``), with ``β = 1``. The result has ``mha``'s dtype, device and train/eval mode.

    Args:
        mha: the module to convert (any ``kdim``/``vdim``, ``bias``, ``add_bias_kv``,
            ``add_zero_attn``, ``batch_first``; ``dropout > 0`` only usable in eval mode).
        integrator: the transform's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).
    """
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
    if (mha.bias_k is None) != (mha.bias_v is None):
        raise ValueError("mha has only one of bias_k and bias_v; add_bias_kv needs both")
    E, kdim, vdim = mha.embed_dim, mha.kdim, mha.vdim
    bias = mha.in_proj_bias is not None
    module = ITNetMultiheadAttention(
        E, mha.num_heads, kdim=kdim, vdim=vdim, bias=bias, add_bias_kv=mha.bias_k is not None,
        add_zero_attn=mha.add_zero_attn, batch_first=mha.batch_first, dropout=mha.dropout,
        integrator=integrator,
    )
    weight = mha.out_proj.weight
    module.to(device=weight.device, dtype=weight.dtype)
    if mha.in_proj_weight is not None:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = mha.in_proj_bias.chunk(3) if bias else (None, None, None)
    t = module.transform
    with torch.no_grad():
        t.q_proj.weight.copy_(wq)
        t.k_proj.weight.zero_()
        t.k_proj.weight[:, :kdim].copy_(wk)
        t.v_proj.weight.zero_()
        t.v_proj.weight[:, kdim: kdim + vdim].copy_(wv)
        t.o_proj.weight.copy_(mha.out_proj.weight)
        t.beta.fill_(1.0)
        if bias:
            t.q_proj.bias.copy_(bq)
            t.k_proj.bias.copy_(bk)
            t.v_proj.bias.copy_(bv)
            t.o_proj.bias.copy_(mha.out_proj.bias)
        flag = kdim + vdim  # the first extra-token flag channel
        if mha.bias_k is not None:
            # Projected key of the bias token: column + bk = bias_k (likewise for the value).
            t.k_proj.weight[:, flag].copy_(mha.bias_k.reshape(E) - (bk if bias else 0.0))
            t.v_proj.weight[:, flag].copy_(mha.bias_v.reshape(E) - (bv if bias else 0.0))
            flag += 1
        if mha.add_zero_attn:
            # Projected key and value of the zero token: column + b = −b + b = 0 exactly.
            t.k_proj.weight[:, flag].copy_(-bk if bias else torch.zeros_like(wk[:, 0]))
            t.v_proj.weight[:, flag].copy_(-bv if bias else torch.zeros_like(wv[:, 0]))
    module.train(mha.training)
    return module


__all__ = ["ITNetMultiheadAttention", "from_multihead_attention"]
