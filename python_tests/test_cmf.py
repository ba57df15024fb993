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
