"""gnc_ext.nn loss modules: predict/logits against brute force, weight providers."""
import pytest
import torch
import torch.nn.functional as F

import gnc_ext
from gnc_ext.ops import tiles as TILES


def _brute_cos(H, W):
    return F.normalize(H.double(), dim=1) @ F.normalize(W.double(), dim=1).T


def test_spherical_ce_module_forward_matches_function():
    torch.manual_seed(0)
    crit = gnc_ext.nn.SphericalCELoss(300, 16, tau=0.1, margin=0.2, margin_type="cosface", label_smoothing=0.1)
    assert isinstance(crit.weight, torch.nn.Parameter) and crit.weight.shape == (300, 16)
    H = torch.randn(10, 16, requires_grad=True)
    y = torch.randint(0, 300, (10,))
    loss = crit(H, y)
    ref = gnc_ext.spherical_cross_entropy(H, crit.weight, y, tau=0.1, margin=0.2, label_smoothing=0.1)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert crit.weight.grad is not None and H.grad is not None
    assert "num_classes=300" in repr(crit)


def test_predict_equals_bruteforce_argmax(monkeypatch):
    monkeypatch.setattr(TILES, "TILE_BYTES", 4096)  # several ragged tiles
    monkeypatch.setattr(TILES, "CUDA_TILE_BYTES", 4096)
    torch.manual_seed(1)
    crit = gnc_ext.nn.SphericalCELoss(1003, 8)
    H = torch.randn(50, 8) * 5
    pred = crit.predict(H)
    assert pred.dtype == torch.int64 and pred.shape == (50,)
    S = _brute_cos(H, crit.weight.detach())
    assert torch.equal(pred, S.argmax(dim=1))
    # ties: duplicate the winning class at a higher index -> the lower index is returned
    W = crit.weight.detach().clone()
    W[1002] = W[pred[0]]
    crit.weight.data.copy_(W)
    assert int(crit.predict(H[:1])[0]) == int(pred[0])


def test_predict_mixed_dtypes_and_bad_weights(monkeypatch):
    """predict normalises W block by block (argmax_cosine_nw): bf16 features against fp32
    weights give the argmax of the bf16-rounded cosines; NaN weights are rejected by name."""
    monkeypatch.setattr(TILES, "TILE_BYTES", 4096)
    torch.manual_seed(4)
    crit = gnc_ext.nn.SphericalCELoss(700, 16)
    H = torch.randn(30, 16)
    pred = crit.predict(H.bfloat16())
    Wb = F.normalize(crit.weight.detach(), dim=1).bfloat16().float()
    S = H.bfloat16().float() @ Wb.T
    assert torch.equal(pred, S.argmax(dim=1))
    torch.library.opcheck(torch.ops.gnc_ext.argmax_cosine_nw.default, (H, crit.weight.detach(), 256))
    crit.weight.data[5, 3] = float("nan")
    with pytest.raises(ValueError, match="weight: contains NaN"):
        crit.predict(H)


def test_logits_chunked_equals_full():
    torch.manual_seed(2)
    crit = gnc_ext.nn.SphericalCELoss(500, 12, tau=0.07)
    H = torch.randn(9, 12)
    full = crit.logits(H, chunk=500)
    for c in (1, 7, 64, 499):
        torch.testing.assert_close(crit.logits(H, chunk=c), full)
    torch.testing.assert_close(full.double(), _brute_cos(H, crit.weight.detach()) / 0.07, atol=1e-5, rtol=1e-5)
    # no margin at inference: cross-entropy of the logits equals the margin-free loss
    y = torch.randint(0, 500, (9,))
    crit0 = gnc_ext.nn.SphericalCELoss(500, 12, tau=0.07)
    crit0.weight.data.copy_(crit.weight.data)
    torch.testing.assert_close(F.cross_entropy(full, y), crit0(H, y), atol=1e-5, rtol=1e-5)


def test_hardmax_module():
    torch.manual_seed(3)
    crit = gnc_ext.nn.HardMaxLoss(40, 6, reduction="mean")
    H = torch.randn(7, 6)
    y = torch.randint(0, 40, (7,))
    torch.testing.assert_close(crit(H, y), gnc_ext.hardmax_loss(H, crit.weight, y, reduction="mean"))
    torch.testing.assert_close(crit.logits(H).double(), _brute_cos(H, crit.weight.detach()), atol=1e-6, rtol=1e-6)
    assert torch.equal(crit.predict(H), crit.logits(H).argmax(dim=1))


class _EMAProvider(torch.nn.Module):
    """Stands in for a CMF classifier: W is a buffer updated outside autograd."""

    def __init__(self, K, d):
        super().__init__()
        self.register_buffer("weight", torch.randn(K, d))


def test_weight_provider_not_trained():
    torch.manual_seed(4)
    prov = _EMAProvider(30, 5)
    crit = gnc_ext.nn.SphericalCELoss(30, 5, classifier=prov)
    assert crit.weight is None and len(list(crit.parameters())) == 0
    H = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 30, (6,))
    loss = crit(H, y)
    loss.backward()
    torch.testing.assert_close(loss, gnc_ext.spherical_cross_entropy(H, prov.weight, y))
    assert prov.weight.grad is None and H.grad is not None
    # an update of the provider's weights is seen by the next call
    with torch.no_grad():
        prov.weight.mul_(0.0).add_(torch.eye(30, 5))
    torch.testing.assert_close(crit.predict(torch.eye(5)), torch.arange(5))
    # a callable provider works too
    crit2 = gnc_ext.nn.HardMaxLoss(30, 5, classifier=lambda: prov.weight)
    torch.testing.assert_close(crit2(H, y), gnc_ext.hardmax_loss(H, prov.weight, y))


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        gnc_ext.nn.SphericalCELoss(1, 4)
    with pytest.raises(TypeError, match="num_classes"):
        gnc_ext.nn.SphericalCELoss(3.5, 4)
    with pytest.raises(ValueError, match="embedding_dim"):
        gnc_ext.nn.HardMaxLoss(3, 0)
    with pytest.raises(ValueError, match="tau"):
        gnc_ext.nn.SphericalCELoss(3, 4, tau=0)
    with pytest.raises(ValueError, match="margin"):
        gnc_ext.nn.SphericalCELoss(3, 4, margin=3.0, margin_type="arcface")
    with pytest.raises(TypeError, match="classifier"):
        gnc_ext.nn.SphericalCELoss(3, 4, classifier=5)
    crit = gnc_ext.nn.SphericalCELoss(3, 4, classifier=_EMAProvider(4, 4))
    with pytest.raises(ValueError, match=r"classifier: expected weights of shape \(3, 4\)"):
        crit(torch.randn(2, 4), torch.tensor([0, 1]))
    crit = gnc_ext.nn.SphericalCELoss(3, 4)
    with pytest.raises(ValueError, match="features: expected 4 columns"):
        crit.predict(torch.randn(2, 5))
    with pytest.raises(ValueError, match="chunk"):
        crit.logits(torch.randn(2, 4), chunk=0)
    with pytest.raises(ValueError, match="y: labels"):
        crit(torch.randn(2, 4), torch.tensor([0, 3]))


def test_module_compile_training_step():
    torch.manual_seed(5)
    crit = gnc_ext.nn.SphericalCELoss(64, 8, tau=0.1, margin=0.3, margin_type="arcface")
    net = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(list(net.parameters()) + list(crit.parameters()), lr=0.1)
    x = torch.randn(16, 8)
    y = torch.randint(0, 64, (16,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(x, y):
        return crit(net(x), y)

    first = float(loss_fn(x, y))
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    assert float(loss_fn(x, y)) < first


def test_module_on_cuda(cuda_device):
    torch.manual_seed(6)
    crit = gnc_ext.nn.SphericalCELoss(2000, 32).to(cuda_device)
    H = torch.randn(40, 32, device=cuda_device)
    S = _brute_cos(H.cpu(), crit.weight.detach().cpu())
    assert (crit.predict(H).cpu() == S.argmax(dim=1)).float().mean() > 0.99
    torch.testing.assert_close(crit.logits(H, chunk=333).cpu().double(), S / 0.05, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("cls", [gnc_ext.nn.SphericalCELoss, gnc_ext.nn.HardMaxLoss])
def test_predict_rejects_nonfinite_features(cls):
    crit = cls(5, 4)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, 4)
        x[1, 2] = bad  # was: class -1 (NaN) or an arbitrary class (Inf)
        with pytest.raises(ValueError, match="features: contains NaN or Inf"):
            crit.predict(x)
        with pytest.raises(ValueError, match="features: contains NaN or Inf"):
            crit.predict(x.double().T.contiguous().T)  # any layout, fp64
    # large finite features are fine: predict is scale-invariant per row
    x = torch.randn(3, 4)
    torch.testing.assert_close(crit.predict(x * 1e37), crit.predict(x))
    gnc_ext.config.check_finite = False
    try:
        crit.predict(torch.full((2, 4), float("nan")))  # the switch is honoured
    finally:
        gnc_ext.config.check_finite = True


def test_logits_name_features_and_weight():
    crit = gnc_ext.nn.SphericalCELoss(5, 4)
    x = torch.randn(3, 4)
    x[1] = float("nan")
    with pytest.raises(ValueError, match=r"^features: contains NaN or Inf"):  # was "X: ..."
        crit.logits(x)
    crit.weight.data[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^weight: contains NaN or Inf"):
        crit.logits(torch.randn(3, 4))
    hm = gnc_ext.nn.HardMaxLoss(5, 4, classifier=lambda: torch.zeros(5, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^weight: expected dtype"):
        hm.logits(torch.randn(3, 4))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(device="bogus"), ValueError, "device"),
    (dict(device="meta"), ValueError, "device"),
    (dict(device=1.5), TypeError, "device"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(reduction="bogus"), ValueError, "reduction"),
    (dict(reduction=["mean"]), ValueError, "reduction"),
    (dict(normalize="yes"), TypeError, "normalize"),
    (dict(normalize=1), TypeError, "normalize"),
])
@pytest.mark.parametrize("cls", [gnc_ext.nn.SphericalCELoss, gnc_ext.nn.HardMaxLoss])
def test_module_constructor_validates(cls, kwargs, exc, name):
    if cls is gnc_ext.nn.HardMaxLoss and kwargs == dict(reduction="bogus"):
        kwargs = dict(reduction="average")
    with pytest.raises(exc, match=rf"^{name}: "):
        cls(5, 4, **kwargs)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(label_smoothing=5.0), ValueError, "label_smoothing"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing"),
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
    (dict(label_smoothing=True), TypeError, "label_smoothing"),
    (dict(ignore_index="x"), TypeError, "ignore_index"),
    (dict(ignore_index=1.7), TypeError, "ignore_index"),
    (dict(ignore_index=2**63), ValueError, "ignore_index"),
    (dict(reduction="max"), ValueError, "reduction"),  # HardMax's, not spherical CE's
    (dict(tau=1e-12), ValueError, "tau"),  # below the functional API's temperature floor
])
def test_spherical_module_constructor_validates(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        gnc_ext.nn.SphericalCELoss(5, 4, **kwargs)


def test_module_constructor_accepts_valid_arguments():
    import numpy as np
    crit = gnc_ext.nn.SphericalCELoss(5, 4, label_smoothing=np.float32(0.25), ignore_index=np.int64(-1),
                                      reduction="sum", normalize=False, dtype=torch.float64, device="cpu")
    assert crit.label_smoothing == 0.25 and type(crit.label_smoothing) is float
    assert crit.ignore_index == -1 and type(crit.ignore_index) is int
    assert crit.weight.dtype == torch.float64 and crit.weight.device.type == "cpu"
    assert gnc_ext.nn.SphericalCELoss(5, 4, label_smoothing=1).label_smoothing == 1.0
    assert gnc_ext.nn.HardMaxLoss(5, 4, dtype=torch.bfloat16, device=torch.device("cpu")).weight.dtype == torch.bfloat16
    assert gnc_ext.nn.HardMaxLoss(5, 4, reduction="none").reduction == "none"


def test_subcenter_weight_provider_shape_and_logits():
    """With num_subcenters=k a weight provider must supply K·k rows (class-major); logits
    are the per-class max over the sub-centres divided by τ."""
    torch.manual_seed(9)

    class Provider:
        weight = torch.randn(40, 6, dtype=torch.float64)

    crit = gnc_ext.nn.SphericalCELoss(20, 6, tau=0.5, num_subcenters=2, classifier=Provider())
    H = torch.randn(5, 6, dtype=torch.float64)
    ref = (_brute_cos(H, Provider.weight).view(5, 20, 2).amax(2)) / 0.5
    torch.testing.assert_close(crit.logits(H, chunk=7), ref)
    assert torch.equal(crit.predict(H), ref.argmax(1))
    Provider.weight = torch.randn(20, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="classifier: expected weights of shape \\(40, 6\\)"):
        crit(H, torch.zeros(5, dtype=torch.int64))
