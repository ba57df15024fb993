"""spherical_cross_entropy / hardmax_loss against pure-PyTorch references written here
(F.normalize + matmul + F.cross_entropy in float64; brute-force HardMax)."""
import math

import pytest
import torch
import torch.nn.functional as F

import gnc_ext
from gnc_ext.ops import sce as SCE
from gnc_ext.ops import tiles as TILES


# ----------------------------------------------------------------- references --
def ref_phi(c, margin, margin_type):
    if margin == 0:
        return c
    if margin_type == "cosface":
        return c - margin
    sin = torch.sqrt(torch.clamp(1 - c * c, min=1e-12))
    return torch.where(c > math.cos(math.pi - margin), c * math.cos(margin) - sin * math.sin(margin),
                       c - margin * math.sin(margin))


def ref_sce(H, W, y, tau=0.05, reduction="mean", ignore_index=-100, label_smoothing=0.0, margin=0.0,
            margin_type="cosface", normalize=True):
    Hn = F.normalize(H, dim=1) if normalize else H
    Wn = F.normalize(W, dim=1) if normalize else W
    S = Hn @ Wn.T
    yy = torch.where(y == ignore_index, torch.zeros_like(y), y)
    ct = S.gather(1, yy[:, None])
    S = S.scatter(1, yy[:, None], ref_phi(ct, margin, margin_type))
    out = F.cross_entropy(S / tau, y, reduction=reduction, ignore_index=ignore_index,
                          label_smoothing=label_smoothing)
    if reduction == "mean" and bool((y == ignore_index).all()):
        out = torch.zeros_like(out)  # documented: all rows ignored -> 0 (F gives NaN)
    return out


def ref_hardmax_rows(H, W, y):
    Hn, Wn = F.normalize(H, dim=1), F.normalize(W, dim=1)
    S = Hn @ Wn.T
    masked = S.scatter(1, y[:, None], float("-inf"))
    return masked.max(dim=1).values - S.gather(1, y[:, None])[:, 0]


@pytest.fixture
def small_tiles(monkeypatch):
    """Force several ragged tiles/row blocks at test sizes."""
    monkeypatch.setattr(TILES, "TILE_BYTES", 4096)
    monkeypatch.setattr(TILES, "CUDA_TILE_BYTES", 4096)
    monkeypatch.setattr(SCE, "FUSED_TILE_BYTES", 4096)
    monkeypatch.setattr(SCE, "MIN_ROW_CHUNK", 3)


def _strategy(monkeypatch, s):
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", s)


CASES = [
    # B, d, K, tau, reduction, label_smoothing, margin, margin_type, ignore
    (37, 16, 1000, 0.05, "mean", 0.0, 0.0, "cosface", False),
    (1, 8, 300, 0.1, "mean", 0.0, 0.0, "cosface", False),
    (5, 1, 257, 1.0, "sum", 0.0, 0.0, "cosface", False),
    (6, 3, 2, 0.1, "none", 0.0, 0.0, "cosface", False),
    (9, 12, 700, 0.01, "mean", 0.1, 0.35, "cosface", True),
    (9, 12, 513, 10.0, "sum", 0.2, 0.5, "arcface", True),
    (11, 7, 999, 0.1, "none", 0.05, 0.5, "arcface", True),
    (8, 33, 1027, 0.05, "mean", 0.0, 0.2, "arcface", False),
    (4, 5, 2, 0.01, "mean", 0.3, 0.4, "cosface", True),
]


@pytest.mark.parametrize("strategy", ["auto", "recompute", "grad_in_forward"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}d{c[1]}K{c[2]}t{c[3]}{c[4]}ls{c[5]}m{c[6]}{c[7]}ign{c[8]}")
def test_matches_reference_fp32(case, strategy, small_tiles, monkeypatch):
    _strategy(monkeypatch, strategy)
    B, d, K, tau, red, ls, m, mt, ign = case
    g = torch.Generator().manual_seed(B * 1000 + K)
    H = torch.randn(B, d, generator=g) * 3
    W = torch.randn(K, d, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    y[0] = K - 1
    if B > 1:
        y[1] = 0
    if ign and B > 2:
        y[2] = -100
        y[-1] = -100
    opts = dict(tau=tau, reduction=red, label_smoothing=ls, margin=m, margin_type=mt)
    H1, W1 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    H2, W2 = H.double().requires_grad_(True), W.double().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(H1, W1, y, **opts)
    ref = ref_sce(H2, W2, y, **opts)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * scale, rtol=2e-5)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64) if red == "none" else torch.tensor(1.7, dtype=torch.float64)
    (got * up.float()).sum().backward()
    (ref * up).sum().backward()
    for a, b in ((H1.grad, H2.grad), (W1.grad, W2.grad)):
        s = max(float(b.abs().max()), 1e-2)
        # d=1: the exact gradient through the normalisation is 0 and fp32 leaves
        # rounding of size ulp(|g|/‖row‖) (cancellation in (g − ŵ⟨ŵ,g⟩)/‖w‖)
        tol = 5e-5 if d > 1 else 1e-2
        torch.testing.assert_close(a.double() / s, b / s, atol=tol, rtol=0)


def test_tau_sweep_and_extreme_labels(monkeypatch, small_tiles):
    g = torch.Generator().manual_seed(1)
    H, W = torch.randn(6, 10, generator=g), torch.randn(600, 10, generator=g)
    y = torch.tensor([0, 599, 0, 599, 17, 300])
    for tau in (0.01, 0.1, 1.0, 10.0):
        for strategy in ("recompute", "grad_in_forward"):
            _strategy(monkeypatch, strategy)
            H1 = H.clone().requires_grad_(True)
            got = gnc_ext.spherical_cross_entropy(H1, W, y, tau=tau)
            got.backward()
            H2 = H.double().requires_grad_(True)
            ref = ref_sce(H2, W.double(), y, tau=tau)
            ref.backward()
            torch.testing.assert_close(got.double(), ref, atol=2e-5 * max(1, float(ref)), rtol=2e-5)
            torch.testing.assert_close(H1.grad.double(), H2.grad, atol=5e-5 * float(H2.grad.abs().max()), rtol=0)


def test_ignore_index_semantics():
    g = torch.Generator().manual_seed(2)
    H, W = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    y = torch.tensor([1, -100, 3, -100, 8])
    rows = gnc_ext.spherical_cross_entropy(H, W, y, reduction="none")
    assert rows[1] == 0 and rows[3] == 0
    mean = gnc_ext.spherical_cross_entropy(H, W, y)
    torch.testing.assert_close(mean, rows.sum() / 3)
    # a custom ignore_index that is also a valid class index
    y2 = torch.tensor([1, 7, 3, 7, 8])
    torch.testing.assert_close(gnc_ext.spherical_cross_entropy(H, W, y2, ignore_index=7),
                               ref_sce(H.double(), W.double(), y2, ignore_index=7).float(), atol=1e-5, rtol=1e-5)
    # all ignored: mean is 0 (documented), gradient 0, never NaN
    Hg = H.clone().requires_grad_(True)
    out = gnc_ext.spherical_cross_entropy(Hg, W, torch.full((5,), -100))
    out.backward()
    assert float(out) == 0.0 and torch.all(Hg.grad == 0)


@pytest.mark.parametrize("strategy", ["recompute", "grad_in_forward", "stored"])
@pytest.mark.parametrize("mt,m,red", [("cosface", 0.0, "mean"), ("cosface", 0.3, "sum"), ("arcface", 0.5, "mean"),
                                      ("arcface", 0.5, "none")])
def test_gradcheck_fp64(strategy, mt, m, red, monkeypatch, small_tiles):
    _strategy(monkeypatch, strategy)
    g = torch.Generator().manual_seed(3)
    H = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 10, 3, -100, 7])
    f = lambda h, w: gnc_ext.spherical_cross_entropy(h, w, y, tau=0.5, reduction=red, label_smoothing=0.1,
                                                     margin=m, margin_type=mt)
    assert torch.autograd.gradcheck(f, (H, W))


def test_gradcheck_unit_inputs_normalize_false():
    g = torch.Generator().manual_seed(4)
    H = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    W = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    y = torch.tensor([0, 6, 2, 2])
    f = lambda h, w: gnc_ext.spherical_cross_entropy(h, w, y, tau=0.3, normalize=False, margin=0.2,
                                                     margin_type="arcface")
    assert torch.autograd.gradcheck(f, (H, W))
    torch.testing.assert_close(f(H, W), ref_sce(H, W, y, tau=0.3, normalize=False, margin=0.2, margin_type="arcface"))


def test_arcface_fallback_branch_value_and_gradient():
    # theta + m > pi: a feature almost opposite to its class weight
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    H = torch.tensor([[-1.0, 0.05]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    c = float(F.normalize(H.detach(), dim=1)[0, 0])
    assert c < math.cos(math.pi - 0.5)
    got = gnc_ext.spherical_cross_entropy(H, W, y, tau=1.0, margin=0.5, margin_type="arcface")
    ref = ref_sce(H, W, y, tau=1.0, margin=0.5, margin_type="arcface")
    torch.testing.assert_close(got, ref)
    assert torch.autograd.gradcheck(lambda h: gnc_ext.spherical_cross_entropy(
        h, W, y, tau=1.0, margin=0.5, margin_type="arcface"), (H,))


def test_opcheck_ops():
    g = torch.Generator().manual_seed(5)
    H = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    W = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 5, -100, 2])
    yv = torch.tensor([0, 5, 1, 2])
    ops = torch.ops.gnc_ext
    torch.library.opcheck(ops.spherical_ce_rows.default, (H.requires_grad_(True), W.requires_grad_(True), y, 0.2,
                                                          -100, 0.1, 0.3, 2, 0))
    Hd, Wd = H.detach(), W.detach()
    _, lse = ops.spherical_ce_rows(Hd, Wd, y, 0.2, -100, 0.1, 0.3, 2, 0)
    torch.library.opcheck(ops.spherical_ce_rows_backward.default,
                          (torch.randn(4, dtype=torch.float64), Hd, Wd, y, lse, 0.2, -100, 0.1, 0.3, 2, 0, True, True))
    Hr = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    Wr = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.spherical_ce_fused.default, (Hr, Wr, y, 0.2, -100, 0.1, 0.3, 1, True, 0, True, True, 0))
    torch.library.opcheck(ops.hardmax_rows.default, (H.detach().requires_grad_(True), W.detach().requires_grad_(True), yv, 0))
    torch.library.opcheck(ops.argmax_cosine.default, (Hd, Wd, 0))
    # the ops that normalise W block by block take raw weights
    torch.library.opcheck(ops.spherical_ce_rows_nw.default, (H.detach().requires_grad_(True),
                                                             Wr.detach().requires_grad_(True), y, 0.2, -100, 0.1,
                                                             0.3, 2, 2))
    _, st = ops.spherical_ce_rows_nw(Hd, Wr.detach(), y, 0.2, -100, 0.1, 0.3, 2, 2)
    torch.library.opcheck(ops.spherical_ce_rows_nw_backward.default,
                          (torch.randn(4, dtype=torch.float64), Hd, Wr.detach(), y, st, 0.2, -100, 0.1, 0.3, 2, 2,
                           True, True))
    torch.library.opcheck(ops.hardmax_rows_nw.default, (H.detach().requires_grad_(True),
                                                        Wr.detach().requires_grad_(True), yv, 2))
    _, arg = ops.hardmax_rows_nw(Hd, Wr.detach(), yv, 0)
    for nw in (True, False):
        torch.library.opcheck(ops.hardmax_rows_backward.default,
                              (torch.randn(4, dtype=torch.float64), Hd, Wr.detach(), yv, arg, nw, True, True))


@pytest.mark.parametrize("strategy", ["recompute", "grad_in_forward", "stored"])
def test_bf16_against_fp32_reference(strategy, monkeypatch, small_tiles):
    _strategy(monkeypatch, strategy)
    g = torch.Generator().manual_seed(6)
    H = torch.randn(20, 32, generator=g)
    W = torch.randn(777, 32, generator=g)
    y = torch.randint(0, 777, (20,), generator=g)
    Hb, Wb = H.bfloat16().requires_grad_(True), W.bfloat16().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(Hb, Wb, y, tau=0.1, margin=0.2)
    got.backward()
    Hr, Wr = Hb.detach().float().requires_grad_(True), Wb.detach().float().requires_grad_(True)
    ref = ref_sce(Hr, Wr, y, tau=0.1, margin=0.2)
    ref.backward()
    assert got.dtype == torch.float32 and Hb.grad.dtype == torch.bfloat16
    # measured: loss 1.0e-4 relative (Ĥ, Ŵ are rounded to bf16 inside), gradients 4.2e-3
    # (dH) and 6.9e-3 (dW) of their largest entry (bf16 outputs; "stored", whose E is
    # bf16: 1.5e-5, 3.0e-3, 3.9e-3); bounds ~3-5x the largest
    torch.testing.assert_close(got, ref, atol=5e-4 * float(ref), rtol=0)
    for a, b in ((Hb.grad, Hr.grad), (Wb.grad, Wr.grad)):
        s = float(b.abs().max())
        torch.testing.assert_close(a.float() / s, b / s, atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lowp_grad_gemm_path(dtype, monkeypatch, small_tiles):
    """The 16-bit tensor-core backward (on by default for CUDA 16-bit inputs; forced here
    on the CPU): G rounded to the input dtype, both products in 16-bit with fp32
    accumulation. Gradients within 16-bit tolerance of an fp64 reference, and not
    bitwise equal to the fp32-product path (so the forced path really ran)."""
    _strategy(monkeypatch, "recompute")
    g = torch.Generator().manual_seed(61)
    H, W = torch.randn(24, 40, generator=g), torch.randn(901, 40, generator=g)
    y = torch.randint(0, 901, (24,), generator=g)
    y[3] = -100
    grads = {}
    for mode in ("on", "off"):
        monkeypatch.setattr(gnc_ext.config, "lowp_grad_gemm", mode)
        Hb, Wb = H.to(dtype).requires_grad_(True), W.to(dtype).requires_grad_(True)
        gnc_ext.spherical_cross_entropy(Hb, Wb, y, tau=0.1, margin=0.2, label_smoothing=0.1).backward()
        grads[mode] = (Hb.grad, Wb.grad)
    Hr = H.to(dtype).double().requires_grad_(True)
    Wr = W.to(dtype).double().requires_grad_(True)
    ref_sce(Hr, Wr, y, tau=0.1, margin=0.2, label_smoothing=0.1).backward()
    for got, ref in zip(grads["on"], (Hr.grad, Wr.grad)):
        assert got.dtype == dtype
        err = float((got.double() - ref).norm() / ref.norm())
        assert err < 1e-2, err
    assert not all(torch.equal(a, b) for a, b in zip(grads["on"], grads["off"]))
    with pytest.raises(ValueError, match="lowp_grad_gemm"):
        gnc_ext.config.lowp_grad_gemm = "bogus"
    assert gnc_ext.config.lowp_grad_gemm == "off"  # the refused value was not applied


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_blockwise_w_normalisation_equals_whole(dtype, monkeypatch, small_tiles):
    """The recompute path normalises W one block of classes at a time (spherical_ce_rows_nw)
    and takes dŴ through the normalisation per block: bitwise the same loss and gradients
    as normalising all of W first (normalize_rows + spherical_ce_rows), including a zero
    row and a row below eps (the dŴ/eps branch), a non-contiguous W, ragged blocks and a
    frozen W or H. (Both against the float64 reference: test_matches_reference_fp32.)"""
    _strategy(monkeypatch, "recompute")
    g = torch.Generator().manual_seed(71)
    H = torch.randn(13, 24, generator=g).to(dtype)
    W = torch.randn(24, 3001, generator=g).to(dtype).T  # non-contiguous rows
    W[5] = 0
    W[7] *= 1e-14
    y = torch.randint(0, 3001, (13,), generator=g)
    y[0], y[1], y[2] = 5, 7, -100
    wts = torch.rand(13, generator=g) + 0.5
    opts = dict(tau=0.1, margin=0.2, label_smoothing=0.1, reduction="none")
    for need in ("both", "H", "W"):
        res = {}
        for blockwise in (True, False):
            h = H.clone().requires_grad_(need in ("both", "H"))
            w = W.clone().requires_grad_(need in ("both", "W"))
            if blockwise:  # the public path: W normalised one block of classes at a time
                out = gnc_ext.spherical_cross_entropy(h, w, y, **opts)
            else:  # all of W normalised first, then the op on unit rows
                out = gnc_ext.spherical_cross_entropy(gnc_ext.normalize_rows(h), gnc_ext.normalize_rows(w), y,
                                                      normalize=False, **opts)
            (out * wts.to(out.dtype)).sum().backward()
            res[blockwise] = (out.detach(), h.grad, w.grad)
        for a, b in zip(res[True], res[False]):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b), need
        if need != "H":
            assert torch.isfinite(res[True][2]).all()


def test_blockwise_rejects_non_finite_w_in_a_later_block(small_tiles, monkeypatch):
    """With W normalised block by block, NaN/Inf in W is caught from the blocks' norms
    (no separate pass over W): a bad row in the last of several blocks is named."""
    _strategy(monkeypatch, "recompute")
    g = torch.Generator().manual_seed(73)
    H, W = torch.randn(5, 8, generator=g), torch.randn(1500, 8, generator=g)
    y = torch.randint(0, 1500, (5,), generator=g)
    for bad in (float("nan"), float("inf")):
        Wb = W.clone()
        Wb[1490, 3] = bad
        with pytest.raises(ValueError, match="W: contains NaN or Inf"):
            gnc_ext.spherical_cross_entropy(H, Wb.requires_grad_(True), y)
        with pytest.raises(ValueError, match="W: contains NaN or Inf"):
            gnc_ext.hardmax_loss(H, Wb, y)
    # the documented opt-out: the bad W is no longer refused; the NaN class's cosines are
    # NaN, which the HardMax epilogue never picks, so the values equal those without it
    Wb = W.clone()
    Wb[1490, 3] = float("nan")
    monkeypatch.setattr(gnc_ext.config, "check_finite", False)
    keep = torch.arange(1500) != 1490
    assert not bool((y == 1490).any())
    got = gnc_ext.hardmax_loss(H, Wb, y, reduction="none")
    ref = ref_hardmax_rows(H.double(), W[keep].double(), y - (y > 1490).long())
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)
    rows = gnc_ext.spherical_cross_entropy(H, Wb, y, reduction="none")  # not refused: NaN flows through
    assert bool(torch.isnan(rows).all())


def test_blockwise_w_normalisation_is_used_by_default():
    # the recompute op with raw W runs (not normalize_rows on W) for normalize=True
    calls = []
    orig = gnc_ext.losses.normalize_rows
    try:
        gnc_ext.losses.normalize_rows = lambda X, *a: calls.append(tuple(X.shape)) or orig(X, *a)
        H, W, y = torch.randn(4, 3), torch.randn(9, 3), torch.tensor([0, 1, 2, 8])
        gnc_ext.spherical_cross_entropy(H, W, y, reduction="none")
        gnc_ext.hardmax_loss(H, W, y)
    finally:
        gnc_ext.losses.normalize_rows = orig
    assert calls == [(4, 3), (4, 3)]  # only H is normalised outside the ops


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_hardmax_backward_repeated_classes_through_normalisation(dtype, tol, small_tiles):
    """HardMax with W normalised block by block: many rows share a label and a runner-up
    class, so dŴ sums several rows per class before the normalisation backward; against
    float64 autograd through F.normalize (a zero row of W is left out of the comparison:
    F.normalize's gradient there is the same formula, but huge)."""
    g = torch.Generator().manual_seed(72)
    B, d, K = 40, 8, 300
    H, W = torch.randn(B, d, generator=g), torch.randn(K, d, generator=g)
    W[0] += 4 * W[1]  # class 0 is the runner-up of many rows of class 1
    y = torch.randint(0, K, (B,), generator=g)
    y[: B // 2] = 1
    W[9] = 0
    wts = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    h = H.to(dtype).clone().requires_grad_(True)
    w = W.to(dtype).clone().requires_grad_(True)
    v = gnc_ext.hardmax_loss(h, w, y, reduction="none")
    (v.double() * wts).sum().backward()
    hr = h.detach().double().requires_grad_(True)
    wr = w.detach().double().requires_grad_(True)
    S = F.normalize(hr, dim=1) @ F.normalize(wr, dim=1).T
    ref = S.scatter(1, y[:, None], float("-inf")).max(1).values - S.gather(1, y[:, None])[:, 0]
    (ref * wts).sum().backward()
    keep = torch.arange(K) != 9
    for got, exp in ((v.double(), ref.detach()), (h.grad.double(), hr.grad), (w.grad.double()[keep], wr.grad[keep])):
        s = float(exp.abs().max())
        torch.testing.assert_close(got / s, exp / s, atol=tol, rtol=0)
    # the same result again (deterministic summation of repeated classes)
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    (gnc_ext.hardmax_loss(h2, w2, y, reduction="none").double() * wts).sum().backward()
    assert torch.equal(h2.grad, h.grad) and torch.equal(w2.grad, w.grad)


def test_fp16_runs_and_is_close():
    g = torch.Generator().manual_seed(7)
    H, W = torch.randn(6, 16, generator=g), torch.randn(50, 16, generator=g)
    y = torch.randint(0, 50, (6,), generator=g)
    got = gnc_ext.spherical_cross_entropy(H.half(), W.half(), y, reduction="none")
    ref = ref_sce(H.half().double(), W.half().double(), y, reduction="none")
    # measured: 1.6e-4 relative (Ĥ, Ŵ rounded to fp16 inside, losses ~12-17); bound ~4x
    torch.testing.assert_close(got.double(), ref, atol=0, rtol=6e-4)


def test_zero_norm_rows_are_finite():
    H = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    for red in ("mean", "none"):
        H.grad = W.grad = None
        out = gnc_ext.spherical_cross_entropy(H, W, y, reduction=red, tau=0.5)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(H.grad).all() and torch.isfinite(W.grad).all()
        # a zero row has cosine 0 with everything: row 0's loss is log K (F.normalize maps
        # zero rows to zero vectors as well, so the float64 reference agrees)
        ref = ref_sce(H.detach().double(), W.detach().double(), y, reduction=red, tau=0.5)
        torch.testing.assert_close(out.detach().double(), ref, atol=1e-6, rtol=1e-6)
        if red == "none":
            assert abs(float(out[0]) - math.log(3)) < 1e-6
    v = gnc_ext.hardmax_loss(H, W, y, reduction="none")
    assert torch.isfinite(v).all()


def test_large_logits_stable():
    # tau = 0.01 with aligned vectors: logits up to 100; no overflow, matches reference
    W = torch.eye(4)
    H = torch.eye(4)[[0, 1, 2, 3, 0]] + 0.01
    y = torch.tensor([0, 1, 2, 3, 1])
    got = gnc_ext.spherical_cross_entropy(H, W, y, tau=0.01, reduction="none")
    torch.testing.assert_close(got.double(), ref_sce(H.double(), W.double(), y, tau=0.01, reduction="none"),
                               atol=1e-4, rtol=1e-5)


def _tiny_loss_problem(dtype, device="cpu"):
    """Unit rows where every feature equals its class weight and all other cosines are
    <= 0.6: at tau = 0.01 the loss is ~exp(-40) and p_y rounds to 1 in float64."""
    g = torch.Generator().manual_seed(21)
    d, K = 8, 37
    W = F.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    # spread the weights: keep only vectors with all pairwise cosines <= 0.6
    keep = [0]
    for k in range(1, K):
        if all(float(W[k] @ W[j]) <= 0.6 for j in keep):
            keep.append(k)
    W = W[keep]
    y = torch.arange(W.shape[0])
    H = W[y].clone()
    return H.to(device, dtype), W.to(device, dtype), y.to(device)


def _tiny_loss_reference(H, W, y, tau, margin):
    """Closed form without cancellation (float64): with r_i = sum_{k != y} exp((c_ik - c_iy
    + m) / tau) the row loss is log1p(r_i); p_ik = exp((c_ik - c_iy + m)/tau) / (1 + r_i)
    and dL/dh_i = sum_{k != y} p_ik (w_k - w_y) / tau, dL/dw_k = p_ik h_i / tau,
    dL/dw_y = -sum_k p_ik h_i / tau (CosFace margin m, unit inputs, normalize=False)."""
    H, W = H.double(), W.double()
    C = H @ W.T
    ct = C.gather(1, y[:, None])
    E = torch.exp((C - ct + margin) / tau)
    E.scatter_(1, y[:, None], 0.0)
    r = E.sum(1)
    P = E / (1 + r)[:, None]
    loss = torch.log1p(r)
    dH = (P @ W - P.sum(1, keepdim=True) * W[y]) / tau
    G = P.clone()
    G.scatter_(1, y[:, None], -P.sum(1, keepdim=True))
    dW = G.T @ H / tau
    return loss, dH, dW


@pytest.mark.parametrize("strategy", ["recompute", "grad_in_forward"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("margin", [0.0, 0.15])
def test_tiny_losses_keep_relative_accuracy(strategy, dtype, rtol, margin, monkeypatch):
    # lse - z_y cancels completely here (1e-18 against 100): the op must keep the loss
    # and the target's gradient p_y - 1 = -q from the non-target sum instead
    _strategy(monkeypatch, strategy)
    H, W, y = _tiny_loss_problem(dtype)
    tau = 0.01
    ref_loss, ref_dH, ref_dW = _tiny_loss_reference(H, W, y, tau, margin)
    assert float(ref_loss.max()) < 1e-10 and float(ref_loss.min()) > 1e-40  # really tiny, not zero
    H1, W1 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(H1, W1, y, tau=tau, margin=margin, reduction="none", normalize=False)
    torch.testing.assert_close(got.double(), ref_loss, rtol=rtol, atol=0)
    got.sum().backward()
    torch.testing.assert_close(H1.grad.double(), ref_dH, rtol=rtol, atol=rtol * float(ref_dH.abs().max()))
    torch.testing.assert_close(W1.grad.double(), ref_dW, rtol=rtol, atol=rtol * float(ref_dW.abs().max()))
    # mean reduction (the gradient-in-forward strategy's own path on CPU)
    H2 = H.clone().requires_grad_(True)
    m = gnc_ext.spherical_cross_entropy(H2, W, y, tau=tau, margin=margin, normalize=False)
    torch.testing.assert_close(m.double(), ref_loss.mean(), rtol=rtol, atol=0)
    m.backward()
    torch.testing.assert_close(H2.grad.double(), ref_dH / len(y), rtol=rtol,
                               atol=rtol * float(ref_dH.abs().max()) / len(y))


def test_cuda_tiny_losses_keep_relative_accuracy(cuda_device):
    H, W, y = _tiny_loss_problem(torch.float32, cuda_device)
    ref_loss, ref_dH, ref_dW = _tiny_loss_reference(H.cpu(), W.cpu(), y.cpu(), 0.01, 0.15)
    H1, W1 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(H1, W1, y, tau=0.01, margin=0.15, reduction="none", normalize=False)
    got.sum().backward()
    torch.testing.assert_close(got.double().cpu(), ref_loss, rtol=2e-4, atol=0)
    for a, b in ((H1.grad, ref_dH), (W1.grad, ref_dW)):
        torch.testing.assert_close(a.double().cpu(), b, rtol=2e-4, atol=2e-4 * float(b.abs().max()))


def test_frozen_weights_skip_dW(monkeypatch):
    g = torch.Generator().manual_seed(8)
    H = torch.randn(5, 4, generator=g, requires_grad=True)
    W = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 30, (5,), generator=g)
    for s in ("recompute", "grad_in_forward"):
        _strategy(monkeypatch, s)
        H.grad = None
        gnc_ext.spherical_cross_entropy(H, W, y).backward()
        H2 = H.detach().double().requires_grad_(True)
        ref_sce(H2, W.double(), y).backward()
        torch.testing.assert_close(H.grad.double(), H2.grad, atol=1e-5, rtol=1e-4)
        assert W.grad is None


def test_no_grad_forward_and_retain_graph(monkeypatch):
    g = torch.Generator().manual_seed(9)
    H = torch.randn(5, 4, generator=g, requires_grad=True)
    W = torch.randn(30, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 30, (5,), generator=g)
    with torch.no_grad():
        a = gnc_ext.spherical_cross_entropy(H, W, y)
    out = gnc_ext.spherical_cross_entropy(H, W, y)
    torch.testing.assert_close(a, out.detach())
    out.backward(retain_graph=True)
    g1 = W.grad.clone()
    out.backward()
    torch.testing.assert_close(W.grad, 2 * g1)


# ------------------------------------------------------------------- HardMax --
def test_hardmax_value_all_reductions(small_tiles):
    g = torch.Generator().manual_seed(10)
    H, W = torch.randn(13, 6, generator=g), torch.randn(1001, 6, generator=g)
    y = torch.randint(0, 1001, (13,), generator=g)
    y[0], y[1] = 0, 1000
    v = ref_hardmax_rows(H.double(), W.double(), y)
    for red, r in (("none", v), ("max", v.max()), ("mean", v.mean()), ("sum", v.sum())):
        got = gnc_ext.hardmax_loss(H, W, y, reduction=red)
        torch.testing.assert_close(got.double(), r, atol=1e-5, rtol=1e-5)
    assert gnc_ext.hardmax_loss(H, W, y).dtype == torch.float32


def test_hardmax_subgradient_and_tie_breaking():
    # classes 1 and 3 are identical and both beat the others: the subgradient uses
    # class 1 (the lowest index); rows 0 and 2 tie for the max: row 0 carries it.
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64,
                     requires_grad=True)
    H = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 0])
    out = gnc_ext.hardmax_loss(H, W, y, reduction="max")
    out.backward()
    # brute force: value and the gradient of <w_1 - w_0, h_0/|h_0|> w.r.t. raw H, W
    H2, W2 = H.detach().clone().requires_grad_(True), W.detach().clone().requires_grad_(True)
    Hn, Wn = F.normalize(H2, dim=1), F.normalize(W2, dim=1)
    ref = (Wn[1] - Wn[0]) @ Hn[0]
    ref.backward()
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(H.grad, H2.grad)
    torch.testing.assert_close(W.grad, W2.grad)
    assert torch.all(H.grad[1:] == 0) and torch.all(W.grad[3] == 0)
    # per-row values: brute force over all k != y
    torch.testing.assert_close(gnc_ext.hardmax_loss(H, W, y, reduction="none"), ref_hardmax_rows(H.detach(), W.detach(), y))


def test_hardmax_gradients_mean_vs_bruteforce():
    g = torch.Generator().manual_seed(11)
    H = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(40, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (9,), generator=g)
    gnc_ext.hardmax_loss(H, W, y, reduction="mean").backward()
    H2, W2 = H.detach().clone().requires_grad_(True), W.detach().clone().requires_grad_(True)
    ref_hardmax_rows(H2, W2, y).mean().backward()  # no ties in random data: a true gradient
    torch.testing.assert_close(H.grad, H2.grad)
    torch.testing.assert_close(W.grad, W2.grad)
    assert torch.autograd.gradcheck(lambda h, w: gnc_ext.hardmax_loss(h, w, y, reduction="sum"), (H, W))


def test_hardmax_screened_is_exact(monkeypatch, small_tiles, emulate_tf32_tile):
    """The TF32-screened HardMax forward (the CUDA default for fp32; forced here with TF32
    truncation emulated): values within fp32 rounding of float64 brute force, the same
    argmax, and the same gradients as the plain fp32 path, on data with near ties that
    the TF32 scores alone get wrong."""
    g = torch.Generator().manual_seed(62)
    B, K, d = 64, 3000, 24
    # classes in near-duplicate pairs (cosine gaps ~1e-5, far above fp32 rounding, below
    # the TF32 error): the best competitor of a row is often one of a pair
    base = torch.randn(K // 2, d, generator=g)
    W = torch.cat([base, base + 3e-4 * torch.randn(K // 2, d, generator=g)])
    H = torch.randn(B, d, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    v = ref_hardmax_rows(H.double(), W.double(), y)
    Hn, Wn = F.normalize(H.double(), dim=1), F.normalize(W.double(), dim=1)
    S = Hn @ Wn.T
    S[torch.arange(B), y] = -math.inf
    want_arg = S.argmax(1)
    out = {}
    for mode in ("on", "off"):
        monkeypatch.setattr(gnc_ext.config, "hardmax_screen", mode)
        h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        rows = gnc_ext.hardmax_loss(h, w, y, reduction="none")
        rows.sum().backward()
        out[mode] = (rows.detach(), h.grad, w.grad)
        torch.testing.assert_close(rows.double(), v, atol=2e-6, rtol=0)
    monkeypatch.setattr(gnc_ext.config, "hardmax_screen", "on")
    _, arg_s = torch.ops.gnc_ext.hardmax_rows(F.normalize(H, dim=1), F.normalize(W, dim=1), y, 0)
    assert torch.equal(arg_s, want_arg)
    # the raw-W form (W normalised block by block, each block re-scored from its unit rows)
    _, arg_nw = torch.ops.gnc_ext.hardmax_rows_nw(F.normalize(H, dim=1), W, y, 0)
    assert torch.equal(arg_nw, want_arg)
    # predict (argmax_cosine) takes the same screened path
    S_all = Hn @ Wn.T
    assert torch.equal(torch.ops.gnc_ext.argmax_cosine(F.normalize(H, dim=1), F.normalize(W, dim=1), 0),
                       S_all.argmax(1))
    assert torch.equal(torch.ops.gnc_ext.argmax_cosine_nw(H, W, 0), S_all.argmax(1))
    for a, b in zip(out["on"][1:], out["off"][1:]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the TF32 scores alone would pick another class on some rows
    T = emulate_tf32_tile(F.normalize(H, dim=1), F.normalize(W, dim=1), None)
    T[torch.arange(B), y] = -math.inf
    assert int((T.argmax(1) != want_arg).sum()) >= 1
    with pytest.raises(ValueError, match="hardmax_screen"):
        gnc_ext.config.hardmax_screen = "bogus"


def test_hardmax_K2():
    H = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    W = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    y = torch.tensor([0, 0])
    v = gnc_ext.hardmax_loss(H, W, y, reduction="none")
    torch.testing.assert_close(v, torch.tensor([0.6 - 1.0, 0.8 - 0.0]))


# ------------------------------------------------------------------ compile --
def test_torch_compile_training_step_fullgraph():
    g = torch.Generator().manual_seed(12)
    H0, W0 = torch.randn(8, 6, generator=g), torch.randn(50, 6, generator=g)
    y = torch.randint(0, 50, (8,), generator=g)
    y[3] = -100
    lin = torch.nn.Linear(6, 6)

    def step(x, W):
        f = lin(x)
        a = gnc_ext.spherical_cross_entropy(f, W, y, tau=0.1, margin=0.2, margin_type="arcface", label_smoothing=0.1)
        b = gnc_ext.spherical_cross_entropy(f, W, y, tau=0.1, reduction="none").sum()
        c = gnc_ext.hardmax_loss(f, W, y.clamp_min(0), reduction="max")
        return a + 0.1 * b + c

    cstep = torch.compile(step, fullgraph=True, backend="aot_eager")
    W1 = W0.clone().requires_grad_(True)
    W2 = W0.clone().requires_grad_(True)
    out1 = cstep(H0, W1)
    out1.backward()
    gl1 = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    out2 = step(H0, W2)
    out2.backward()
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(W1.grad, W2.grad)
    for a, p in zip(gl1, lin.parameters()):
        torch.testing.assert_close(a, p.grad)


# ------------------------------------------------------------------ bad input --
def test_bad_inputs():
    H, W, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    sce, hm = gnc_ext.spherical_cross_entropy, gnc_ext.hardmax_loss
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 4\]"):
        sce(H, W, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="y: labels"):
        sce(H, W, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="y: labels"):
        hm(H, W, torch.tensor([0, -100, 1]))
    with pytest.raises(TypeError, match="y: expected dtype int64"):
        sce(H, W, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        sce(H, W, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="W: expected 4 columns"):
        sce(H, torch.randn(5, 3), y)
    with pytest.raises(ValueError, match="H: expected a 2-D"):
        sce(torch.randn(3), W, y)
    with pytest.raises(ValueError, match="H: expected a non-empty"):
        sce(torch.randn(0, 4), W, torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="W: expected at least 2 classes"):
        sce(H, torch.randn(1, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="W: expected at least 2 classes"):
        hm(H, torch.randn(1, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="W: expected dtype"):
        sce(H, W.double(), y)
    with pytest.raises(ValueError, match="H: contains NaN"):
        sce(torch.tensor([[1.0, float("nan"), 0, 0]] * 3), W, y)
    with pytest.raises(ValueError, match="W: contains NaN or Inf"):
        hm(H, W.index_fill(0, torch.tensor([2]), float("inf")), y)
    for strategy in ("recompute", "grad_in_forward"):  # both paths, with gradients
        with gnc_ext.config.override(sce_strategy=strategy):
            Wbad = W.index_fill(0, torch.tensor([4]), float("nan")).requires_grad_(True)
            with pytest.raises(ValueError, match="W: contains NaN or Inf"):
                sce(H.requires_grad_(True), Wbad, y)
            with pytest.raises(ValueError, match="H: contains NaN or Inf"):
                sce(H.index_fill(0, torch.tensor([1]), float("inf")).requires_grad_(True), W, y)
        H = H.detach()
    for bad_tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tau"):
            sce(H, W, y, tau=bad_tau)
    with pytest.raises(ValueError, match="margin: expected 0 <= margin <= 1"):
        sce(H, W, y, margin=1.5)
    with pytest.raises(ValueError, match="margin"):
        sce(H, W, y, margin=-0.1, margin_type="arcface")
    with pytest.raises(ValueError, match="margin"):
        sce(H, W, y, margin=2.0, margin_type="arcface")
    with pytest.raises(ValueError, match="margin_type"):
        sce(H, W, y, margin=0.1, margin_type="sphereface")
    with pytest.raises(ValueError, match="label_smoothing"):
        sce(H, W, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        sce(H, W, y, reduction="max")
    with pytest.raises(ValueError, match="reduction"):
        hm(H, W, y, reduction="avg")
    with pytest.raises(TypeError, match="H: expected a torch.Tensor"):
        sce([[1.0]], W, y)
    with pytest.raises(TypeError, match="normalize"):
        sce(H, W, y, normalize=1)


def test_device_mismatch(cuda_device):
    H, W, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    with pytest.raises(ValueError, match="W: expected a tensor on cpu"):
        gnc_ext.spherical_cross_entropy(H, W.cuda(), y)
    with pytest.raises(ValueError, match="y: expected a tensor on cuda"):
        gnc_ext.hardmax_loss(H.cuda(), W.cuda(), y)


def test_device_mismatch_meta():
    # without a GPU: a meta tensor is neither cpu nor cuda and is rejected by name
    with pytest.raises(ValueError, match="W: expected a cpu or cuda tensor"):
        gnc_ext.spherical_cross_entropy(torch.randn(3, 4), torch.randn(5, 4, device="meta"), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- CUDA twins --
@pytest.mark.parametrize("mt,m,ls,red", [("cosface", 0.0, 0.0, "mean"), ("cosface", 0.35, 0.1, "none"),
                                         ("arcface", 0.5, 0.0, "sum")])
def test_cuda_matches_cpu(cuda_device, mt, m, ls, red):
    g = torch.Generator().manual_seed(13)
    H, W = torch.randn(300, 64, generator=g), torch.randn(20011, 64, generator=g)
    y = torch.randint(0, 20011, (300,), generator=g)
    y[::7] = -100
    outs = []
    for dev in ("cpu", cuda_device):
        # fresh leaves per device (H.to('cpu') is H itself: it must not become a leaf
        # that requires grad, or H.to('cuda') would be a non-leaf without .grad)
        h, w = H.to(dev).detach().requires_grad_(True), W.to(dev).detach().requires_grad_(True)
        o = gnc_ext.spherical_cross_entropy(h, w, y.to(dev), tau=0.05, margin=m, margin_type=mt,
                                            label_smoothing=ls, reduction=red)
        o.sum().backward()
        outs.append((o.detach().cpu(), h.grad.cpu(), w.grad.cpu()))
    for a, b in zip(*outs):
        s = max(float(a.abs().max()), 1e-6)
        torch.testing.assert_close(b / s, a / s, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_sce_peak_memory_is_about_the_gradient(cuda_device, dtype, monkeypatch):
    """W normalised block by block: the training step's peak memory beyond the inputs is
    the gradients dH + dW plus a few tile-sized blocks (whole-W normalisation held Ŵ,
    dŴ and dW: about 3x dW)."""
    monkeypatch.setattr(TILES, "CUDA_TILE_BYTES", 16 * 2**20)
    g = torch.Generator().manual_seed(19)
    B, d, K = 512, 256, 200_000
    H = torch.randn(B, d, generator=g).to(cuda_device, dtype).requires_grad_(True)
    W = torch.randn(K, d, generator=g).to(cuda_device, dtype).requires_grad_(True)
    y = torch.randint(0, K, (B,), generator=g).to(cuda_device)
    grads = (H.numel() + W.numel()) * H.element_size()
    for loss in (lambda: gnc_ext.spherical_cross_entropy(H, W, y), lambda: gnc_ext.hardmax_loss(H, W, y)):
        H.grad = W.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss().backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        assert extra <= grads + 3 * TILES.CUDA_TILE_BYTES, (extra / 2**20, grads / 2**20)


def test_cuda_hardmax_and_predict(cuda_device):
    g = torch.Generator().manual_seed(14)
    H, W = torch.randn(100, 32, generator=g), torch.randn(5003, 32, generator=g)
    y = torch.randint(0, 5003, (100,), generator=g)
    a = gnc_ext.hardmax_loss(H, W, y, reduction="none")
    b = gnc_ext.hardmax_loss(H.cuda(), W.cuda(), y.cuda(), reduction="none").cpu()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    crit = gnc_ext.nn.SphericalCELoss(5003, 32)
    crit.weight.data.copy_(W)
    p_cpu = crit.predict(H)
    p_gpu = crit.cuda().predict(H.cuda()).cpu()
    assert (p_cpu == p_gpu).float().mean() > 0.99  # ties/rounding may differ in rare rows


def test_cuda_hardmax_screened_small_batch(cuda_device, monkeypatch):
    """TF32-screened HardMax forward and predict at a small batch (forced on): the same
    maxima and classes as the plain fp32 path, and as float64 brute force."""
    g = torch.Generator().manual_seed(18)
    H, W = torch.randn(300, 64, generator=g), torch.randn(20011, 64, generator=g)
    y = torch.randint(0, 20011, (300,), generator=g)
    Hc, Wc, yc = H.to(cuda_device), W.to(cuda_device), y.to(cuda_device)
    res = {}
    for mode in ("on", "off"):
        monkeypatch.setattr(gnc_ext.config, "hardmax_screen", mode)
        v, arg = torch.ops.gnc_ext.hardmax_rows_nw(gnc_ext.normalize_rows(Hc), Wc, yc, 0)
        res[mode] = (v.cpu(), arg.cpu(), torch.ops.gnc_ext.argmax_cosine_nw(Hc, Wc, 0).cpu())
    # float64 brute force on the very fp32 unit rows the ops use (the screened path
    # returns the exact argmax of their float64 products)
    Hn, Wn = gnc_ext.normalize_rows(Hc).cpu().double(), gnc_ext.normalize_rows(Wc).cpu().double()
    S = Hn @ Wn.T
    m = S.scatter(1, y[:, None], float("-inf"))
    assert torch.equal(res["on"][1], m.argmax(1))
    assert torch.equal(res["on"][2], (H.double() @ Wn.T).argmax(1))
    torch.testing.assert_close(res["on"][0], res["off"][0], atol=1e-5, rtol=0)
    assert (res["on"][1] == res["off"][1]).float().mean() > 0.99  # fp32 ties/rounding aside


def test_cuda_bf16(cuda_device):
    g = torch.Generator().manual_seed(15)
    H, W = torch.randn(64, 128, generator=g), torch.randn(4099, 128, generator=g)
    y = torch.randint(0, 4099, (64,), generator=g)
    Hb = H.cuda().bfloat16().requires_grad_(True)
    Wb = W.cuda().bfloat16().requires_grad_(True)
    out = gnc_ext.spherical_cross_entropy(Hb, Wb, y.cuda(), tau=0.1)
    out.backward()
    Hr, Wr = Hb.detach().float().cpu().requires_grad_(True), Wb.detach().float().cpu().requires_grad_(True)
    ref = ref_sce(Hr, Wr, y, tau=0.1)
    ref.backward()
    # the CPU run of this case with the same 16-bit backward products
    # (config.lowp_grad_gemm="on") measures loss 1.5e-6 relative, dH 6.0e-3 and dW 4.2e-3
    # of their largest entry; bounds ~3-7x those
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5 * float(ref), rtol=0)
    for a, b in ((Hb.grad, Hr.grad), (Wb.grad, Wr.grad)):
        s = float(b.abs().max())
        torch.testing.assert_close(a.float().cpu() / s, b / s, atol=2e-2, rtol=0)


# ------------------------------------------------- fp32 GEMM modes (CUDA, emulated) --
def _tf32_round(x):
    """float32 -> nearest TF32 value (10 explicit mantissa bits), as tensor cores see it."""
    r = x.contiguous().view(torch.int32)
    return ((r + 0x1000) & -8192).view(torch.float32)


def _emulated_tf32_mm(a, b):
    return _tf32_round(a) @ _tf32_round(b)


@pytest.fixture
def emulate_tf32(monkeypatch):
    """Run the CUDA fp32 GEMM modes on the CPU with TF32 input rounding emulated."""
    monkeypatch.setattr(TILES, "tf32_mm", _emulated_tf32_mm)
    monkeypatch.setattr(TILES, "gemm_mode", lambda t: gnc_ext.config.cuda_fp32_mode if t.dtype == torch.float32
                        else "ieee")


def _fp32_mode_errors(H, W, y):
    """Relative errors (loss, max |dH|, max |dW|) of the fp32 loss against float64."""
    H1, W1 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(H1, W1, y, tau=0.05, margin=0.2)
    got.backward()
    H2, W2 = H.double().requires_grad_(True), W.double().requires_grad_(True)
    ref = ref_sce(H2, W2, y, tau=0.05, margin=0.2)
    ref.backward()
    errs = [abs(float(got.detach()) - float(ref.detach())) / abs(float(ref.detach()))]
    for a, b in ((H1.grad, H2.grad), (W1.grad, W2.grad)):
        errs.append(float((a.double() - b).abs().max()) / float(b.abs().max()))
    return errs


def test_loss_in_fp32_gemm_modes(emulate_tf32, monkeypatch):
    """config.cuda_fp32_mode on the CPU with TF32 rounding emulated: "ieee" has fp32-level
    errors (largest measured 4e-7), "tf32" TF32-level ones (largest measured 1.3e-4);
    each bound is about 5x the measured error, and the two ranges do not overlap."""
    _strategy(monkeypatch, "recompute")  # the CUDA default strategy, which uses the modes
    g = torch.Generator().manual_seed(4)
    H, W = torch.randn(33, 64, generator=g), torch.randn(1500, 64, generator=g)
    y = torch.randint(0, 1500, (33,), generator=g)
    errs = {}
    for mode in ("ieee", "tf32"):
        monkeypatch.setattr(gnc_ext.config, "cuda_fp32_mode", mode)
        errs[mode] = _fp32_mode_errors(H, W, y)
    assert max(errs["ieee"]) < 2e-6, errs
    assert 3e-5 < max(errs["tf32"]) < 6e-4, errs


def test_fp32_mode_flag_is_validated():
    for bad in ("fp16", "3xtf32"):
        with pytest.raises(ValueError, match="cuda_fp32_mode"):
            gnc_ext.config.cuda_fp32_mode = bad
    with pytest.raises(TypeError, match="cuda_fp32_mode"):
        gnc_ext.config.cuda_fp32_mode = 32
    assert gnc_ext.config.cuda_fp32_mode == "ieee"


def test_cuda_fp32_modes(cuda_device, monkeypatch):
    """The TF32 mode on a GPU: the CPU emulation of this very case (TF32 round-to-nearest
    inputs) measures a largest relative error of 5.3e-5; the bound is about 5x that."""
    monkeypatch.setattr(gnc_ext.config, "cuda_fp32_mode", "tf32")
    g = torch.Generator().manual_seed(6)
    H, W = torch.randn(200, 128, generator=g), torch.randn(30011, 128, generator=g)
    y = torch.randint(0, 30011, (200,), generator=g)
    h, w = H.to(cuda_device).requires_grad_(True), W.to(cuda_device).requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(h, w, y.to(cuda_device), tau=0.05)
    got.backward()
    H2, W2 = H.double().requires_grad_(True), W.double().requires_grad_(True)
    ref = ref_sce(H2, W2, y, tau=0.05)
    ref.backward()
    tol = 3e-4
    assert abs(float(got.detach()) - float(ref.detach())) <= tol * abs(float(ref.detach()))
    for a, b in ((h.grad, H2.grad), (w.grad, W2.grad)):
        assert float((a.double().cpu() - b).abs().max()) <= tol * float(b.abs().max())


def test_tau_has_a_documented_minimum():
    """τ below 1e-6 is refused by name (at τ = 1e-20 the fp32 gradients overflowed and
    at 1e-300 the loss was NaN); at the minimum the loss, with and without gradients,
    equals a float64 reference and stays finite."""
    H, W, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    for bad in (1e-7, 1e-12, 1e-300):
        with pytest.raises(ValueError, match="tau: expected a temperature >= 1e-06"):
            gnc_ext.spherical_cross_entropy(H, W, y, tau=bad)
    from gnc_ext.solvers import train_ufm
    with pytest.raises(ValueError, match="tau: expected a temperature"):
        train_ufm(2, 3, 1, tau=1e-9, steps=1, progress=False)
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64):
        H = torch.randn(6, 4, generator=g, dtype=torch.float64)
        W = torch.randn(5, 4, generator=g, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 3, 4, 0])
        z = (F.normalize(H, dim=1) @ F.normalize(W, dim=1).T) / 1e-6
        ref = F.cross_entropy(z, y, reduction="none")
        rows = gnc_ext.spherical_cross_entropy(H.to(dt), W.to(dt), y, tau=1e-6, reduction="none")
        Hg = H.to(dt).requires_grad_(True)
        mean = gnc_ext.spherical_cross_entropy(Hg, W.to(dt), y, tau=1e-6)
        mean.backward()
        # fp32 cosines carry ~6e-8 absolute rounding, i.e. ~0.1 in logits of size 1e6
        atol = 1e-6 if dt == torch.float64 else 0.5
        torch.testing.assert_close(rows.double(), ref, rtol=1e-6, atol=atol)
        torch.testing.assert_close(mean.detach().double(), ref.mean(), rtol=1e-6, atol=atol)
        assert bool((rows >= 0).all()) and bool(torch.isfinite(Hg.grad).all())


def test_finish_when_both_terms_underflow():
    """The fold found the target to be the max (T = 0: no non-target term reached M), but
    at tiny τ the rounding of z_t made exp(z_t - M) underflow: the row's loss is 0 and its
    non-target mass 0, not lse = -inf (seen at τ = 1e-12 before τ got its minimum)."""
    state = torch.tensor([[1e12, 0.0, 0.6999999, 0.0]], dtype=torch.float64)
    # M = 1e12 but z_t = 0.6999999 / 7e-13 = M - 1.4e5: exp(z_t - M) underflows to 0
    loss, stats = SCE.finish_state(state, torch.tensor([0]), 4, 7e-13, -100, 0.0, 0.0, 0)
    assert loss[0] == 0.0 and stats[0, 1] == 0.0 and stats[0, 0] == 1e12
    # an ordinary row is unchanged: M = 1, T = 2, z_t = 0.5 -> loss = log(1 + 2 e^0.5)
    state = torch.tensor([[1.0, 2.0, 0.5, 0.0]], dtype=torch.float64)
    loss, stats = SCE.finish_state(state, torch.tensor([0]), 4, 1.0, -100, 0.0, 0.0, 0)
    assert abs(float(loss[0]) - math.log1p(2 * math.exp(0.5))) < 1e-14
    assert abs(float(stats[0, 0]) - (1.0 + math.log(2 + math.exp(-0.5)))) < 1e-14
