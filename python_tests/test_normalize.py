import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import gnc_ext

TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _dtypes(device):
    ds = [torch.float32, torch.float16, torch.bfloat16]
    if device == "cpu":
        ds.append(torch.float64)
    return ds


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (33, 17), (128, 512), (5, 3000)])
def test_matches_F_normalize(device, shape):
    g = torch.Generator().manual_seed(0)
    for dt in _dtypes(device):
        x = torch.randn(*shape, generator=g).to(device=device, dtype=dt)
        got = gnc_ext.normalize_rows(x)
        ref = F.normalize(x.double(), dim=1)
        assert got.dtype == dt and got.device == x.device and got.shape == x.shape
        torch.testing.assert_close(got.double(), ref, atol=TOL[dt], rtol=TOL[dt])


def test_non_contiguous_inputs(device):
    x = torch.randn(20, 30, dtype=torch.float32, device=device)
    for v in (x.t(), x[::2, ::3], x[:, 5:]):
        torch.testing.assert_close(gnc_ext.normalize_rows(v), F.normalize(v, dim=1), atol=2e-6, rtol=2e-6)


def test_gradient_matches_autograd_of_F_normalize(device):
    for dt in _dtypes(device):
        x = torch.randn(17, 9, device=device, dtype=torch.float64).to(dt)
        x1 = x.clone().requires_grad_(True)
        x2 = x.double().clone().requires_grad_(True)
        w = torch.randn(17, 9, device=device, dtype=dt)
        (gnc_ext.normalize_rows(x1) * w).sum().backward()
        (F.normalize(x2, dim=1) * w.double()).sum().backward()
        tol = 10 * TOL[dt]
        torch.testing.assert_close(x1.grad.double(), x2.grad, atol=tol, rtol=tol)


def test_gradcheck_float64_cpu():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gnc_ext.normalize_rows, (x,))
    # including rows below eps (the clamped branch)
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1] *= 1e-3
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: gnc_ext.normalize_rows(t, eps=0.5), (x,))


def test_opcheck():
    for x in (torch.randn(5, 3), torch.randn(4, 6, dtype=torch.float64).requires_grad_(True)):
        torch.library.opcheck(torch.ops.gnc_ext.normalize_rows.default, (x, 1e-12))
    x = torch.randn(5, 3, dtype=torch.float64)
    _, n = torch.ops.gnc_ext.normalize_rows(x, 1e-12)
    torch.library.opcheck(torch.ops.gnc_ext.normalize_rows_backward.default, (torch.randn(5, 3, dtype=torch.float64), x, n, 1e-12))


def test_torch_compile_fullgraph():
    def f(x, w):
        return (gnc_ext.normalize_rows(x * 2.0) @ w).square().sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 5, requires_grad=True)
    w = torch.randn(5, 3)
    x2 = x.detach().clone().requires_grad_(True)
    cf(x, w).backward()
    f(x2, w).backward()
    torch.testing.assert_close(x.grad, x2.grad)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 40), scale=st.floats(1e-3, 1e3))
def test_property_unit_rows_and_scale_invariance(n, d, scale):
    x = torch.randn(n, d, dtype=torch.float64) + 0.1
    y = gnc_ext.normalize_rows(x)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(gnc_ext.normalize_rows(x * scale), y)


def test_bad_inputs():
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        gnc_ext.normalize_rows(torch.randn(3))
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        gnc_ext.normalize_rows(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="X: expected dtype"):
        gnc_ext.normalize_rows(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="X: expected a torch.Tensor"):
        gnc_ext.normalize_rows([[1.0, 2.0]])
    with pytest.raises(ValueError, match="X: contains NaN or Inf"):
        gnc_ext.normalize_rows(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="X: contains NaN or Inf"):
        gnc_ext.normalize_rows(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="all-zero row"):
        gnc_ext.normalize_rows(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        gnc_ext.normalize_rows(torch.randn(2, 2), eps=-1.0)
    with pytest.raises(ValueError, match="X: expected a non-empty"):
        gnc_ext.normalize_rows(torch.empty(0, 3))


def test_zero_row_with_default_eps_is_zero_not_nan():
    y = gnc_ext.normalize_rows(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.0], [0.6, 0.8]]))


def test_cuda_matches_cpu(cuda_device):
    x = torch.randn(1000, 333)
    torch.testing.assert_close(gnc_ext.normalize_rows(x.cuda()).cpu(), gnc_ext.normalize_rows(x), atol=1e-6, rtol=1e-6)
    xr = x.clone().requires_grad_(True)
    xc = x.cuda().requires_grad_(True)
    g = torch.randn(1000, 333)
    (gnc_ext.normalize_rows(xr) * g).sum().backward()
    (gnc_ext.normalize_rows(xc) * g.cuda()).sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), xr.grad, atol=1e-5, rtol=1e-5)


def test_mixed_devices_rejected(cuda_device):
    # the backward op receives tensors from two devices only through misuse; the
    # native layer names the argument
    x = torch.randn(4, 3)
    _, n = torch.ops.gnc_ext.normalize_rows(x, 1e-12)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.gnc_ext.normalize_rows_backward(torch.randn(4, 3, device="cuda"), x, n, 1e-12)


def test_subnormal_rows_with_tiny_eps_are_an_error_not_inf():
    """eps=0 or eps below 1/finfo.max: a row whose floored norm has no finite reciprocal in
    the accumulation type is refused by name (before: inf rows and NaN gradients)."""
    x = torch.full((2, 3), 1e-39)
    for eps in (0.0, 1e-40):
        with pytest.raises(ValueError, match=r"X: row 0 has norm .* too small to normalise in float32"):
            gnc_ext.normalize_rows(x, eps=eps)
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="X: row 0 has norm 0"):
        gnc_ext.normalize_rows(z, eps=1e-45)
    # the default eps, and float64 input (its own, much smaller limit), are fine
    assert bool(torch.isfinite(gnc_ext.normalize_rows(x)).all())
    y64 = gnc_ext.normalize_rows(x.double(), eps=0.0)
    torch.testing.assert_close(y64, torch.full((2, 3), 3 ** -0.5, dtype=torch.float64))


# ---- the native bindings' checks (gnc_ext._C: what every caller of the kernels relies on) ----

def _v(t, device=None):
    """TensorView of t; with ``device`` it claims that CUDA device for the same host memory
    (the checks must refuse it before any kernel runs)."""
    from gnc_ext import _native

    v = _native.view(t)
    if device is None:
        return v
    return _native.native.TensorView(v.ptr, v.dtype, device, list(v.shape), list(v.strides))


def _bwd_ref(x, g):
    """float64 (dY - Y<Y, dY>)/|x| of the unclamped rows."""
    x, g = x.double(), g.double()
    n = x.norm(dim=1, keepdim=True)
    y = x / n
    return (g - y * (y * g).sum(1, keepdim=True)) / n


def test_native_backward_checks_norm_and_devices():
    """normalize_rows_backward refuses a norm of the wrong dtype or stride, and norm / grad_input
    on another device than x (before: the CPU kernel read the float64 norm as float32, read
    a strided norm densely, and wrote through a grad_input said to live on a GPU)."""
    from gnc_ext._native import native

    g0 = torch.Generator().manual_seed(3)
    x, g = torch.randn(6, 5, generator=g0), torch.randn(6, 5, generator=g0)
    n = x.norm(dim=1)
    dx = torch.empty(6, 5)
    native.normalize_rows_backward(_v(x), _v(n), _v(g), _v(dx), 1e-12)
    torch.testing.assert_close(dx.double(), _bwd_ref(x, g), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"norm: expected dtype float32, got float64"):
        native.normalize_rows_backward(_v(x), _v(n.double()), _v(g), _v(dx), 1e-12)
    with pytest.raises(ValueError, match=r"norm: must be contiguous \(stride 1\), got stride 2"):
        native.normalize_rows_backward(_v(x), _v(torch.stack([n, n], 1).flatten()[::2]), _v(g), _v(dx), 1e-12)
    with pytest.raises(ValueError, match=r"x and grad_input must be on the same device"):
        native.normalize_rows_backward(_v(x), _v(n), _v(g), _v(dx, device=0), 1e-12)
    with pytest.raises(ValueError, match=r"x and norm must be on the same device"):
        native.normalize_rows_backward(_v(x), _v(n, device=0), _v(g), _v(dx), 1e-12)
    with pytest.raises(ValueError, match=r"eps: must be >= 0"):
        native.normalize_rows_backward(_v(x), _v(n), _v(g), _v(dx), -1.0)
    with pytest.raises(ValueError, match=r"norm: must be contiguous"):  # the forward writes norm densely too
        native.normalize_rows_forward(_v(x), _v(torch.empty(6, 5)), _v(torch.empty(12)[::2]), 1e-12)


def test_native_backward_in_place_is_allowed_other_overlaps_are_not():
    """grad_input may be grad itself (the loss ops use it in place: every element is read,
    then written, by the same thread, so the CUDA kernel does not mark them __restrict__);
    any other sharing of memory with an input, or of the forward's outputs with x, is
    refused by name (before: accepted, undefined behaviour on CUDA)."""
    from gnc_ext._native import native

    g0 = torch.Generator().manual_seed(4)
    x, g = torch.randn(6, 5, generator=g0), torch.randn(6, 5, generator=g0)
    n = x.norm(dim=1)
    out = torch.empty(6, 5)
    native.normalize_rows_backward(_v(x), _v(n), _v(g), _v(out), 1e-12)
    inplace = g.clone()
    native.normalize_rows_backward(_v(x), _v(n), _v(inplace), _v(inplace), 1e-12)
    assert torch.equal(inplace, out)
    gs = torch.randn(8, 7, generator=g0)[1:7, 2:7]  # in place on a strided slice with an offset
    ref = torch.empty(6, 5)
    native.normalize_rows_backward(_v(x), _v(n), _v(gs), _v(ref), 1e-12)
    native.normalize_rows_backward(_v(x), _v(n), _v(gs), _v(gs), 1e-12)
    assert torch.equal(gs, ref)
    buf = torch.randn(40, generator=g0)
    with pytest.raises(ValueError, match=r"grad_input: must not share memory with grad"):
        native.normalize_rows_backward(_v(x), _v(n), _v(buf[:30].view(6, 5)), _v(buf[5:35].view(6, 5)), 1e-12)
    sq = torch.randn(5, 5, generator=g0)
    with pytest.raises(ValueError, match=r"grad_input: must not share memory with grad"):
        native.normalize_rows_backward(_v(x[:5]), _v(n[:5]), _v(sq), _v(sq.t()), 1e-12)
    with pytest.raises(ValueError, match=r"grad_input: must not share memory with x"):
        native.normalize_rows_backward(_v(x), _v(n), _v(g), _v(x), 1e-12)
    with pytest.raises(ValueError, match=r"y: must not share memory with x"):
        native.normalize_rows_forward(_v(x), _v(x), _v(torch.empty(6)), 1e-12)
    with pytest.raises(ValueError, match=r"norm: must not share memory with y"):
        y = torch.empty(6, 5)
        native.normalize_rows_forward(_v(x), _v(y), _v(y.view(-1)[:6]), 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_of_rows_with_extreme_norms_is_finite(dtype):
    """Rows with norm ~1e-23 and ~1e20 (eps = 0, so no clamp): the gradient (~1/norm) is
    representable, and matches float64 (before: <x, dY>/norm^3 overflowed fp32 to inf
    for the tiny rows)."""
    g0 = torch.Generator().manual_seed(9)
    x = torch.randn(6, 40, generator=g0, dtype=torch.float64)
    x[:2] *= 1e-24
    x[2:4] *= 1e20
    x = x.to(dtype)
    w = torch.randn(6, 40, generator=g0, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (gnc_ext.normalize_rows(xr, eps=0.0) * w.to(dtype)).sum().backward()
    ref = _bwd_ref(x, w.to(dtype))
    assert bool(torch.isfinite(xr.grad).all())
    rel = (xr.grad.double() - ref).abs().amax(1) / ref.abs().amax(1)
    assert float(rel.max()) < (1e-5 if dtype == torch.float32 else 3e-2)
