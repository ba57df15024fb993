import pytest
import torch

from gnc_ext.nn.cmf import CMFClassifier


def _reference_ema(W0, batches, beta, K):
    """Independent loop-based EMA of normalised batch class means (paper App. B)."""
    W = W0.clone().double()
    seen = [False] * K
    for H, y in batches:
        Hn = H.double() / H.double().norm(dim=1, keepdim=True)
        for k in range(K):
            rows = [i for i in range(len(y)) if int(y[i]) == k]
            if not rows:
                continue
            m = sum(Hn[i] for i in rows) / len(rows)
            v = m if not seen[k] else beta * W[k] + (1 - beta) * m
            W[k] = v / v.norm()
            seen[k] = True
    return W


def test_cmf_matches_reference_ema(device):
    K, d, beta = 7, 5, 0.9
    g = torch.Generator().manual_seed(3)
    cmf = CMFClassifier(K, d, momentum=beta, seed=1, device=device)
    W0 = cmf.weight.detach().cpu().clone()
    batches = []
    for step in range(6):
        B = 12
        H = torch.randn(B, d, generator=g)
        y = torch.randint(0, K - 1, (B,), generator=g)  # class K-1 never appears
        batches.append((H, y))
        cmf.update(H.to(device), y.to(device))
    ref = _reference_ema(W0, batches, beta, K)
    torch.testing.assert_close(cmf.weight.cpu().double(), ref, atol=1e-6, rtol=1e-6)
    # the absent class keeps its initial row
    torch.testing.assert_close(cmf.weight[K - 1].cpu(), W0[K - 1])
    assert bool(cmf.seen[: K - 1].all()) and not bool(cmf.seen[K - 1])
    assert int(cmf.num_updates) == 6
    torch.testing.assert_close(cmf.weight.norm(dim=1).cpu(), torch.ones(K), atol=1e-6, rtol=0)


def test_cmf_without_warm_start_is_plain_ema():
    K, d, beta = 3, 4, 0.5
    cmf = CMFClassifier(K, d, momentum=beta, warm_start=False, seed=0)
    W0 = cmf.weight.clone().double()
    H = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    y = torch.tensor([0, 0])
    cmf.update(H, y)
    m = torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64)
    v = beta * W0[0] + (1 - beta) * m
    torch.testing.assert_close(cmf.weight[0].double(), v / v.norm(), atol=1e-6, rtol=1e-6)


def test_cmf_state_dict_roundtrip_and_forward_semantics():
    cmf = CMFClassifier(4, 3, seed=0)
    H, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = cmf.weight.clone()
    w = cmf(H, y)  # returns the weight before the update, then updates
    torch.testing.assert_close(w, before)
    assert not torch.equal(cmf.weight, before)
    other = CMFClassifier(4, 3, seed=5)
    other.load_state_dict(cmf.state_dict())
    torch.testing.assert_close(other.weight, cmf.weight)
    assert torch.equal(other.seen, cmf.seen)
    cmf.eval()
    w2 = cmf(H, y)
    torch.testing.assert_close(w2, cmf.weight)  # no update in eval mode
    assert list(dict(cmf.named_parameters())) == []


def test_cmf_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        CMFClassifier(1, 3)
    with pytest.raises(ValueError, match="momentum"):
        CMFClassifier(3, 3, momentum=1.0)
    cmf = CMFClassifier(3, 2)
    with pytest.raises(ValueError, match="features: expected width 2"):
        cmf.update(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels: expected values in"):
        cmf.update(torch.randn(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="features: contains NaN"):
        cmf.update(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels: expected 2 labels"):
        cmf.update(torch.randn(2, 2), torch.tensor([0]))
    with pytest.raises(TypeError, match="labels"):
        cmf.update(torch.randn(2, 2), torch.tensor([0.0, 1.0]))


def test_cmf_plugs_into_spherical_ce_loss():
    import gnc_ext

    K, d = 6, 4
    cmf = CMFClassifier(K, d, seed=2)
    crit = gnc_ext.nn.SphericalCELoss(K, d, tau=0.1, classifier=cmf)
    H = torch.randn(10, d, requires_grad=True)
    y = torch.arange(10) % K
    loss = crit(H, y)
    ref = gnc_ext.spherical_cross_entropy(H, cmf.weight, y, tau=0.1)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert H.grad is not None and cmf.weight.grad is None  # W is not trained
    cmf.update(H.detach(), y)
    loss2 = crit(H, y)  # the provider's updated weight is read at every call
    torch.testing.assert_close(loss2, gnc_ext.spherical_cross_entropy(H, cmf.weight, y, tau=0.1))
    assert not torch.allclose(loss2, loss)


@pytest.mark.parametrize("normalize_features", [False, True])
def test_cmf_huge_finite_features_keep_unit_rows(normalize_features):
    """|x| >= ~1e154 overflowed the float64 norm (zero row) or the class sum (NaN row)."""
    f64 = torch.float64
    cmf = CMFClassifier(3, 2, normalize_features=normalize_features, dtype=f64)
    cmf.update(torch.tensor([[1e200, 1e200]], dtype=f64), torch.tensor([0]))
    torch.testing.assert_close(cmf.weight[0], torch.full((2,), 0.5 ** 0.5, dtype=f64))
    cmf = CMFClassifier(3, 2, normalize_features=normalize_features, dtype=f64)
    cmf.update(torch.full((2, 2), 1e308, dtype=f64), torch.tensor([0, 0]))
    torch.testing.assert_close(cmf.weight[0], torch.full((2,), 0.5 ** 0.5, dtype=f64))
    # EMA after the warm start; small and huge rows in one batch; rows cancelling exactly
    w0, w2 = cmf.weight[0].clone(), cmf.weight[2].clone()
    H = torch.tensor([[-1e308, 1e308], [1.0, 3.0], [1e300, 0.0], [-1e300, 0.0]], dtype=f64)
    cmf.update(H, torch.tensor([0, 1, 2, 2]))
    mean0 = torch.tensor([-1.0, 1.0], dtype=f64) * (0.5 ** 0.5 if normalize_features else 1e308)
    v = 0.9 * w0 + 0.1 * mean0
    v = v / v.abs().max()  # the reference's own norm must not overflow
    torch.testing.assert_close(cmf.weight[0], v / v.norm())
    torch.testing.assert_close(cmf.weight[2], w2)  # the rows cancel: the (random) row is kept
    torch.testing.assert_close(cmf.weight[1], torch.tensor([1.0, 3.0], dtype=f64) / 10 ** 0.5)
    assert bool(torch.isfinite(cmf.weight).all())
    torch.testing.assert_close(cmf.weight.norm(dim=1), torch.ones(3, dtype=f64))
    # huge rows in a float32 buffer
    cmf = CMFClassifier(2, 3, normalize_features=normalize_features, warm_start=False, momentum=0.0)
    cmf.update(torch.tensor([[3e38, -3e38, 1.0], [3e38, 3e38, 0.0]]), torch.tensor([1, 1]))
    torch.testing.assert_close(cmf.weight[1], torch.tensor([1.0, 0.0, 0.0]))


def test_cmf_nonfinite_features_leave_state_unchanged():
    cmf = CMFClassifier(3, 2, normalize_features=False, dtype=torch.float64)
    before = {k: v.clone() for k, v in cmf.state_dict().items()}
    for bad in (float("inf"), -float("inf"), float("nan")):
        with pytest.raises(ValueError, match="features: contains NaN or Inf"):
            cmf.update(torch.tensor([[1.0, bad]], dtype=torch.float64), torch.tensor([0]))
    for k, v in cmf.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed="a"), TypeError, "seed"),
    (dict(seed=2**70), ValueError, "seed"),
    (dict(seed=-2**63 - 1), ValueError, "seed"),
    (dict(device="bogus"), ValueError, "device"),
    (dict(device="meta"), ValueError, "device"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(dtype=torch.float16), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(dtype=None), TypeError, "dtype"),
    (dict(normalize_features="no"), TypeError, "normalize_features"),
    (dict(warm_start="no"), TypeError, "warm_start"),
    (dict(warm_start=1), TypeError, "warm_start"),
])
def test_cmf_constructor_validates(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        CMFClassifier(5, 4, **kwargs)


def test_cmf_constructor_accepts_valid_seeds():
    import numpy as np
    for seed in (None, 0, -2**63, 2**64 - 1, np.int64(7)):
        cmf = CMFClassifier(5, 4, seed=seed, device="cpu", dtype=torch.float64)
        torch.testing.assert_close(cmf.weight.norm(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(CMFClassifier(5, 4, seed=np.int64(7)).weight, CMFClassifier(5, 4, seed=7).weight)
