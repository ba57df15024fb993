"""The stored-exponent strategy of spherical_cross_entropy (gnc_ext.ops.sce_stored) against
float64 PyTorch references written in test_loss.py (F.normalize + matmul +
F.cross_entropy), next to the recompute strategy."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import gnc_ext
from gnc_ext import _native
from gnc_ext.ops import sce_stored as ST
from gnc_ext.ops import tiles as TILES
from test_loss import _tiny_loss_problem, _tiny_loss_reference, ref_sce, test_torch_compile_training_step_fullgraph

MARGINS = [(0.0, "cosface"), (0.35, "cosface"), (0.5, "arcface")]
COMBOS = list(itertools.product(MARGINS, ("mean", "sum", "none"), (0.0, 0.1), (False, True)))


@pytest.fixture
def small_tiles(monkeypatch):
    """Several ragged class blocks at test sizes."""
    monkeypatch.setattr(TILES, "TILE_BYTES", 4096)
    monkeypatch.setattr(TILES, "CUDA_TILE_BYTES", 4096)


def _problem(seed, B=13, d=10, K=777, dtype=torch.float32, ignore=False):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(B, d, generator=g, dtype=torch.float64) * 2
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    W[3] = 0  # a zero class row: cosines 0, finite gradients
    y = torch.randint(0, K, (B,), generator=g)
    y[0], y[1] = 0, K - 1
    if ignore:
        y[2] = y[-1] = -100
    return H.to(dtype), W.to(dtype), y


@pytest.mark.parametrize("strategy", ["stored", "stored_bf16", "recompute"])
@pytest.mark.parametrize("margin,red,ls,ign", COMBOS,
                         ids=[f"{mt}{m}-{r}-ls{ls}-ign{int(i)}" for (m, mt), r, ls, i in COMBOS])
def test_every_option_against_float64_cross_entropy(strategy, margin, red, ls, ign, small_tiles, monkeypatch):
    """float32 inputs, both strategies, against float64 F.cross_entropy: loss and both
    gradients for a random upstream gradient (largest errors measured over all cases:
    loss 1.2e-7 (stored) / 1.5e-7 (recompute) of max(1, |loss|), gradients 1.7e-6 /
    1.9e-6 of their largest entry; bounds ~5-7x). "stored_bf16": the float32 inputs' E
    stored in bfloat16 (config.sce_stored_dtype): the loss is as accurate (its sums are
    formed before the rounding), the gradients carry the bf16 rounding of E (largest
    measured 1.4e-3; bound 5e-3)."""
    m, mt = margin
    gtol = 5e-3 if strategy == "stored_bf16" else 1e-5
    if strategy == "stored_bf16":
        monkeypatch.setattr(gnc_ext.config, "sce_stored_dtype", "bfloat16")
        strategy = "stored"
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", strategy)
    H, W, y = _problem(hash((m, red, ls, ign)) % 1000, ignore=ign)
    opts = dict(tau=0.05, reduction=red, label_smoothing=ls, margin=m, margin_type=mt)
    h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    assert gnc_ext.losses.sce_strategy(h, w, reduction=red) == strategy
    got = gnc_ext.spherical_cross_entropy(h, w, y, **opts)
    hr, wr = H.double().requires_grad_(True), W.double().requires_grad_(True)
    ref = ref_sce(hr, wr, y, **opts)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(got.double(), ref.detach(), atol=1e-6 * scale, rtol=0)
    up = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (got.double() * up).sum().backward()
    (ref * up).sum().backward()
    for a, b in ((h.grad, hr.grad), (w.grad, wr.grad)):
        s = float(b.abs().max())
        torch.testing.assert_close(a.double() / s, b / s, atol=gtol, rtol=0)
    if ign:
        assert float(h.grad[2].abs().max()) == 0.0


@pytest.mark.parametrize("mt,m,red", [("cosface", 0.0, "mean"), ("cosface", 0.3, "sum"), ("arcface", 0.5, "none")])
def test_gradcheck_fp64_unit_rows(mt, m, red, small_tiles, monkeypatch):
    """gradcheck of the stored strategy with normalize=False (the raw-W case runs in
    test_loss.test_gradcheck_fp64 with strategy "stored")."""
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    g = torch.Generator().manual_seed(3)
    H = torch.randn(5, 6, generator=g, dtype=torch.float64)
    W = torch.randn(11, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 10, 3, -100, 7])
    # normalize=False: unit rows given, no normalisation inside
    Hn = F.normalize(H, dim=1).requires_grad_(True)
    Wn = F.normalize(W, dim=1).requires_grad_(True)
    fn = lambda h, w: gnc_ext.spherical_cross_entropy(h, w, y, tau=0.3, normalize=False, margin=m, margin_type=mt,
                                                      reduction=red)
    assert torch.autograd.gradcheck(fn, (Hn, Wn))
    torch.testing.assert_close(fn(Hn, Wn), ref_sce(Hn, Wn, y, tau=0.3, normalize=False, margin=m, margin_type=mt,
                                                   reduction=red))


def test_opcheck():
    g = torch.Generator().manual_seed(5)
    Hn = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    W = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 5, -100, 2])
    ops = torch.ops.gnc_ext
    torch.library.opcheck(ops.spherical_ce_stored.default,
                          (Hn.clone().requires_grad_(True), W.clone().requires_grad_(True), y, 0.2, -100, 0.1, 0.3, 2,
                           True, 2))
    _, E, stats, inv_n = ops.spherical_ce_stored(Hn, W, y, 0.2, -100, 0.1, 0.3, 2, True, 2)
    for nw in (True, False):
        torch.library.opcheck(ops.spherical_ce_stored_backward.default,
                              (torch.randn(4, dtype=torch.float64), Hn, W, y, E, stats, inv_n, 0.2, -100, 0.1, 0.3, 2,
                               nw, 2, True, True))


def test_torch_compile_fullgraph(monkeypatch):
    """test_loss's compiled training step (fullgraph, arcface + smoothing + ignore_index,
    reduction none and mean, HardMax) with the stored strategy: the same loss and
    gradients as eager."""
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    test_torch_compile_training_step_fullgraph()


# measured: float64 loss 3e-16 / gradients 1e-15, float32 1.1e-7 / 1.5e-7 (relative to
# the largest entry); bounds ~5-10x
@pytest.mark.parametrize("dtype,tol,gtol", [(torch.float64, 2e-15, 1e-14), (torch.float32, 1e-6, 1e-6)])
def test_underflow_rows_are_recomputed_exactly(dtype, tol, gtol, small_tiles, monkeypatch):
    """τ = 1e-3 and every cosine ≤ 0: all shifted logits (s − 1)/τ are ≤ −1000, so
    exp((s − 1)/τ) underflows in every row; those rows take the exact online-max shift
    and match float64 F.cross_entropy. Without the fallback (limit −inf) the same call
    gives non-finite losses: the fallback really ran."""
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    g = torch.Generator().manual_seed(9)
    B, d, K = 7, 6, 300
    W = torch.randn(K, d, generator=g, dtype=torch.float64).abs()
    H = -torch.randn(B, d, generator=g, dtype=torch.float64).abs()
    y = torch.randint(0, K, (B,), generator=g)
    y[4] = -100
    assert float((F.normalize(H, dim=1) @ F.normalize(W, dim=1).T).max()) <= 0
    opts = dict(tau=1e-3, margin=0.2, label_smoothing=0.1, reduction="none")
    h, w = H.to(dtype).clone().requires_grad_(True), W.to(dtype).clone().requires_grad_(True)
    got = gnc_ext.spherical_cross_entropy(h, w, y, **opts)
    hr = H.to(dtype).double().clone().requires_grad_(True)
    wr = W.to(dtype).double().clone().requires_grad_(True)
    ref = ref_sce(hr, wr, y, **opts)
    scale = float(ref.detach().abs().max())
    torch.testing.assert_close(got.double(), ref.detach(), atol=tol * scale, rtol=0)
    up = torch.rand(B, dtype=torch.float64, generator=g) + 0.5
    (got.double() * up).sum().backward()
    (ref * up).sum().backward()
    for a, b in ((h.grad, hr.grad), (w.grad, wr.grad)):
        s = float(b.abs().max())
        torch.testing.assert_close(a.double() / s, b / s, atol=gtol, rtol=0)
    monkeypatch.setitem(ST.UNDERFLOW_LIMIT, dtype, -math.inf)
    bad = gnc_ext.spherical_cross_entropy(H.to(dtype), W.to(dtype).clone().requires_grad_(True), y, **opts)
    assert not bool(torch.isfinite(bad[y != -100]).all())


def test_bitwise_repeatable(monkeypatch):
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    H, W, y = _problem(4, B=40, d=32, K=5000, ignore=True)
    y[5:9] = 17  # repeated classes: the sparse target rows are summed
    res = []
    for _ in range(2):
        h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        out = gnc_ext.spherical_cross_entropy(h, w, y, tau=0.05, margin=0.3, label_smoothing=0.1)
        out.backward()
        res.append((out.detach(), h.grad, w.grad))
    for a, b in zip(*res):
        assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["stored", "recompute"])
def test_tiny_losses_keep_relative_accuracy(strategy, monkeypatch):
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", strategy)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        H, W, y = _tiny_loss_problem(dtype)
        ref_loss, ref_dH, ref_dW = _tiny_loss_reference(H, W, y, 0.01, 0.15)
        h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        got = gnc_ext.spherical_cross_entropy(h, w, y, tau=0.01, margin=0.15, reduction="none", normalize=False)
        torch.testing.assert_close(got.double(), ref_loss, rtol=rtol, atol=0)
        got.sum().backward()
        torch.testing.assert_close(h.grad.double(), ref_dH, rtol=rtol, atol=rtol * float(ref_dH.abs().max()))
        torch.testing.assert_close(w.grad.double(), ref_dW, rtol=rtol, atol=rtol * float(ref_dW.abs().max()))


def test_choice_is_visible_and_settable():
    H = torch.randn(4, 8, requires_grad=True)
    W = torch.randn(100, 8, requires_grad=True)
    choose = gnc_ext.losses.sce_strategy
    # auto on the CPU: gradient-in-forward for mean/sum, stored for "none" within the budget
    assert choose(H, W) == "grad_in_forward"
    assert choose(H, W, reduction="none") == "stored"
    assert choose(H.bfloat16(), W.bfloat16()) == "stored"  # bf16: no gradient-in-forward
    assert choose(H.double(), W.double(), reduction="none") == "recompute"  # float64: not measured
    with gnc_ext.config.override(sce_stored_budget_bytes=4 * 100 * 4 - 1):  # one byte short of B×K fp32
        assert choose(H, W, reduction="none") == "recompute"
    with gnc_ext.config.override(sce_stored_budget_bytes=4 * 100 * 4):
        assert choose(H, W, reduction="none") == "stored"
    with gnc_ext.config.override(sce_strategy="stored"):
        assert choose(H, W) == "stored"
        assert choose(H.half(), W.half()) == "recompute"  # float16: not supported by the store
        assert choose(H.detach(), W.detach()) == "recompute"  # no gradient: nothing to store for
    with gnc_ext.config.override(sce_strategy="recompute"):
        assert choose(H, W, reduction="none") == "recompute"
    with pytest.raises(ValueError, match="sce_stored_budget_bytes"):
        gnc_ext.config.sce_stored_budget_bytes = 0
    with pytest.raises(ValueError, match="reduction"):
        choose(H, W, reduction="avg")


def test_native_arguments_are_checked():
    v = _native.view
    tile = torch.zeros(3, 5)
    args = dict(tile=tile, inv_n=torch.ones(5), y=torch.zeros(3, dtype=torch.int64), shift=torch.zeros(3, dtype=torch.float64),
                E=torch.zeros(3, 5), state=torch.zeros(3, 4, dtype=torch.float64))

    def call(**over):
        a = {**args, **over}
        _native.native.sce_stored_exp(v(a["tile"]), v(a["inv_n"]), v(a["y"]), 0, v(a["shift"]), v(a["E"]),
                                      v(a["state"]), 0.1, -100, v(ST.exp_workspace(3, 5, "cpu")))

    call()
    for name, bad in (("inv_n", torch.ones(4)), ("E", torch.zeros(3, 5, dtype=torch.float64)),
                      ("shift", torch.zeros(3)), ("state", torch.zeros(3, 3, dtype=torch.float64)),
                      ("y", torch.zeros(3, dtype=torch.int32))):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            call(**{name: bad})
    X, Wb = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\bv\b"):
        _native.native.sce_stored_dw(v(X), v(Wb), v(torch.ones(4)), v(torch.zeros(2)), v(torch.zeros(4, 3)), 1e-12,
                                     True)
    with pytest.raises(ValueError, match=r"\bdW\b"):
        _native.native.sce_stored_dw(v(X), v(Wb), v(torch.ones(4)), v(torch.zeros(3)),
                                     v(torch.zeros(4, 3, dtype=torch.float64)), 1e-12, True)


def test_native_dw_refuses_float32_X_with_float64_W():
    """X float32 with W float64 used to dispatch to no kernel on the CPU: dW was left
    unwritten without an error. Now a ValueError names W (CPU and CUDA share the check)."""
    v = _native.view
    X, W64 = torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)
    dW = torch.full((4, 3), 7.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"W: expected float32, bfloat16 or float16 for a float32 X, got float64"):
        _native.native.sce_stored_dw(v(X), v(W64), v(torch.ones(4)), v(torch.zeros(3)), v(dW), 1e-12, True)
    assert bool((dW == 7.0).all())
    # the supported pairs write every entry (float64 reference of dW_k = X_k - w_k <w_k, X_k>/|w_k|^2)
    for wdt in (torch.float32, torch.bfloat16, torch.float16):
        W = W64.to(wdt)
        out = torch.full((4, 3), float("nan"), dtype=wdt)
        inv = (1 / W.double().norm(dim=1)).float()
        _native.native.sce_stored_dw(v(X), v(W), v(inv), v(torch.zeros(3)), v(out), 1e-12, True)
        w = W.double()
        ref = X.double() - w * ((w * X.double()).sum(1) / w.square().sum(1))[:, None]
        torch.testing.assert_close(out.double(), ref, atol=2e-2 if wdt != torch.float32 else 1e-6, rtol=0)


def test_native_stored_outputs_must_not_alias_inputs():
    """E / state / dW are written through __restrict__ pointers: sharing memory with an
    input is refused by name."""
    v = _native.view
    buf = torch.zeros(3, 10)
    tile, E = buf[:, :5], buf[:, 3:8]  # overlapping column ranges of one buffer
    y, shift = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.float64)
    state = torch.zeros(3, 4, dtype=torch.float64)
    ws = ST.exp_workspace(3, 5, "cpu")
    with pytest.raises(ValueError, match=r"E: must not share memory with tile"):
        _native.native.sce_stored_exp(v(tile), v(torch.ones(5)), v(y), 0, v(shift), v(E), v(state), 0.1, -100, v(ws))
    with pytest.raises(ValueError, match=r"state: must not share memory with shift"):
        _native.native.sce_stored_exp(v(torch.zeros(3, 5)), v(torch.ones(5)), v(y), 0, v(state[:, 0]),
                                      v(torch.zeros(3, 5)), v(state), 0.1, -100, v(ws))
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"dW: must not share memory with X"):
        _native.native.sce_stored_dw(v(X), v(torch.randn(4, 3)), v(torch.ones(4)), v(torch.zeros(3)), v(X), 1e-12,
                                     True)


def test_exp_workspace_size():
    """The CUDA workspace: 3 float64 per (row, 4096-column block), rows capped at the 65,535
    of one launch; the CPU needs none."""
    n = _native.native.sce_stored_exp_workspace_doubles
    assert n(0, 5) == 0 and n(5, 0) == 0
    assert n(1, 1) == 3 and n(10, 4096) == 30 and n(10, 4097) == 60
    assert n(70000, 9000) == 3 * 65535 * 3
    with pytest.raises(ValueError, match="rows and cols"):
        n(-1, 3)
    assert ST.exp_workspace(10, 10, "cpu").numel() == 0


def test_cuda_stored_matches_cpu(cuda_device, monkeypatch):
    """The CUDA epilogues (sce_stored_exp: 2-D grid, 16-byte loads; sce_stored_dw) against
    the CPU strategy, float32 and bfloat16, through the forced "stored" setting."""
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    g = torch.Generator().manual_seed(13)
    H, W = torch.randn(300, 64, generator=g), torch.randn(20011, 64, generator=g)
    y = torch.randint(0, 20011, (300,), generator=g)
    y[::7] = -100
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        outs = []
        for dev in ("cpu", cuda_device):
            h = H.to(dev, dtype).detach().requires_grad_(True)
            w = W.to(dev, dtype).detach().requires_grad_(True)
            o = gnc_ext.spherical_cross_entropy(h, w, y.to(dev), tau=0.05, margin=0.3, label_smoothing=0.1,
                                                reduction="none")
            o.sum().backward()
            outs.append((o.detach().double().cpu(), h.grad.double().cpu(), w.grad.double().cpu()))
        for a, b in zip(*outs):
            s = max(float(a.abs().max()), 1e-6)
            torch.testing.assert_close(b / s, a / s, atol=tol, rtol=0)


@pytest.mark.parametrize("opts", [
    dict(margin=0.5, margin_type="arcface", margin_grad="straight_through"),
    dict(interclass_filtering_threshold=0.2),
    dict(num_subcenters=3),
], ids=["straight_through", "filtering", "subcenters"])
def test_recognition_options_never_take_the_stored_strategy(opts, monkeypatch):
    """The stored epilogue has none of the face-recognition options: with
    config.sce_strategy="stored" a call that asks for one takes the recompute path and
    gives its result (float64; the same call without the option, which stored takes,
    has another gradient, so a stored call that ignored the option would differ)."""
    k = opts.get("num_subcenters", 1)
    H, W, y = _problem(5, K=60 * k, dtype=torch.float64)
    y = y % 60
    y[2] = 59
    if "interclass_filtering_threshold" in opts:
        W[:20] = H[:1].expand(20, -1) + 0.1 * W[:20]  # cosines above the threshold exist
    losses = {}
    for strategy in ("stored", "recompute"):
        monkeypatch.setattr(gnc_ext.config, "sce_strategy", strategy)
        h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        assert gnc_ext.losses.sce_strategy(h, w, **opts) == "recompute"
        loss = gnc_ext.spherical_cross_entropy(h, w, y, tau=0.1, reduction="sum", **opts)
        loss.backward()
        losses[strategy] = (loss.detach(), h.grad, w.grad)
    for a, b in zip(losses["stored"], losses["recompute"]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    plain = {key: v for key, v in opts.items() if key not in ("margin_grad", "interclass_filtering_threshold",
                                                             "num_subcenters")}
    monkeypatch.setattr(gnc_ext.config, "sce_strategy", "stored")
    h = H.clone().requires_grad_(True)
    gnc_ext.spherical_cross_entropy(h, W[:60], y, tau=0.1, reduction="sum", **plain).backward()
    assert gnc_ext.losses.sce_strategy(h, W[:60], **plain) == "stored"
    assert not torch.allclose(h.grad, losses["recompute"][1], rtol=1e-6)  # the option matters here
