"""Convolution as an integral transform: equal to nn.Conv1d / nn.Conv2d (F.conv1d / F.conv2d).

The converted module is compared with the original over strides, paddings (int, tuple,
"same", "valid"), dilations, groups, bias on/off and odd sizes, on both backends (tiled with
16×16 tiles, so window-skipped and partial tiles occur), in fp32 (1e-5) and fp64 (1e-10);
gradients w.r.t. the input and the conv weight (read back from ``v_proj``) in fp64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.nn.special.convolution import ITNetConv, from_conv1d, from_conv2d
from tests.nn.special.equivalence import DTYPES, EXACT, ON_BACKENDS, assert_close

C_IN, C_OUT, BATCH = 4, 6, 2


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


# kernel_size, stride, padding, dilation, groups, bias, spatial size
CONV1D_CASES = [
    dict(k=3, stride=1, padding=0, dilation=1, groups=1, bias=True, n=23),
    dict(k=3, stride=2, padding=1, dilation=1, groups=2, bias=False, n=23),
    dict(k=4, stride=3, padding=(2,), dilation=2, groups=1, bias=True, n=31),
    dict(k=5, stride=1, padding="same", dilation=2, groups=2, bias=True, n=19),
    dict(k=4, stride=1, padding="same", dilation=1, groups=1, bias=False, n=7),  # odd total padding
    dict(k=2, stride=2, padding="valid", dilation=3, groups=2, bias=True, n=37),
    dict(k=1, stride=2, padding=0, dilation=1, groups=1, bias=True, n=1),  # a single position
    dict(k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, n=1),  # taps mostly in the padding
    dict(k=7, stride=5, padding=3, dilation=1, groups=2, bias=False, n=63),
]


@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize("case", CONV1D_CASES, ids=case_id)
def test_conv1d_matches(case, backend, dtype):
    conv = nn.Conv1d(C_IN, C_OUT, case["k"], stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=case["groups"], bias=case["bias"]).to(dtype)
    module = from_conv1d(conv, integrator=EXACT[backend])
    x = torch.randn(BATCH, C_IN, case["n"], dtype=dtype)
    with torch.no_grad():
        expected, got = conv(x), module(x)
    assert got.shape == expected.shape
    assert_close(got, expected, dtype)


CONV2D_CASES = [
    dict(k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, n=(9, 11)),
    dict(k=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False, n=(9, 11)),
    dict(k=(2, 3), stride=1, padding="same", dilation=(2, 1), groups=1, bias=True, n=(7, 5)),
    dict(k=3, stride=(1, 3), padding="valid", dilation=2, groups=2, bias=True, n=(11, 13)),
    dict(k=(1, 4), stride=2, padding=(0, 1), dilation=1, groups=1, bias=False, n=(1, 7)),
]


@DTYPES
@ON_BACKENDS
@pytest.mark.parametrize("case", CONV2D_CASES, ids=case_id)
def test_conv2d_matches(case, backend, dtype):
    conv = nn.Conv2d(C_IN, C_OUT, case["k"], stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=case["groups"], bias=case["bias"]).to(dtype)
    module = from_conv2d(conv, integrator=EXACT[backend])
    x = torch.randn(BATCH, C_IN, *case["n"], dtype=dtype)
    with torch.no_grad():
        expected, got = conv(x), module(x)
    assert got.shape == expected.shape
    assert_close(got, expected, dtype)


def sweep(conv_class, kernels, strides, paddings, dilations, sizes):
    """Every combination (with groups 1/2 and bias on/off) that PyTorch accepts."""
    for k, stride, padding, dilation, groups, bias in itertools.product(
        kernels, strides, paddings, dilations, (1, 2), (True, False)
    ):
        if padding == "same" and stride not in (1, (1, 1)):
            continue  # PyTorch refuses strided "same"
        yield conv_class(C_IN, C_OUT, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         bias=bias), sizes


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@DTYPES
@ON_BACKENDS
def test_conv1d_and_conv2d_full_grid(backend, dtype):
    """The full grid of options; a failure names the convolution."""
    grids = [
        sweep(nn.Conv1d, (1, 2, 3, 4), (1, 2, 3), (0, 2, (1,), "same", "valid"), (1, 2), [(5,), (16,), (17,)]),
        sweep(nn.Conv2d, ((3, 3), (2, 3)), (1, (2, 1)), ((1, 0), 2, "same", "valid"), (1, (1, 2)), [(6, 7)]),
    ]
    checked = 0
    for conv, sizes in itertools.chain(*grids):
        conv = conv.to(dtype)
        module = (from_conv1d if isinstance(conv, nn.Conv1d) else from_conv2d)(conv, integrator=EXACT[backend])
        for size in sizes:
            x = torch.randn(BATCH, C_IN, *size, dtype=dtype)
            if min(module.output_size(size)) < 1:  # PyTorch refuses too; so must the module
                with pytest.raises(ValueError, match="too small"):
                    module(x)
                continue
            with torch.no_grad():
                expected, got = conv(x), module(x)
            assert got.shape == expected.shape, f"{conv} on {size}"
            assert_close(got, expected, dtype, what=f"{conv} on {size}:")
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("dims", [1, 2])
def test_unbatched_input_matches(dims):
    conv = (nn.Conv1d(C_IN, C_OUT, 3, padding=1) if dims == 1 else nn.Conv2d(C_IN, C_OUT, 3, stride=2)).double()
    module = (from_conv1d if dims == 1 else from_conv2d)(conv, integrator=EXACT["torch"])
    x = torch.randn(C_IN, *(9,) * dims, dtype=torch.float64)
    with torch.no_grad():
        assert_close(module(x), conv(x), torch.float64)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------

GRAD_CASES = {
    "conv1d": lambda: nn.Conv1d(C_IN, C_OUT, 3, stride=2, padding=2, dilation=2, groups=2),
    "conv2d": lambda: nn.Conv2d(C_IN, C_OUT, (3, 2), stride=(1, 2), padding=1, groups=2),
}


@ON_BACKENDS
@pytest.mark.parametrize("kind", GRAD_CASES)
def test_gradients_match_fp64(kind, backend):
    """d/dinput, d/dweight (v_proj's gradient read back in conv layout) and d/dbias agree."""
    conv = GRAD_CASES[kind]().double()
    module = (from_conv1d if kind == "conv1d" else from_conv2d)(conv, integrator=EXACT[backend])
    x = torch.randn(BATCH, C_IN, *((21,) if kind == "conv1d" else (9, 7)), dtype=torch.float64)
    grads = []
    for m in (conv, module):
        leaf = x.clone().requires_grad_()
        y = m(leaf)
        probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        (y * probe).sum().backward()
        grads.append(leaf.grad)
    assert_close(grads[1], grads[0], torch.float64)
    t = module.transform
    assert_close(module.conv_weight_from(t.v_proj.weight.grad), conv.weight.grad, torch.float64)
    assert_close(t.o_proj.bias.grad, conv.bias.grad, torch.float64)
    assert t.table.grad is not None and t.table.grad.abs().sum() > 0, "the offset table is trainable"


# --------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------

def test_construction_is_the_convolution_parameterization():
    """Linear mode, no bilinear term, no kernel MLP, one head per tap with a one-hot offset table."""
    conv = nn.Conv2d(C_IN, C_OUT, (3, 2), dilation=(2, 3), groups=2).double()
    module = from_conv2d(conv)
    t = module.transform
    assert isinstance(t, IntegralTransform)
    assert t.spec.mode == "linear" and t.q_proj is None and t.kernel.width == 0 and t.decay_proj is None
    assert t.heads == 6 and t.value_dim == C_OUT and t.pos_dim == 2
    assert t.spec.support == "window" and t.spec.support_size == 4  # the taps reach 2·2 rows, 1·3 columns
    assert t.spec.offset_range == (4, 3)
    table = t.table.detach().reshape(6, 9, 7)  # offsets −4…4 (rows) × −3…3 (columns)
    assert torch.equal(table.sum((1, 2)), torch.ones(6, dtype=torch.float64))
    for h, (ty, tx) in enumerate(module.taps):
        assert table[h, 4 - 2 * ty, 3 - 3 * tx] == 1  # δ = p_query − p_source = −tap·dilation
    assert torch.equal(module.conv_weight_from(t.v_proj.weight), conv.weight)
    across_groups = t.v_proj.weight.view(6, 2, C_OUT // 2, 2, C_IN // 2)[:, [0, 1], :, [1, 0]]
    assert not across_groups.any()
    assert not t.v_proj.bias.any() and torch.equal(t.o_proj.bias, conv.bias)


def test_window_support_lets_the_tiled_backend_skip_far_tiles():
    """A long input: result still exact while most source tiles lie outside every query tile's window."""
    conv = nn.Conv1d(C_IN, C_OUT, 3, padding=1).double()
    module = from_conv1d(conv, integrator=EXACT["torch"])
    x = torch.randn(1, C_IN, 257, dtype=torch.float64)
    with torch.no_grad():
        assert_close(module(x), conv(x), torch.float64)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_other_padding_modes_are_refused(mode):
    with pytest.raises(ValueError, match=f"padding_mode='{mode}'"):
        from_conv1d(nn.Conv1d(C_IN, C_OUT, 3, padding=1, padding_mode=mode))


def test_wrong_module_type_is_refused():
    with pytest.raises(TypeError, match=r"conv must be a torch\.nn\.Conv1d"):
        from_conv1d(nn.Conv2d(C_IN, C_OUT, 3))
    with pytest.raises(TypeError, match=r"conv must be a torch\.nn\.Conv2d"):
        from_conv2d(nn.Conv1d(C_IN, C_OUT, 3))


@pytest.mark.parametrize(
    ("dims", "shape", "message"),
    [
        (1, (BATCH, C_IN + 1, 9), "input must be"),  # channels
        (1, (BATCH, 1, C_IN, 9), "input must be"),  # rank
        (2, (BATCH, C_IN, 9), "input must be"),  # conv2d given an unbatched 1-D-like tensor of wrong channels
        (2, (C_IN, 2, 9), "too small"),  # 2 rows < kernel 3 without padding
        (1, (BATCH, C_IN, 2), "too small"),
    ],
)
def test_bad_input_names_the_argument(dims, shape, message):
    conv = nn.Conv1d(C_IN, C_OUT, 3) if dims == 1 else nn.Conv2d(C_IN, C_OUT, 3)
    module = (from_conv1d if dims == 1 else from_conv2d)(conv)
    with pytest.raises(ValueError, match=message):
        module(torch.randn(*shape))


def test_weight_readback_checks_its_shape():
    module = from_conv1d(nn.Conv1d(C_IN, C_OUT, 3))
    with pytest.raises(ValueError, match="v_weight must be"):
        module.conv_weight_from(torch.zeros(3, C_IN))
    with pytest.raises(ValueError, match="weight must be"):
        module.load_conv_weight(torch.zeros(C_OUT, C_IN, 2), torch.zeros(C_OUT))


def test_direct_construction_is_a_grouped_convolution():
    """Built without a source conv: the cross-group blocks are zero, so it is still a convolution."""
    module = ITNetConv(C_IN, C_OUT, (3,), stride=(1,), padding=(1,), padding_total=(2,), dilation=(1,), groups=2,
                       integrator=EXACT["torch"])
    conv = nn.Conv1d(C_IN, C_OUT, 3, padding=1, groups=2)
    with torch.no_grad():
        conv.weight.copy_(module.conv_weight_from(module.transform.v_proj.weight))
        conv.bias.copy_(module.transform.o_proj.bias)
        x = torch.randn(BATCH, C_IN, 11)
        assert_close(module(x), conv(x), torch.float32)
