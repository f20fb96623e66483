"""Recurrent special cases against sequential references written here (explicit loops over time).

Each model is computed by an ``IntegralTransform`` (both exact backends; the tiled one with
16 × 16 tiles so several tiles, and skipped tiles, are exercised) and compared with a
step-by-step recurrence: fp32 to ~1e-5 relative, fp64 to ~1e-10, odd lengths 1, 7, 63.
Gradients are compared in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn.special.recurrence import (
    from_min_gru,
    from_min_lstm,
    from_s4,
    s4_kernel,
    s4_lti,
    selective_scan,
    ssd,
)
from tests.nn.special.equivalence import BACKENDS, EXACT

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
GRAD_TOL = 1e-9
LENGTHS = (1, 7, 63)
DTYPES = (torch.float32, torch.float64)


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b| (relative to the reference's scale)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def assert_close(a: Tensor, b: Tensor, tol: float) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = rel_err(a, b)
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


def grads(out: Tensor | tuple[Tensor, ...], inputs: list[Tensor], seed: int = 1) -> list[Tensor]:
    """Gradients of a fixed random projection of ``out`` (a sum over several outputs)."""
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    return list(torch.autograd.grad(loss, inputs))


# ======================================================================================
# Mamba-1 selective scan
# ======================================================================================


def scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba-1 selective-scan recurrence, one step at a time. Returns (out [b,d,L], last_state [b,d,n])."""
    b, d, L = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def at(M, t):  # B or C at time t, as [b, d, n]
        if M.dim() == 2:
            return M.expand(b, d, n)
        if M.dim() == 3:
            return M[:, None, :, t].expand(b, d, n)
        return M[:, :, :, t].repeat_interleave(d // M.shape[1], dim=1)

    x = u.new_zeros(b, d, n)
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # [b, d, 1]
        x = torch.exp(dt * A) * x + dt * at(B, t) * u[:, :, t, None]
        ys.append((x * at(C, t)).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, x


def make_scan(b, d, n, L, kind_B, kind_C, dtype, groups=2, softplus=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64).mul(scale).to(dtype)

    def bc(kind):
        return {"const": lambda: rnd(d, n), "var": lambda: rnd(b, n, L),
                "group": lambda: rnd(b, groups, n, L)}[kind]()

    # Mamba's initialization: A = −exp(A_log) with A_log ≈ log(1…n); Δ = softplus(δ + bias) ∈ ~[1e-3, 0.1]·e^δ.
    A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float64)).repeat(d, 1) + 0.1 * rnd(d, n).double()
    A = (-torch.exp(A_log)).to(dtype)
    dt0 = torch.exp(torch.rand(d, generator=g, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3))
                    + math.log(1e-3))
    delta_bias = (dt0 + torch.log(-torch.expm1(-dt0))).to(dtype)  # inverse softplus
    if softplus:
        delta = rnd(b, d, L, scale=0.5)
    else:
        delta = torch.rand(b, d, L, generator=g, dtype=torch.float64).to(dtype)  # larger steps: τ_N ≈ 100
        delta_bias = None
    return dict(u=rnd(b, d, L), delta=delta, A=A, B=bc(kind_B), C=bc(kind_C), D=rnd(d), z=rnd(b, d, L),
                delta_bias=delta_bias, delta_softplus=softplus)


SCAN_KINDS = [("const", "const"), ("var", "var"), ("const", "group"), ("group", "var")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("kinds", SCAN_KINDS, ids=lambda k: f"B{k[0]}-C{k[1]}")
def test_selective_scan_matches_recurrence(kinds, L, dtype, backend):
    args = make_scan(2, 4, 3, L, *kinds, dtype)
    out = selective_scan(**args, integrator=EXACT[backend])
    ref, _ = scan_ref(**args)
    assert out.dtype == dtype and out.shape == (2, 4, L)
    assert_close(out, ref, TOL[dtype])
    if dtype == torch.float32:  # also against the exact (fp64) recurrence
        exact, _ = scan_ref(**{k: v.double() if isinstance(v, Tensor) else v for k, v in args.items()})
        assert_close(out.double(), exact, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_plain_delta_and_optional_terms(dtype, backend):
    """delta_softplus=False, no delta_bias / D / z."""
    args = make_scan(2, 3, 4, 63, "var", "var", dtype, softplus=False, seed=3)
    args.update(D=None, z=None)
    out = selective_scan(**args, integrator=EXACT[backend])
    assert_close(out, scan_ref(**args)[0], TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kinds", [("const", "const"), ("group", "var")], ids=lambda k: f"B{k[0]}-C{k[1]}")
@pytest.mark.parametrize("L", (1, 63))
def test_selective_scan_last_state(L, kinds, dtype, backend):
    args = make_scan(2, 4, 3, L, *kinds, dtype, seed=5)
    out, last = selective_scan(**args, return_last_state=True, integrator=EXACT[backend])
    ref, ref_last = scan_ref(**args)
    assert last.shape == (2, 4, 3)
    assert_close(out, ref, TOL[dtype])
    assert_close(last, ref_last, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kinds", [("const", "const"), ("group", "var")], ids=lambda k: f"B{k[0]}-C{k[1]}")
def test_selective_scan_gradients(kinds, backend):
    args = make_scan(2, 4, 3, 37, *kinds, torch.float64, seed=7)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [args[k].requires_grad_() for k in names]
    out = selective_scan(**args, return_last_state=True, integrator=EXACT[backend])
    got = grads(out, leaves)
    want = grads(scan_ref(**args), leaves)
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) <= GRAD_TOL, f"grad of {name}: {rel_err(a, b):.3g}"


def test_selective_scan_bad_input():
    good = make_scan(2, 4, 3, 5, "var", "var", torch.float64)

    def call(**over):
        selective_scan(**{**good, **over})

    with pytest.raises(ValueError, match="A must be strictly negative"):
        call(A=good["A"].abs())
    with pytest.raises(ValueError, match="A must be strictly negative"):
        call(A=good["A"].clone().index_fill_(1, torch.tensor([0]), 0.0))
    with pytest.raises(ValueError, match="A must be real"):
        call(A=torch.complex(good["A"], good["A"]))
    with pytest.raises(ValueError, match=r"^u must be"):
        call(u=good["u"][0])
    with pytest.raises(ValueError, match=r"^delta must be"):
        call(delta=good["delta"][:, :, :4])
    with pytest.raises(ValueError, match=r"^A must be"):
        call(A=good["A"][:3])
    with pytest.raises(ValueError, match=r"^B must be"):
        call(B=good["B"][:, :, :4])  # length mismatch
    with pytest.raises(ValueError, match=r"^C must be"):
        call(C=torch.randn(2, 3, 3, 5, dtype=torch.float64))  # 3 groups do not divide dim 4
    with pytest.raises(ValueError, match=r"^D must be"):
        call(D=torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^z must be"):
        call(z=good["z"][:1])
    with pytest.raises(ValueError, match=r"^delta_bias must be"):
        call(delta_bias=torch.randn(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="length 0"):
        call(u=good["u"][:, :, :0], delta=good["delta"][:, :, :0], B=good["B"][..., :0], C=good["C"][..., :0],
             z=None)


# ======================================================================================
# Mamba-2 / SSD
# ======================================================================================


def ssd_ref(x, dt, A, B, C, D=None):
    """h_t = exp(dt_t A) h_{t−1} + dt_t x_t ⊗ B_t; y_t = h_t C_t (+ D x_t). Returns (y, final state [b,h,p,n])."""
    b, L, h, p = x.shape
    rep = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)  # head h → group h // rep
    state = x.new_zeros(b, h, p, Bh.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + D[:, None] * x
    return y, state


def make_ssd(b, L, h, p, n, g, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    dt = F.softplus(torch.randn(b, L, h, generator=gen, dtype=torch.float64) - 2).to(dtype)
    A = (-torch.exp(torch.rand(h, generator=gen, dtype=torch.float64))).to(dtype)
    return dict(x=rnd(b, L, h, p), dt=dt, A=A, B=rnd(b, L, g, n), C=rnd(b, L, g, n), D=rnd(h))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("groups", (1, 2, 4))
def test_ssd_matches_recurrence(groups, L, dtype, backend):
    args = make_ssd(2, L, 4, 3, 5, groups, dtype)
    y, final = ssd(**args, return_final_state=True, integrator=EXACT[backend])
    ref, ref_final = ssd_ref(**args)
    assert y.shape == (2, L, 4, 3) and final.shape == (2, 4, 3, 5)
    assert_close(y, ref, TOL[dtype])
    assert_close(final, ref_final, TOL[dtype])
    assert_close(ssd(**{**args, "D": None}, integrator=EXACT[backend]),
                 ssd_ref(**{**args, "D": None})[0], TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ssd_gradients(backend):
    args = make_ssd(2, 37, 4, 3, 4, 2, torch.float64, seed=2)
    names = ["x", "dt", "A", "B", "C", "D"]
    leaves = [args[k].requires_grad_() for k in names]
    got = grads(ssd(**args, return_final_state=True, integrator=EXACT[backend]), leaves)
    want = grads(ssd_ref(**args), leaves)
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) <= GRAD_TOL, f"grad of {name}: {rel_err(a, b):.3g}"


def test_ssd_bad_input():
    good = make_ssd(2, 5, 4, 3, 4, 2, torch.float64)

    def call(**over):
        ssd(**{**good, **over})

    with pytest.raises(ValueError, match="A must be strictly negative"):
        call(A=-good["A"])
    with pytest.raises(ValueError, match=r"^x must be"):
        call(x=good["x"][0])
    with pytest.raises(ValueError, match=r"^dt must be"):
        call(dt=good["dt"][:, :4])
    with pytest.raises(ValueError, match=r"^A must be"):
        call(A=good["A"][:3])
    with pytest.raises(ValueError, match=r"^B must be"):
        call(B=torch.randn(2, 5, 3, 4, dtype=torch.float64))  # 3 groups do not divide 4 heads
    with pytest.raises(ValueError, match=r"^C must be"):
        call(C=good["C"][:, :4])
    with pytest.raises(ValueError, match=r"^D must be"):
        call(D=good["D"][:2])
    with pytest.raises(ValueError, match="length 0"):
        call(x=good["x"][:, :0], dt=good["dt"][:, :0], B=good["B"][:, :0], C=good["C"][:, :0])


# ======================================================================================
# S4 (LTI)
# ======================================================================================


def s4_scan_ref(u, A_bar, B_bar, C, D=None):
    """x_t = Ā x_{t−1} + B̄ u_t, y_t = C x_t + D u_t per channel; u [b, L, H]."""
    Am = torch.diag_embed(A_bar) if A_bar.dim() == 2 else A_bar
    x = u.new_zeros(u.shape[0], *B_bar.shape)
    ys = []
    for t in range(u.shape[1]):
        x = (Am @ x[..., None])[..., 0] + B_bar * u[:, t, :, None]
        ys.append((C * x).sum(-1))
    y = torch.stack(ys, 1)
    return y if D is None else y + D * u


def causal_conv_fft(u, K):
    """y_i = Σ_{j≤i} K[:, i−j] u_j via FFT; u [b, L, H], K [H, L]."""
    L = u.shape[1]
    Uf = torch.fft.rfft(u.transpose(1, 2), n=2 * L)
    Kf = torch.fft.rfft(K, n=2 * L)
    return torch.fft.irfft(Uf * Kf, n=2 * L)[..., :L].transpose(1, 2)


def make_s4(H, N, dtype, diagonal=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if diagonal:
        A_bar = torch.rand(H, N, generator=g, dtype=torch.float64) * 1.9 - 0.95
    else:  # a stable dense Ā: spectral radius 0.95
        M = rnd(H, N, N)
        A_bar = 0.95 * M / torch.linalg.eigvals(M).abs().amax(-1)[:, None, None]
    return {k: v.to(dtype) for k, v in dict(A_bar=A_bar, B_bar=rnd(H, N), C=rnd(H, N), D=rnd(H)).items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("diagonal", (False, True), ids=("dense", "diag"))
def test_s4_lti_matches_scan_and_convolution(diagonal, L, dtype, backend):
    p = make_s4(3, 4, dtype, diagonal)
    u = torch.randn(2, L, 3, dtype=dtype)
    y = s4_lti(u, **p, integrator=EXACT[backend])
    assert y.shape == u.shape and y.dtype == dtype
    assert_close(y, s4_scan_ref(u, **p), TOL[dtype])
    K = s4_kernel(p["A_bar"], p["B_bar"], p["C"], L)
    assert_close(y, causal_conv_fft(u, K) + p["D"] * u, TOL[dtype])
    # the module form, built for a longer max_length, on the same input
    m = from_s4(**p, max_length=70)
    m.transform.integrator = EXACT[backend]
    assert_close(m(u), s4_scan_ref(u, **p), TOL[dtype])


def test_s4_kernel_values():
    """K[δ] = C Āᵟ B̄ checked by explicit matrix powers; diagonal Ā equals its dense diag_embed."""
    p = make_s4(2, 3, torch.float64)
    K = s4_kernel(p["A_bar"], p["B_bar"], p["C"], 6)
    for h in range(2):
        for delta in range(6):
            want = p["C"][h] @ torch.linalg.matrix_power(p["A_bar"][h], delta) @ p["B_bar"][h]
            assert abs(K[h, delta] - want) <= 1e-12
    q = make_s4(2, 3, torch.float64, diagonal=True)
    assert_close(s4_kernel(q["A_bar"], q["B_bar"], q["C"], 9),
                 s4_kernel(torch.diag_embed(q["A_bar"]), q["B_bar"], q["C"], 9), 1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_s4_lti_gradients(backend):
    p = {k: v.requires_grad_() for k, v in make_s4(3, 4, torch.float64, seed=1).items()}
    u = torch.randn(2, 37, 3, dtype=torch.float64, requires_grad=True)
    leaves = [u, *p.values()]
    got = grads(s4_lti(u, **p, integrator=EXACT[backend]), leaves)
    want = grads(s4_scan_ref(u, **p), leaves)
    for name, a, b in zip(["u", *p], got, want):
        assert rel_err(a, b) <= GRAD_TOL, f"grad of {name}: {rel_err(a, b):.3g}"


def test_s4_bad_input():
    p = make_s4(3, 4, torch.float64)
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^u must be"):
        s4_lti(u[..., :2], **p)
    with pytest.raises(ValueError, match=r"^A_bar must be"):
        s4_lti(u, **{**p, "A_bar": p["A_bar"][:, :2]})
    with pytest.raises(ValueError, match=r"^B_bar must be"):
        s4_lti(u, **{**p, "B_bar": p["B_bar"][0]})
    with pytest.raises(ValueError, match=r"^C must be"):
        s4_lti(u, **{**p, "C": p["C"][:, :3]})
    with pytest.raises(ValueError, match=r"^D must be"):
        s4_lti(u, **{**p, "D": p["D"][:2]})
    with pytest.raises(ValueError, match="A_bar must be real"):
        s4_kernel(p["A_bar"].to(torch.complex128), p["B_bar"], p["C"], 4)
    with pytest.raises(ValueError, match="length must be"):
        s4_kernel(p["A_bar"], p["B_bar"], p["C"], 0)
    with pytest.raises(ValueError, match="max_length"):
        from_s4(**p, max_length=4)(u)


# ======================================================================================
# minGRU / minLSTM
# ======================================================================================


def min_gru_ref(x, lz, lh):
    h = x.new_zeros(x.shape[0], lz.out_features)
    hs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(lz(x[:, t]))
        h = (1 - z) * h + z * lh(x[:, t])
        hs.append(h)
    return torch.stack(hs, 1)


def min_lstm_ref(x, lf, li, lh):
    h = x.new_zeros(x.shape[0], lf.out_features)
    hs = []
    for t in range(x.shape[1]):
        f, i = torch.sigmoid(lf(x[:, t])), torch.sigmoid(li(x[:, t]))
        h = f / (f + i) * h + i / (f + i) * lh(x[:, t])
        hs.append(h)
    return torch.stack(hs, 1)


def linears(k, dim, hidden, dtype, bias=True):
    return [nn.Linear(dim, hidden, bias=bias).to(dtype) for _ in range(k)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", LENGTHS)
def test_min_gru_and_min_lstm_match_loops(L, dtype, backend):
    x = torch.randn(2, L, 5, dtype=dtype)
    lz, lh = linears(2, 5, 6, dtype)
    gru = from_min_gru(lz, lh)
    lf, li, lh2 = linears(3, 5, 6, dtype)
    lstm = from_min_lstm(lf, li, lh2)
    for m in (gru, lstm):
        m.transform.integrator = EXACT[backend]
    with torch.no_grad():
        assert_close(gru(x), min_gru_ref(x, lz, lh), TOL[dtype])
        assert_close(lstm(x), min_lstm_ref(x, lf, li, lh2), TOL[dtype])


def test_min_gru_without_bias():
    lz, lh = linears(2, 4, 3, torch.float64, bias=False)
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with torch.no_grad():
        assert_close(from_min_gru(lz, lh)(x), min_gru_ref(x, lz, lh), TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_gru_and_min_lstm_gradients(backend):
    """Input gradients match; a copied weight's gradient is the sum over the layer's copies of it."""
    torch.manual_seed(3)
    dt = torch.float64
    lz, lh = linears(2, 5, 6, dt)
    gru = from_min_gru(lz, lh)
    gru.transform.integrator = EXACT[backend]
    x = torch.randn(2, 37, 5, dtype=dt, requires_grad=True)
    t = gru.transform
    got = grads(gru(x), [x, t.decay_proj.weight, t.b_proj.weight, t.decay_proj.bias, t.a_proj.bias,
                         t.v_proj.weight])
    want = grads(min_gru_ref(x, lz, lh), [x, lz.weight, lz.bias, lh.weight])
    assert rel_err(got[0], want[0]) <= GRAD_TOL
    assert rel_err(got[1] + got[2], want[1]) <= GRAD_TOL  # Wz: decay and input gate
    assert rel_err(got[3] + got[4], want[2]) <= GRAD_TOL  # bz
    assert rel_err(got[5], want[3]) <= GRAD_TOL

    lf, li, lh2 = linears(3, 5, 6, dt)
    lstm = from_min_lstm(lf, li, lh2)
    lstm.transform.integrator = EXACT[backend]
    got = grads(lstm(x), [x, lstm.linear_f.weight, lstm.linear_i.bias])
    want = grads(min_lstm_ref(x, lf, li, lh2), [x, lf.weight, li.bias])
    for a, b in zip(got, want):
        assert rel_err(a, b) <= GRAD_TOL


def test_min_rnn_bad_input():
    lz, lh = linears(2, 5, 6, torch.float32)
    with pytest.raises(ValueError, match="linear_z and linear_h"):
        from_min_gru(lz, nn.Linear(5, 7))
    with pytest.raises(ValueError, match=r"linear_z must be an nn\.Linear"):
        from_min_gru(nn.Identity(), lh)
    with pytest.raises(ValueError, match="linear_f, linear_i and linear_h"):
        from_min_lstm(lz, lh, nn.Linear(4, 6))
    with pytest.raises(ValueError, match="x must be"):
        from_min_gru(lz, lh)(torch.randn(2, 3, 4))
