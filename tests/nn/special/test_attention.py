"""Multi-head attention as an integral transform: equal to nn.MultiheadAttention and SDPA.

Every test compares the converted module against the real PyTorch computation (the MHA
itself, or F.scaled_dot_product_attention on the MHA's projections), on both backends
(the tiled one with 16×16 tiles so several tiles and partial tiles are exercised), in fp32
(1e-5) and fp64 (1e-10), with odd lengths and L != S.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.nn.special.attention import ITNetMultiheadAttention, from_multihead_attention
from tests.nn.special.equivalence import DTYPES, EXACT, ON_BACKENDS, assert_close

E, HEADS, BATCH = 8, 2, 2


def make_mha(dtype: torch.dtype = torch.float64, **kw) -> nn.MultiheadAttention:
    """An MHA in eval mode with nonzero biases (PyTorch initialises them to zero)."""
    mha = nn.MultiheadAttention(E, HEADS, **kw).to(dtype)
    with torch.no_grad():
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha.eval()


def convert(mha: nn.MultiheadAttention, backend: str) -> ITNetMultiheadAttention:
    return from_multihead_attention(mha, integrator=EXACT[backend])


def sequences(mha: nn.MultiheadAttention, L: int, S: int, dtype: torch.dtype, B: int = BATCH):
    """query, key, value in the MHA's layout."""

    def seq(n: int, c: int) -> torch.Tensor:
        return torch.randn(B, n, c, dtype=dtype) if mha.batch_first else torch.randn(n, B, c, dtype=dtype)

    return seq(L, E), seq(S, mha.kdim), seq(S, mha.vdim)


def assert_same_as_mha(mha, module, dtype, *args, **kwargs) -> None:
    """Outputs and (per-head and averaged) weights agree, and need_weights=False agrees too."""
    for average in (True, False):
        y_ref, w_ref = mha(*args, **kwargs, need_weights=True, average_attn_weights=average)
        y, w = module(*args, **kwargs, need_weights=True, average_attn_weights=average)
        assert y.shape == y_ref.shape and w.shape == w_ref.shape
        assert_close(y, y_ref, dtype)
        assert_close(w, w_ref, dtype)
    y_ref, _ = mha(*args, **kwargs, need_weights=False)
    y, w = module(*args, **kwargs, need_weights=False)
    assert w is None
    assert_close(y, y_ref, dtype)


# --------------------------------------------------------------------------------------
# Layouts, widths, biases, lengths
# --------------------------------------------------------------------------------------

CONFIGS = {
    # self-attention on one tensor, eval, no grad: MHA takes its native fast path
    "self-batch_first-63": (dict(batch_first=True), 63, 63, "self"),
    "cross-seq_first-7x63": (dict(), 7, 63, "cross"),
    "kdim5-vdim3-63x1": (dict(kdim=5, vdim=3, batch_first=True), 63, 1, "cross"),
    "no_bias-1x7": (dict(bias=False), 1, 7, "cross"),
    "key_is_value-63x7": (dict(batch_first=True), 63, 7, "key_is_value"),
}


@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize("config", CONFIGS, ids=list(CONFIGS))
def test_matches_multihead_attention(config, backend, dtype):
    kw, L, S, sharing = CONFIGS[config]
    mha = make_mha(dtype, **kw)
    module = convert(mha, backend)
    q, k, v = sequences(mha, L, S, dtype)
    if sharing == "self":
        k = v = q
    elif sharing == "key_is_value":
        v = k
    with torch.no_grad():
        assert_same_as_mha(mha, module, dtype, q, k, v)


def test_construction_is_the_attention_parameterization():
    """softmax, bilinear only with β = 1, no kernel MLP, no table, no decay; [key | value] sources."""
    mha = make_mha(kdim=5, vdim=3)
    module = convert(mha, "reference")
    t = module.transform
    assert isinstance(t, IntegralTransform)
    assert t.spec.mode == "softmax" and t.spec.support == "all" and t.spec.offset_range is None
    assert t.kernel.width == 0 and t.a_proj is None and t.table is None and t.decay_proj is None
    assert torch.equal(t.beta, torch.ones(HEADS, dtype=torch.float64))
    assert t.source_dim == 5 + 3 and t.head_dim == t.value_dim == E // HEADS
    assert torch.equal(t.k_proj.weight[:, :5], mha.k_proj_weight) and not t.k_proj.weight[:, 5:].any()
    assert torch.equal(t.v_proj.weight[:, 5:], mha.v_proj_weight) and not t.v_proj.weight[:, :5].any()
    assert torch.equal(t.q_proj.weight, mha.q_proj_weight) and torch.equal(t.o_proj.weight, mha.out_proj.weight)


def test_direct_construction_keeps_the_multihead_structure():
    """Without a source MHA: key reads only key, value only value, and the zero token is zero."""
    module = ITNetMultiheadAttention(E, HEADS, kdim=5, vdim=3, add_bias_kv=True, add_zero_attn=True,
                                     integrator=EXACT["reference"]).double()
    t = module.transform
    assert not t.k_proj.weight[:, 5:8].any() and not t.v_proj.weight[:, :5].any()
    source_zero_token = torch.zeros(1, 1, 5 + 3 + 2, dtype=torch.float64)
    source_zero_token[..., -1] = 1
    assert not t.k_proj(source_zero_token).any() and not t.v_proj(source_zero_token).any()


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------

def random_masks(case: str, L: int, S: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Masks in PyTorch's conventions; key 0 is never masked, so no query loses every key."""
    kw = {}
    kpm_kind, _, attn_kind = case.partition("+")
    if kpm_kind == "kpm_bool":
        kpm = torch.rand(BATCH, S) < 0.4
        kpm[:, 0] = False
        kw["key_padding_mask"] = kpm
    elif kpm_kind == "kpm_float":
        kw["key_padding_mask"] = torch.randn(BATCH, S, dtype=dtype)
    if attn_kind:
        kind, shape = attn_kind.split("_")
        size = (L, S) if shape == "2d" else (BATCH * HEADS, L, S)
        if kind == "bool":
            mask = torch.rand(size) < 0.4
            mask[..., 0] = False
        else:
            mask = torch.randn(size, dtype=dtype)
        kw["attn_mask"] = mask
    return kw


MASK_CASES = [
    "none+bool_2d", "none+float_2d", "none+bool_3d", "none+float_3d", "kpm_bool", "kpm_float",
    "kpm_bool+float_2d", "kpm_float+bool_3d", "kpm_bool+bool_2d", "kpm_float+float_3d",
]


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize(("L", "S"), [(7, 63), (63, 7)])
@pytest.mark.parametrize("case", MASK_CASES)
def test_masks_match_multihead_attention(case, L, S, backend, dtype):
    mha = make_mha(dtype)
    module = convert(mha, backend)
    q, k, v = sequences(mha, L, S, dtype)
    with torch.no_grad():
        assert_same_as_mha(mha, module, dtype, q, k, v, **random_masks(case, L, S, dtype))


def sdpa_reference(mha: nn.MultiheadAttention, q, k, v, **sdpa_kwargs) -> torch.Tensor:
    """The MHA's projections around F.scaled_dot_product_attention (batch-first [B, N, E] in and out)."""
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (HEADS, -1)).transpose(1, 2)

    o = F.scaled_dot_product_attention(heads(F.linear(q, wq, bq)), heads(F.linear(k, wk, bk)),
                                       heads(F.linear(v, wv, bv)), **sdpa_kwargs)
    return mha.out_proj(o.transpose(1, 2).flatten(2))


@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize(("L", "S"), [(1, 1), (7, 7), (63, 63), (7, 63), (63, 7)])
def test_causal_matches_sdpa_and_multihead_attention(L, S, backend, dtype):
    """is_causal with its (top-left aligned) causal attn_mask = SDPA(is_causal=True)."""
    mha = make_mha(dtype, batch_first=True)
    module = convert(mha, backend)
    q, k, v = sequences(mha, L, S, dtype)
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)  # PyTorch MHA convention: True = may not attend
    with torch.no_grad():
        y, _ = module(q, k, v, attn_mask=causal, is_causal=True, need_weights=False)
        assert_close(y, sdpa_reference(mha, q, k, v, is_causal=True), dtype)
        y_mha, _ = mha(q, k, v, attn_mask=causal, is_causal=True, need_weights=False)  # MHA's SDPA path
        assert_close(y, y_mha, dtype)
        y, w = module(q, k, v, attn_mask=causal, is_causal=True)
        y_mha, w_mha = mha(q, k, v, attn_mask=causal, is_causal=True)  # MHA's explicit-softmax path
        assert_close(y, y_mha, dtype)
        assert_close(w, w_mha, dtype)


@DTYPES
@ON_BACKENDS
def test_key_padding_matches_sdpa(backend, dtype):
    L, S = 63, 7
    mha = make_mha(dtype, batch_first=True)
    module = convert(mha, backend)
    q, k, v = sequences(mha, L, S, dtype)
    pad = torch.zeros(BATCH, S, dtype=torch.bool)
    pad[0, 4:] = True
    pad[1, 1:3] = True
    with torch.no_grad():
        y, _ = module(q, k, v, key_padding_mask=pad, need_weights=False)
        assert_close(y, sdpa_reference(mha, q, k, v, attn_mask=~pad[:, None, None, :]), dtype)  # SDPA: True = attend


# --------------------------------------------------------------------------------------
# Extra tokens, unbatched inputs
# --------------------------------------------------------------------------------------

@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("extras", ["bias_kv", "zero_attn", "both"])
def test_extra_key_value_tokens_match(extras, bias, backend, dtype):
    """add_bias_kv / add_zero_attn are extra source tokens; masks are padded as PyTorch does."""
    options = dict(add_bias_kv=extras in ("bias_kv", "both"), add_zero_attn=extras in ("zero_attn", "both"))
    mha = make_mha(dtype, bias=bias, kdim=5, vdim=3, **options)
    module = convert(mha, backend)
    L, S = 7, 63
    q, k, v = sequences(mha, L, S, dtype)
    with torch.no_grad():
        assert_same_as_mha(mha, module, dtype, q, k, v)
        assert_same_as_mha(mha, module, dtype, q, k, v, **random_masks("kpm_bool+bool_3d", L, S, dtype))
        _, w = module(q, k, v)
    assert w.shape == (BATCH, L, S + int(options["add_bias_kv"]) + int(options["add_zero_attn"]))


@DTYPES
@ON_BACKENDS
def test_unbatched_inputs_match(backend, dtype):
    mha = make_mha(dtype, kdim=5, vdim=3)
    module = convert(mha, backend)
    L, S = 7, 63
    q, k, v = (t[:, 0] for t in sequences(mha, L, S, dtype))
    pad = torch.rand(S) < 0.3
    pad[0] = False
    mask = torch.randn(HEADS, L, S, dtype=dtype)
    with torch.no_grad():
        assert_same_as_mha(mha, module, dtype, q, k, v, key_padding_mask=pad, attn_mask=mask)
        y, w = module(q, k, v, average_attn_weights=False)
    assert y.shape == (L, E) and w.shape == (HEADS, L, S)


# --------------------------------------------------------------------------------------
# Gradients and training
# --------------------------------------------------------------------------------------

def mha_weight_grads(mha: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
    if mha.in_proj_weight is not None:
        wq, wk, wv = mha.in_proj_weight.grad.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight.grad, mha.k_proj_weight.grad, mha.v_proj_weight.grad
    bq, bk, bv = mha.in_proj_bias.grad.chunk(3)
    return dict(wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wo=mha.out_proj.weight.grad, bo=mha.out_proj.bias.grad)


def itnet_weight_grads(module: ITNetMultiheadAttention) -> dict[str, torch.Tensor]:
    t, kdim, vdim = module.transform, module.kdim, module.vdim
    return dict(wq=t.q_proj.weight.grad, wk=t.k_proj.weight.grad[:, :kdim],
                wv=t.v_proj.weight.grad[:, kdim:kdim + vdim], bq=t.q_proj.bias.grad, bk=t.k_proj.bias.grad,
                bv=t.v_proj.bias.grad, wo=t.o_proj.weight.grad, bo=t.o_proj.bias.grad)


@ON_BACKENDS
@pytest.mark.parametrize("widths", [dict(), dict(kdim=5, vdim=3)], ids=["packed_in_proj", "kdim5_vdim3"])
def test_gradients_match_multihead_attention_fp64(widths, backend):
    """d/dquery, d/dkey, d/dvalue and the projection weight gradients agree with MHA's (fp64)."""
    dtype, L, S = torch.float64, 63, 7
    mha = make_mha(dtype, **widths).train()  # dropout = 0, so training mode is allowed
    module = convert(mha, backend)
    q, k, v = sequences(mha, L, S, dtype)
    masks = random_masks("kpm_bool+float_2d", L, S, dtype)
    results = []
    for m in (mha, module):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        y, w = m(*leaves, **masks)
        probe = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        ((y * probe).sum() + (w * w).sum()).backward()
        results.append([t.grad for t in leaves])
    for got, expected in zip(results[1], results[0]):
        assert_close(got, expected, dtype)
    ours, theirs = itnet_weight_grads(module), mha_weight_grads(mha)
    for name in theirs:
        assert_close(ours[name], theirs[name], dtype)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("which", ["attn_mask", "key_padding_mask"])
def test_learned_float_mask_gets_mha_gradient(which, backend):
    """A float mask that requires grad (e.g. a learned bias) is differentiated like PyTorch's."""
    dtype, L, S = torch.float64, 7, 9
    mha = make_mha(dtype)
    q, k, v = sequences(mha, L, S, dtype)
    shape = (L, S) if which == "attn_mask" else (BATCH, S)
    grads = []
    for m in (mha, convert(mha, backend)):
        mask = torch.randn(shape, dtype=dtype, requires_grad=True)
        with torch.no_grad():
            mask.copy_(torch.linspace(-1, 1, mask.numel(), dtype=dtype).reshape(shape))
        y, _ = m(q, k, v, **{which: mask})
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)).sum().backward()
        grads.append(mask.grad)
    assert grads[1] is not None
    assert_close(grads[1], grads[0], dtype)


def test_module_is_trainable():
    """All weights are registered parameters; one optimizer step changes the output."""
    mha = make_mha(torch.float32).train()
    module = convert(mha, "torch")
    params = dict(module.named_parameters())
    assert {"transform.q_proj.weight", "transform.k_proj.weight", "transform.v_proj.weight",
            "transform.o_proj.weight", "transform.beta"} <= set(params)
    q, k, v = sequences(mha, 7, 7, torch.float32)
    before, _ = module(q, k, v, need_weights=False)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    before.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    opt.step()
    after, _ = module(q, k, v, need_weights=False)
    assert (after - before).abs().max() > 1e-4


# --------------------------------------------------------------------------------------
# Fully masked queries, dropout, bad input
# --------------------------------------------------------------------------------------

@ON_BACKENDS
def test_fully_masked_query_gives_zero_attention_not_nan(backend):
    """PyTorch returns NaN for a query with every key masked; ITNet gives zero attention by design."""
    mha = make_mha(torch.float64, batch_first=True)
    module = convert(mha, backend)
    L, S = 7, 63
    q, k, v = sequences(mha, L, S, torch.float64)
    mask = torch.zeros(L, S, dtype=torch.bool)
    mask[3] = True  # query 3 may attend to nothing
    q.requires_grad_()
    y, w = module(q, k, v, attn_mask=mask)
    y_ref, w_ref = mha(q, k, v, attn_mask=mask)
    assert torch.isnan(y_ref[:, 3]).all() and torch.isnan(w_ref[:, 3]).all()
    assert torch.isfinite(y).all() and torch.isfinite(w).all()
    assert torch.equal(y[:, 3], mha.out_proj.bias.expand(BATCH, E))  # zero attention, then the output bias
    assert not w[:, 3].any()
    keep = [i for i in range(L) if i != 3]
    assert_close(y[:, keep], y_ref[:, keep], torch.float64)
    y.sum().backward()
    assert torch.isfinite(q.grad).all() and not q.grad[:, 3].any()


def test_dropout_refused_while_training_but_fine_in_eval():
    mha = make_mha(torch.float64, dropout=0.1).train()
    module = convert(mha, "reference")
    assert module.training
    q, k, v = sequences(mha, 7, 7, torch.float64)
    with pytest.raises(ValueError, match="dropout"):
        module(q, k, v)
    mha.eval()
    module.eval()
    with torch.no_grad():
        assert_same_as_mha(mha, module, torch.float64, q, k, v)


BAD_CALLS = {
    "query rank": ("query", lambda q, k, v: (q[None], k, v)),
    "key rank": ("key", lambda q, k, v: (q, k[0], v)),
    "query channels": ("query", lambda q, k, v: (q[..., :-1], k, v)),
    "key channels": ("key", lambda q, k, v: (q, k[..., :-1], v)),
    "value channels": ("value", lambda q, k, v: (q, k, v[..., :-1])),
    "key/value lengths": ("same number of tokens", lambda q, k, v: (q, k, v[:-1])),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_inputs_name_the_argument(case):
    mha = make_mha(torch.float64, kdim=5, vdim=3)
    module = convert(mha, "reference")
    message, bend = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        module(*bend(*sequences(mha, 7, 9, torch.float64)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(attn_mask=torch.zeros(7, 8, dtype=torch.bool)), "attn_mask must be"),
        (dict(attn_mask=torch.zeros(HEADS, 7, 9, dtype=torch.bool)), "attn_mask must be"),
        (dict(attn_mask=torch.zeros(7, 9, dtype=torch.long)), "attn_mask must be bool or floating"),
        (dict(key_padding_mask=torch.zeros(BATCH, 8, dtype=torch.bool)), "key_padding_mask must be"),
        (dict(key_padding_mask=torch.zeros(BATCH, 9, dtype=torch.int32)), "key_padding_mask must be bool"),
        (dict(is_causal=True), "is_causal=True needs attn_mask"),
    ],
)
def test_bad_masks_name_the_argument(kwargs, message):
    mha = make_mha(torch.float64)
    module = convert(mha, "reference")
    with pytest.raises(ValueError, match=message):
        module(*sequences(mha, 7, 9, torch.float64), **kwargs)


def test_conversion_refuses_other_modules():
    with pytest.raises(TypeError, match=r"mha must be a torch\.nn\.MultiheadAttention"):
        from_multihead_attention(nn.Linear(4, 4))
