"""The reference integral transform: every pair materialized, the spec in code.

Reads like DESIGN §1. Memory is ``O(B·H·Nq·Ns·r)`` — at N = 16k with 4 heads and r = 16 that
is ~68 GB — so it is for tests and small inputs; :mod:`itnet_scale.ops.tiled` computes the
same numbers block by block.
"""

from __future__ import annotations

from torch import Tensor

from itnet_scale.ops.spec import (
    KernelInputs,
    KernelSpec,
    decay_log,
    pair_scores,
    source_weights,
    support_mask,
)


def kernel_matrix(inp: KernelInputs, spec: KernelSpec) -> Tensor:
    """``K(i,j)`` for every pair: ``[B, H, Nq, Ns]``.

    softmax:  K = w_j m(i,j) exp(s)·D / Σ_j' w_j' m(i,j') exp(s)·D   (0 where nothing is visible)
    linear:   K = w_j m(i,j) s·D
    """
    s = pair_scores(inp, spec)                     # s(i,j) = β q·k/√d + w2ᵀσ(a_i + b_j) + t(p_i − p_j)
    m = support_mask(inp, spec)                    # m(i,j): support, padding, attn_mask
    w = source_weights(inp)                        # w_j
    log_d = decay_log(inp)                         # log D(i,j) = −(τ_i − τ_j)

    if spec.mode == "softmax":
        logits = s if log_d is None else s + log_d
        if m is not None:
            logits = logits.masked_fill(~m, float("-inf"))
        top = logits.amax(-1, keepdim=True).clamp_min(-1e30).detach()  # a fully masked row keeps top finite
        e = (logits - top).exp()
        if w is not None:
            e = e * w
        total = e.sum(-1, keepdim=True)
        return e / total.masked_fill(total == 0, 1.0)  # a query that sees no source gets K = 0

    K = s if log_d is None else s * log_d.masked_fill(~m, 0.0).exp()  # decay implies a causal m
    if w is not None:
        K = K * w
    if m is not None:
        K = K.masked_fill(~m, 0.0)
    return K


def integral_transform_reference(inp: KernelInputs, spec: KernelSpec) -> Tensor:
    """``out_i = Σ_j K(i,j) v_j``: ``[B, H, Nq, e]``."""
    return kernel_matrix(inp, spec) @ inp.v
