"""Mixed precision: the losses inside torch.autocast (CPU bf16/fp16; the CUDA cases are
marked cuda), 16-bit features against fp32 master weights, GradScaler with an injected
inf, torch.compile(fullgraph=True) under autocast, and int32 labels everywhere."""
import math

import pytest
import torch
import torch.nn.functional as F

import gnc_ext
from gnc_ext.nn import HardMaxLoss, SphericalCELoss
from gnc_ext.ops.tiles import compute_dtype

OPTION_CASES = [
    dict(),
    dict(margin=0.3, margin_type="cosface"),
    dict(margin=0.5, margin_type="arcface"),
    dict(margin=0.5, margin_type="arcface", margin_grad="straight_through"),
    dict(margin=0.2, margin_type="cosface", label_smoothing=0.1),
    dict(margin=0.5, margin_type="arcface", margin_grad="straight_through", interclass_filtering_threshold=0.2),
    dict(margin=0.3, margin_type="cosface", num_subcenters=3),
    dict(margin=0.5, margin_type="arcface", margin_grad="straight_through", num_subcenters=3,
         interclass_filtering_threshold=0.1, ignore_index=-1),
]
IDS = ["plain", "cosface", "arcface", "arcface-st", "cosface-ls", "arcface-st-filter", "cosface-k3",
       "insightface-k3-filter"]


def _cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _data(k=1, B=48, K=40, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K * k, d, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    H = 0.6 * W[y * k] + torch.randn(B, d, generator=g)  # correlated: a mid-range loss
    return H, W, y


@pytest.mark.parametrize("strategy", ["auto", "recompute", "stored"])
@pytest.mark.parametrize("opts", OPTION_CASES, ids=IDS)
def test_autocast_bf16_close_to_fp32(opts, strategy):
    k = opts.get("num_subcenters", 1)
    H, W, y = _data(k)
    if opts.get("ignore_index") == -1:
        y[3] = -1
    tau = 1 / 16
    with gnc_ext.config.override(sce_strategy=strategy):
        H32, W32 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        ref = gnc_ext.spherical_cross_entropy(H32, W32, y, tau=tau, **opts)
        ref.backward()
        Hb, Wb = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = gnc_ext.spherical_cross_entropy(Hb, Wb, y, tau=tau, **opts)
        got.backward()
    assert got.dtype == torch.float32
    # bf16 inputs: cosines carry ~2^-8 relative error, the logits that over tau
    assert abs(float(got.detach()) - float(ref.detach())) <= 3e-2 * max(1.0, abs(float(ref))), (float(got), float(ref))
    assert Hb.grad.dtype == torch.float32 and Wb.grad.dtype == torch.float32
    assert _cos(Hb.grad, H32.grad) >= 0.999
    assert _cos(Wb.grad, W32.grad) >= 0.999


@pytest.mark.parametrize("features_fp32", [False, True], ids=["bf16-features", "fp32-features"])
def test_module_inside_autocast_the_issue_reports(features_fp32):
    # the two calls that raised before: bf16 features from an autocast backbone against
    # the module's fp32 weight, and the same features cast back to float32
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 32)
    crit = SphericalCELoss(300, 32, tau=1 / 64, margin=0.5, margin_type="arcface",
                           margin_grad="straight_through", ignore_index=-1)
    x, y = torch.randn(64, 16), torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = net(x)
        assert f.dtype == torch.bfloat16
        loss = crit(f.float() if features_fp32 else f, y)
    loss.backward()
    ref = crit(net(x), y)  # fp32 outside autocast
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert abs(float(loss) - float(ref)) < 3e-2 * float(ref)
    assert crit.weight.grad.dtype == torch.float32 and net.weight.grad.dtype == torch.float32


def test_mixed_dtypes_outside_autocast():
    H, W, y = _data()
    Hb = H.bfloat16().requires_grad_(True)
    W32 = W.clone().requires_grad_(True)
    loss = gnc_ext.spherical_cross_entropy(Hb, W32, y, tau=0.1)
    loss.backward()
    assert Hb.grad.dtype == torch.bfloat16 and W32.grad.dtype == torch.float32
    # the same as both inputs in bf16 (the lower precision is the GEMM precision)
    Hb2, Wb2 = H.bfloat16().requires_grad_(True), W.bfloat16().requires_grad_(True)
    loss2 = gnc_ext.spherical_cross_entropy(Hb2, Wb2, y, tau=0.1)
    loss2.backward()
    assert float(loss) == float(loss2)
    torch.testing.assert_close(Hb.grad, Hb2.grad)
    torch.testing.assert_close(W32.grad.bfloat16(), Wb2.grad)
    assert compute_dtype(H.half(), W) == torch.float16
    with pytest.raises(TypeError, match="W: expected dtype"):
        gnc_ext.spherical_cross_entropy(H.double(), W, y)
    with pytest.raises(TypeError, match="W: expected dtype"):
        gnc_ext.spherical_cross_entropy(H.half(), W.bfloat16(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is left alone, as autocast does
        assert compute_dtype(H.double(), W.double()) == torch.float64


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_hardmax_inside_autocast(reduction):
    H, W, y = _data()
    H32, W32 = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    ref = gnc_ext.hardmax_loss(H32, W32, y, reduction=reduction)
    ref.backward()
    Hb, Wb = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gnc_ext.hardmax_loss(Hb, Wb, y, reduction=reduction)
    got.backward()
    assert abs(float(got) - float(ref)) < 2e-2
    # a subgradient: bf16 rounding flips the arg-max class of near-tied rows, so only most rows agree
    assert Hb.grad.dtype == torch.float32 and _cos(Hb.grad, H32.grad) >= 0.95


def test_fp16_autocast_on_cpu():
    H, W, y = _data()
    Hh, Wh = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = gnc_ext.spherical_cross_entropy(Hh, Wh, y, tau=0.1, margin=0.2)
    loss.backward()
    ref = gnc_ext.spherical_cross_entropy(H, W, y, tau=0.1, margin=0.2)
    assert abs(float(loss) - float(ref)) < 1e-2 * float(ref)
    assert Hh.grad.dtype == torch.float32 and torch.isfinite(Wh.grad).all()


def test_backward_called_inside_autocast():
    # the ops' bodies run with autocast off, so a backward inside the region still works
    H, W, y = _data()
    for strategy in ("recompute", "stored", "grad_in_forward"):
        with gnc_ext.config.override(sce_strategy=strategy):
            Hb, Wb = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                gnc_ext.spherical_cross_entropy(Hb, Wb, y).backward()
            assert torch.isfinite(Hb.grad).all() and torch.isfinite(Wb.grad).all()


def _train(autocast: bool, steps=30, seed=0):
    torch.manual_seed(seed)
    K, d = 50, 16
    protos = torch.randn(K, 12)
    net = torch.nn.Sequential(torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, d))
    crit = SphericalCELoss(K, d, tau=1 / 16, margin=0.2)
    opt = torch.optim.SGD(list(net.parameters()) + list(crit.parameters()), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        y = torch.randint(0, K, (64,), generator=g)
        x = protos[y] + 0.5 * torch.randn(64, 12, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = crit(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_autocast_training_loop_tracks_fp32():
    a, b = _train(True), _train(False)
    assert b[-1] < 0.5 * b[0]  # it does learn
    for la, lb in zip(a, b):
        assert abs(la - lb) <= 0.05 * lb + 0.05, (a, b)


@pytest.mark.parametrize("strategy", ["auto", "recompute", "stored", "grad_in_forward"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "no-autocast"])
def test_gradscaler_inf_passes_through_and_the_step_is_skipped(strategy, dtype):
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 32)
    crit = SphericalCELoss(100, 32, tau=1 / 32, margin=0.2)
    opt = torch.optim.SGD(list(net.parameters()) + list(crit.parameters()), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = torch.randn(32, 16), torch.randint(0, 100, (32,))
    w0, n0 = crit.weight.detach().clone(), net.weight.detach().clone()
    with gnc_ext.config.override(sce_strategy=strategy):
        with torch.autocast("cpu", dtype=torch.bfloat16 if dtype == torch.float32 else dtype,
                            enabled=dtype != torch.float32):
            loss = crit(net(x), y)
        # an inf reaching the loss's backward (what an fp16 overflow upstream gives)
        scaler.scale(loss * torch.tensor(math.inf)).backward()  # no exception inside backward
    assert not torch.isfinite(crit.weight.grad).all()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(crit.weight.detach(), w0) and torch.equal(net.weight.detach(), n0)  # step skipped
    assert scaler.get_scale() == 512.0
    # the next, finite step goes through
    with torch.autocast("cpu", dtype=torch.bfloat16 if dtype == torch.float32 else dtype,
                        enabled=dtype != torch.float32):
        loss = crit(net(x), y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(crit.weight.detach(), w0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_and_gradscaler(cuda_device, dtype):
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 32).to(cuda_device)
    crit = SphericalCELoss(1000, 32, tau=1 / 64, margin=0.5, margin_type="arcface", margin_grad="straight_through",
                           device=cuda_device)
    x, y = torch.randn(64, 16, device=cuda_device), torch.randint(0, 1000, (64,), device=cuda_device)
    ref = crit(net(x), y)
    with torch.autocast("cuda", dtype=dtype):
        loss = crit(net(x), y)
    assert abs(float(loss) - float(ref)) < 3e-2 * float(ref)
    opt = torch.optim.SGD(list(net.parameters()) + list(crit.parameters()), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    w0 = crit.weight.detach().clone()
    scaler.scale(loss * torch.tensor(math.inf, device=cuda_device)).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(crit.weight.detach(), w0) and scaler.get_scale() == 512.0


def test_compile_fullgraph_under_autocast():
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 32)
    crit = SphericalCELoss(200, 32, tau=1 / 32, margin=0.3, margin_type="arcface")

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return crit(net(x), y)

    x, y = torch.randn(32, 16), torch.randint(0, 200, (32,))
    eager = step(x, y)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y)
    compiled.backward()
    assert abs(float(compiled) - float(eager)) < 1e-5 * float(eager)
    assert crit.weight.grad.dtype == torch.float32 and torch.isfinite(crit.weight.grad).all()


# ------------------------------------------------------------------ int32 labels --
def test_int32_labels_everywhere():
    H, W, y = _data()
    y32 = y.int()
    for kw in (dict(), dict(margin=0.3, margin_type="arcface", margin_grad="straight_through", num_subcenters=1)):
        assert torch.equal(gnc_ext.spherical_cross_entropy(H, W, y32, **kw),
                           gnc_ext.spherical_cross_entropy(H, W, y, **kw))
    assert torch.equal(gnc_ext.hardmax_loss(H, W, y32), gnc_ext.hardmax_loss(H, W, y))
    sce = SphericalCELoss(40, 24)
    hm = HardMaxLoss(40, 24, classifier=sce)
    assert torch.equal(sce(H, y32), sce(H, y))
    assert torch.equal(hm(H, y32), hm(H, y))
    from gnc_ext.nn.sharded import ShardedSphericalCELoss
    sh = ShardedSphericalCELoss(40, 24)
    assert torch.equal(sh(H, y32), sh(H, y))
    # float labels stay a TypeError naming the labels
    with pytest.raises(TypeError, match="^y: expected dtype int64/int32"):
        gnc_ext.spherical_cross_entropy(H, W, y.float())
    for mod in (sce, hm, sh):
        with pytest.raises(TypeError, match="^labels: expected dtype int64/int32"):
            mod(H, y.float())


def test_options_object_is_validated_and_shared():
    from gnc_ext.losses import SCEOptions
    from gnc_ext.nn.sharded import ShardedSphericalCELoss
    o = SCEOptions(tau=0.1, margin=0.2)
    with pytest.raises(ValueError, match="^tau"):
        SCEOptions(tau=0.0)
    with pytest.raises(ValueError, match="^margin"):
        o.replace(margin=2.0)
    with pytest.raises(Exception):
        o.tau = 0.2  # frozen
    crit = SphericalCELoss(10, 4, tau=0.1, margin=0.2)
    assert crit.options == o and crit.tau == 0.1
    crit.margin = 0.25  # assigning an option validates it and updates the options in use
    assert crit.options.margin == 0.25
    with pytest.raises(ValueError, match="^margin"):
        crit.margin = -1.0
    sh = ShardedSphericalCELoss(10, 4, tau=0.1, margin=0.2)
    assert sh.options == o
    # the module and the function give the same loss through the same options
    H, y = torch.randn(6, 4), torch.randint(0, 10, (6,))
    assert torch.equal(crit(H, y), gnc_ext.spherical_cross_entropy(H, crit.weight, y, **{
        f: getattr(crit.options, f) for f in ("tau", "margin", "margin_type", "reduction")}))


def test_options_reach_a_plain_torch_reference():
    # an independent float64 check of the function through the options object (CosFace, mean)
    H, W, y = (t.double() if t.is_floating_point() else t for t in _data())
    got = gnc_ext.losses.sce_with_options(H, W, y, gnc_ext.losses.SCEOptions(tau=0.1, margin=0.3))
    S = F.normalize(H, dim=1) @ F.normalize(W, dim=1).T
    S[torch.arange(len(y)), y] -= 0.3
    assert abs(float(got) - float(F.cross_entropy(S / 0.1, y))) < 1e-12


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_sharded_loss_inside_autocast(sample_rate):
    from gnc_ext.nn.sharded import ShardedSphericalCELoss
    H, W, y = _data(k=2)
    kw = dict(tau=1 / 16, margin=0.5, margin_type="arcface", margin_grad="straight_through", num_subcenters=2,
              sample_rate=sample_rate)
    a, b = ShardedSphericalCELoss(40, 24, seed=3, **kw), ShardedSphericalCELoss(40, 24, seed=3, **kw)
    a.load_full_weight(W)
    b.load_full_weight(W)
    Ha, Hb = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
    ref = a(Ha, y)
    ref.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = b(Hb, y)
    got.backward()
    assert torch.equal(a.last_sample_index, b.last_sample_index) if sample_rate < 1 else True
    assert abs(float(got.detach()) - float(ref.detach())) < 3e-2 * float(ref.detach())
    assert b.weight.grad.dtype == torch.float32 and Hb.grad.dtype == torch.float32
    assert _cos(Hb.grad, Ha.grad) >= 0.999 and _cos(b.weight.grad, a.weight.grad) >= 0.999


def test_sharded_loss_passes_an_inf_upstream_gradient_through():
    from gnc_ext.nn.sharded import ShardedSphericalCELoss
    H, W, y = _data()
    crit = ShardedSphericalCELoss(40, 24, tau=1 / 32, margin=0.2)
    h = H.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(h, y)
    (loss * torch.tensor(math.inf)).backward()  # no exception inside backward
    assert not torch.isfinite(crit.weight.grad).all() and not torch.isfinite(h.grad).all()
