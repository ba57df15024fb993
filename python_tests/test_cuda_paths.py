"""Every branch of the CUDA kernels that the op-level tests do not reach, each run on the
GPU and on the CPU twin with the same inputs and compared:

* normalize: fp64 accumulation for every dtype (rows whose fp32 square sum overflows or
  underflows), strided and offset slices, the in-place backward;
* sce_stored_exp: the float4 vector path (row strides a multiple of 4: K a multiple of
  8), its ragged tail, the scalar path (pointers off 16-byte alignment), several
  4096-column blocks, more than 65,535 rows (the launch loop reusing the workspace),
  float64 tiles, bfloat16 and float32 stores, targets inside / outside the tile, ignored
  rows, row shifts, state accumulated onto earlier values;
* sce_stored_dw: row strides wider than d, offsets, every weight dtype, the zero-norm
  row, project on / off;
* sce_fold / sce_grad / masked_argmax_fold: more than 65,535 rows (sce_grad strides over
  rows beyond grid.y) and tiles that are offset slices;
* the stored strategy end to end with K a multiple of 8.

All take the ``cuda_device`` fixture (marked ``cuda``): skipped without a GPU;
``scripts/device_check.sh`` runs them, and under compute-sanitizer all but the "tall"
(70,001-row) cases."""
import pytest
import torch

import gnc_ext
from gnc_ext import _native
from gnc_ext.ops import sce_stored as ST

native = _native.native


def _v(t):
    return _native.view(t)


def _st(t):
    return _native.stream_of(t)


def _to(t, dev):
    """A copy of t on dev with the same strides and storage offset (a slice stays a slice)."""
    base = torch.empty(t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device=dev)
    full = torch.as_strided(t, (base.numel(),), (1,), 0)
    base.copy_(full)
    return torch.as_strided(base, t.shape, t.stride(), t.storage_offset())


# ---------------------------------------------------------------- normalize
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_rows_beyond_fp32_square_range(cuda_device, dtype):
    """Rows with norm ~1e20 (fp32 squares overflow) and ~1e-24 (they underflow) normalise on
    CUDA exactly as on the CPU (fp64 square sums on both); eps = 0 keeps the tiny rows
    unclamped, so their norm is checked too."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 300, generator=g, dtype=torch.float64)
    x[:16] *= 1e20
    x[16:32] *= 1e-24
    x = x.to(dtype)
    outs = {}
    for dev in ("cpu", cuda_device):
        xd = x.to(dev).clone().requires_grad_(True)
        y, n = torch.ops.gnc_ext.normalize_rows(xd, 0.0)
        (y * torch.linspace(-1, 1, 300, device=dev, dtype=dtype)).sum().backward()
        outs[dev] = (y.detach().double().cpu(), n.double().cpu(), xd.grad.double().cpu())
    a, b = outs["cpu"], outs[cuda_device]
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(b[0], a[0], atol=tol, rtol=0)
    torch.testing.assert_close(b[1], a[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(b[2] / a[2].abs().amax(1, keepdim=True), a[2] / a[2].abs().amax(1, keepdim=True),
                               atol=tol * 4, rtol=0)
    assert bool(torch.isfinite(b[1]).all()) and bool((b[1][16:32] > 0).all())


def test_normalize_errors_match_on_both_devices(cuda_device):
    """A row whose norm exceeds fp32's range and a NaN row: the same ValueError on both."""
    big = torch.full((2, 4), 3e38)
    nan = torch.tensor([[1.0, float("nan")]])
    for x in (big, nan):
        msgs = []
        for dev in ("cpu", cuda_device):
            with pytest.raises(ValueError) as e:
                gnc_ext.normalize_rows(x.to(dev))
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_normalize_slices_and_in_place_backward(cuda_device, dtype):
    """Offset, strided slices through the native kernels; the backward in place (grad_input
    is grad) and out of place, CUDA against the CPU."""
    g = torch.Generator().manual_seed(2)
    xb = torch.randn(70, 90, generator=g, dtype=torch.float64).to(dtype)
    gb = torch.randn(70, 90, generator=g, dtype=torch.float64).to(dtype)
    res = {}
    for dev in ("cpu", cuda_device):
        xbd, gbd = _to(xb, dev), _to(gb, dev)
        x = xbd[3:67, 5:85]         # row stride 90, offset
        xt = xbd.t()[7:60, 2:50]    # column stride 90
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        outs = []
        for xs in (x, xt):
            y = torch.empty(xs.shape, dtype=dtype, device=dev)
            n = torch.empty(xs.shape[0], dtype=acc, device=dev)
            native.normalize_rows_forward(_v(xs), _v(y), _v(n), 1e-12, _st(xs))
            r, k = xs.shape
            gs = gbd[2:2 + r, 6:6 + k] if xs is x else gbd.t()[1:1 + r, 3:3 + k]
            dx = torch.empty(xs.shape, dtype=dtype, device=dev)
            native.normalize_rows_backward(_v(xs), _v(n), _v(gs), _v(dx), 1e-12, _st(xs))
            ip = gs.clone() if xs is x else gs  # in place: a contiguous copy, then the strided slice itself
            native.normalize_rows_backward(_v(xs), _v(n), _v(ip), _v(ip), 1e-12, _st(xs))
            assert torch.equal(ip, dx)
            outs += [y, n, dx]
        res[dev] = [o.double().cpu() for o in outs]
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in zip(res["cpu"], res[cuda_device]):
        torch.testing.assert_close(b, a, atol=tol * 10, rtol=tol)


# ---------------------------------------------------------------- sce_stored_exp
def _exp_case(R, c, dtype, sdtype, layout, seed, col0=37, K=None):
    """Inputs of one sce_stored_exp call (CPU): layout 'dense' (row stride c), 'wide' (a
    column slice of a buffer whose width is a multiple of 4: vector path with a ragged
    tail when c % 4 != 0), 'offset' (pointers one element off 16-byte alignment: scalar)."""
    g = torch.Generator().manual_seed(seed)
    K = K or col0 + c + 11
    w4 = (c + 3) // 4 * 4 + 4
    if layout == "dense":
        tile = torch.empty(R, c, dtype=dtype)
        E = torch.full((R, c), 9.0, dtype=sdtype)
        inv = torch.empty(c, dtype=dtype)
    elif layout == "wide":
        tile = torch.empty(R, w4, dtype=dtype)[:, :c]
        E = torch.full((R, w4 + 4), 9.0, dtype=sdtype)[:, 4:4 + c]
        inv = torch.empty(c + 4, dtype=dtype)[4:]
    else:
        tile = torch.empty(R, w4, dtype=dtype)[:, 1:1 + c]
        E = torch.full((R, w4), 9.0, dtype=sdtype)[:, 1:1 + c]
        inv = torch.empty(c + 1, dtype=dtype)[1:]
    inv.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
    cos = torch.rand(R, c, generator=g, dtype=torch.float64) * 2 - 1
    tile.copy_(cos / inv.double())  # t = s / inv_n: cosines in [-1, 1]
    y = torch.randint(0, K, (R,), generator=g)
    y[::3] = col0 + torch.randint(0, c, (len(y[::3]),), generator=g)  # targets inside the tile
    y[::7] = -100
    y[1] = col0 + c - 1
    shift = torch.zeros(R, dtype=torch.float64)
    shift[::5] = -3.0 * torch.rand(len(shift[::5]), generator=g, dtype=torch.float64)
    state = torch.rand(R, 4, generator=g, dtype=torch.float64)  # accumulated onto
    state[::2, 3] = -float("inf")
    return dict(tile=tile, inv=inv, y=y, col0=col0, shift=shift, E=E, state=state)


def _run_exp(case, dev, tau=0.07):
    t = {k: (_to(v, dev) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    ws = ST.exp_workspace(t["tile"].shape[0], t["tile"].shape[1], dev)
    native.sce_stored_exp(_v(t["tile"]), _v(t["inv"]), _v(t["y"]), t["col0"], _v(t["shift"]), _v(t["E"]),
                          _v(t["state"]), tau, -100, _v(ws), _st(t["tile"]))
    return t["E"].double().cpu(), t["state"].cpu()


@pytest.mark.parametrize("R,c,dtype,sdtype,layout", [
    (37, 2 * 4096 + 8, torch.float32, torch.float32, "dense"),    # vector path, 3 column blocks
    (37, 2 * 4096 + 8, torch.float32, torch.bfloat16, "dense"),   # bf16x4 stores
    (29, 4096 + 5, torch.float32, torch.float32, "wide"),         # vector path, ragged tail
    (29, 4096 + 5, torch.float32, torch.bfloat16, "wide"),
    (29, 1000, torch.float32, torch.float32, "offset"),           # scalar path
    (29, 1000, torch.float32, torch.bfloat16, "offset"),
    (23, 4096 + 3, torch.float64, torch.float64, "dense"),        # float64 tile
    (70001, 16, torch.float32, torch.bfloat16, "dense"),          # > 65,535 rows, vector
    (70001, 13, torch.float32, torch.float32, "offset"),          # > 65,535 rows, scalar
], ids=["vec-f32", "vec-bf16", "tail-f32", "tail-bf16", "scalar-f32", "scalar-bf16", "f64", "tall-vec",
        "tall-scalar"])
def test_stored_exp_every_branch_matches_cpu(cuda_device, R, c, dtype, sdtype, layout):
    case = _exp_case(R, c, dtype, sdtype, layout, seed=R + c)
    Ec, sc = _run_exp(case, "cpu")
    Eg, sg = _run_exp(case, cuda_device)
    # float32: the same exp_nonpos on both, but FMA contraction of s = t·inv_n into
    # (s − 1)/τ may differ (|Δz| ≤ ulp(s)/τ ≈ 1e-6 here); bfloat16 stores: one ulp (≤ 2^-7)
    erel = 2.0 ** -7 if sdtype == torch.bfloat16 else (4e-6 if dtype == torch.float32 else 1e-13)
    torch.testing.assert_close(Eg, Ec, rtol=erel, atol=1e-30)
    # row sums: float32 partial sums in another order (CPU: SIMD lanes over the row; CUDA:
    # per thread, then float64 trees); the cosine sum can be near 0, hence the atol
    srel, sabs = (1e-4, 1e-3) if dtype == torch.float32 else (1e-12, 1e-10)
    torch.testing.assert_close(sg[:, :2], sc[:, :2], rtol=srel, atol=sabs)
    torch.testing.assert_close(sg[:, 2], sc[:, 2], rtol=0, atol=0)  # one rounding, same on both
    torch.testing.assert_close(sg[:, 3], sc[:, 3], rtol=1e-6, atol=4e-6 if dtype == torch.float32 else 1e-12)


def test_stored_exp_refuses_a_short_workspace(cuda_device):
    case = {k: (_to(v, cuda_device) if isinstance(v, torch.Tensor) else v)
            for k, v in _exp_case(5, 5000, torch.float32, torch.float32, "dense", seed=0).items()}
    ws = torch.empty(3 * 5 * 2 - 1, dtype=torch.float64, device=cuda_device)
    with pytest.raises(ValueError, match=r"workspace: expected a contiguous 1-D float64 tensor of at least 30"):
        native.sce_stored_exp(_v(case["tile"]), _v(case["inv"]), _v(case["y"]), 0, _v(case["shift"]),
                              _v(case["E"]), _v(case["state"]), 0.1, -100, _v(ws), _st(ws))


# ---------------------------------------------------------------- sce_stored_dw
@pytest.mark.parametrize("xdt,wdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                     (torch.float32, torch.float16), (torch.float64, torch.float64)])
@pytest.mark.parametrize("project", [True, False])
def test_stored_dw_strided_rows_match_cpu(cuda_device, xdt, wdt, project):
    g = torch.Generator().manual_seed(5)
    c, d = 77, 200
    Xb = torch.randn(c, d + 9, generator=g, dtype=torch.float64).to(xdt)
    Wb = torch.randn(c + 2, d + 3, generator=g, dtype=torch.float64).to(wdt)
    Wb[4] = 0  # a zero-norm row: inv_n = 1/eps, no projection
    inv = (1 / Wb[2:, 1:1 + d].double().norm(dim=1).clamp_min(1e-12)).to(xdt)
    v = torch.randn(d, generator=g, dtype=torch.float64).to(xdt)
    res = []
    for dev in ("cpu", cuda_device):
        X, W = _to(Xb, dev)[:, 4:4 + d], _to(Wb, dev)[2:, 1:1 + d]
        dWb = torch.full((c + 1, d + 5), 5.0, dtype=wdt, device=dev)
        dW = dWb[1:, 2:2 + d]
        native.sce_stored_dw(_v(X), _v(W), _v(inv.to(dev)), _v(v.to(dev)), _v(dW), 1e-12, project, _st(X))
        res.append(dWb.double().cpu())
    tol = 1e-12 if xdt == torch.float64 else (1e-5 if wdt == torch.float32 else 1e-2)
    # row by row against the row's largest entry (the zero-norm row's X − v/eps is ~1e12
    # and overflows float16 to inf, on both devices alike)
    a, b = res
    fin = torch.isfinite(a)
    assert torch.equal(fin, torch.isfinite(b)) and torch.equal(a[~fin], b[~fin])
    a, b = torch.where(fin, a, 0.0), torch.where(fin, b, 0.0)
    scale = a.abs().amax(1, keepdim=True).clamp_min(1e-30)
    torch.testing.assert_close(b / scale, a / scale, atol=tol, rtol=0)


# ---------------------------------------------------------------- chunked-path epilogues
def test_fold_grad_argmax_tall_tile_offset_slices(cuda_device):
    """sce_fold, sce_grad (rows beyond grid.y's 65,535 strided by the kernel) and
    masked_argmax_fold on a 70,001-row tile that is an offset slice, CUDA against CPU."""
    g = torch.Generator().manual_seed(6)
    R, c, col0, K = 70001, 24, 40, 100
    buf = torch.rand(R + 2, c + 7, generator=g) * 2 - 1
    y = torch.randint(0, K, (R,), generator=g)
    y[::9] = -100
    y[::4] = col0 + torch.randint(0, c, (len(y[::4]),), generator=g)
    f64 = dict(dtype=torch.float64)
    lse = torch.rand(R, generator=g, **f64) * 3 + 10
    q = torch.rand(R, generator=g, **f64)
    scale = torch.rand(R, generator=g, **f64)
    res = {}
    for dev in ("cpu", cuda_device):
        b = _to(buf, dev)
        tile = b[1:1 + R, 3:3 + c]
        yd = y.to(dev)
        state = torch.zeros(R, 4, device=dev, **f64)
        state[:, 0] = -float("inf")
        native.sce_fold(_v(tile), _v(yd), col0, _v(state), 0.1, 2, 0.3, -100, _st(tile), 0.0)
        best = torch.full((R,), -1e300, device=dev, **f64)
        arg = torch.zeros(R, dtype=torch.int64, device=dev)
        tgt = torch.zeros(R, device=dev, **f64)
        native.masked_argmax_fold(_v(tile), _v(yd), col0, _v(best), _v(arg), _v(tgt), _st(tile))
        grad = tile.clone()
        native.sce_grad(_v(grad), _v(yd), col0, K, _v(lse.to(dev)), _v(q.to(dev)), _v(scale.to(dev)), 0.1, 1, 0.2,
                        0.1, -100, _st(tile), 0.0)
        res[dev] = [t.double().cpu() for t in (state, best, arg, tgt, grad)]
    a, bb = res["cpu"], res[cuda_device]
    # [0] running max, [1] sum of exp (other order), [2] target cosine, [3] sum of z (can be near 0)
    torch.testing.assert_close(bb[0][:, :3], a[0][:, :3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bb[0][:, 3], a[0][:, 3], rtol=1e-5, atol=1e-4)
    for i in (1, 2, 3):
        torch.testing.assert_close(bb[i], a[i], rtol=1e-6, atol=0)
    torch.testing.assert_close(bb[4], a[4], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- stored strategy end to end
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_stored_strategy_vector_path_end_to_end(cuda_device, dtype, tol, monkeypatch):
    """K = 20,480 (a multiple of 8): every class block takes the vector path; forward and
    backward against the CPU strategy."""
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    g = torch.Generator().manual_seed(7)
    B, d, K = 96, 64, 20480
    H, W = torch.randn(B, d, generator=g), torch.randn(K, d, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    y[::11] = -100
    outs = []
    for dev in ("cpu", cuda_device):
        h = H.to(dev, dtype).clone().requires_grad_(True)
        w = W.to(dev, dtype).clone().requires_grad_(True)
        o = gnc_ext.spherical_cross_entropy(h, w, y.to(dev), tau=0.05, label_smoothing=0.1, reduction="none")
        o.sum().backward()
        outs.append((o.detach().double().cpu(), h.grad.double().cpu(), w.grad.double().cpu()))
    for a, b in zip(*outs):
        s = max(float(a.abs().max()), 1e-6)
        torch.testing.assert_close(b / s, a / s, atol=tol, rtol=0)
