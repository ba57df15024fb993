"""ShardedSphericalCELoss equals single-process spherical_cross_entropy (loss and
gradients) for world sizes 2 and 3 with K not divisible by them (gloo on CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import gnc_ext
from gnc_ext.nn.sharded import ShardedSphericalCELoss, shard_range

WORKER = os.path.join(os.path.dirname(__file__), "_sharded_worker.py")


def _run(world, cfg, tmp_path):
    init = tmp_path / "init"
    procs, outs = [], []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for r in range(world):
        out = tmp_path / f"out{r}.json"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(init), str(out), json.dumps(cfg)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("cfg", [
    dict(K=7, d=5, counts=[4, 3, 5], tau=0.1, margin=0.0, margin_type="cosface", ls=0.0, reduction="mean"),
    dict(K=11, d=4, counts=[3, 3, 2], tau=0.05, margin=0.3, margin_type="arcface", ls=0.1, reduction="sum",
         ignore=True),
    dict(K=10, d=3, counts=[2, 4, 3], tau=1.0, margin=0.2, margin_type="cosface", ls=0.0, reduction="none"),
    dict(K=8, d=6, counts=[3, 4, 2], tau=1 / 64, margin=0.5, margin_type="arcface", ls=0.0, reduction="mean",
         margin_grad="straight_through", threshold=0.1, subcenters=3, ignore=True),
], ids=["plain-mean", "arcface-smooth-sum-ignore", "cosface-none", "insightface-arcface-filter-subcenters"])
def test_sharded_equals_single_process(world, cfg, tmp_path):
    res = _run(world, cfg, tmp_path)
    sizes = [r["shard"][1] for r in res]
    assert sum(sizes) == cfg["K"] and max(sizes) - min(sizes) <= 1
    for r in res:
        assert r["loss"] < 1e-9, r
        assert r["dH"] < 1e-9, r
        assert r["dW"] < 1e-9, r
        assert r["full_weight"] == 0.0


_RAGGED_PLAIN = dict(K=7, d=5, tau=0.1, margin=0.2, margin_type="cosface", ls=0.0, reduction="mean", int32=True)
_RAGGED_IF = dict(K=8, d=6, tau=1 / 64, margin=0.5, margin_type="arcface", ls=0.0, reduction="none",
                  margin_grad="straight_through", threshold=0.1, subcenters=2, ignore=True, sample_rate=0.5)


@pytest.mark.parametrize("world,counts,cfg", [
    (2, [0, 5], _RAGGED_PLAIN), (2, [4, 0], _RAGGED_IF), (3, [3, 0, 4], _RAGGED_IF), (3, [0, 0, 2], _RAGGED_PLAIN),
    (2, [0, 0], _RAGGED_PLAIN),
], ids=["w2-first-empty", "w2-last-empty-insightface", "w3-middle-empty-insightface", "w3-two-empty", "w2-all-empty"])
def test_sharded_ragged_and_empty_ranks(world, counts, cfg, tmp_path):
    # a rank with zero rows in a step (a ragged last batch): the variable-size gathers
    # give every rank the loss and gradients of the rows that exist, no hang
    res = _run(world, dict(cfg, counts=counts), tmp_path)
    assert [r["rows"] for r in res] == counts
    for r in res:
        assert r["loss"] < 1e-9 and r["dH"] < 1e-9 and r["dW"] < 1e-9, r


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_tiny_losses_keep_relative_accuracy(world, tmp_path):
    # features on their class weights at tau = 0.005: row losses ~1e-15 and below, which
    # the combine of the shards' non-target sums must keep to full relative accuracy
    cfg = dict(K=7, d=8, counts=[3, 2, 3], tau=0.005, margin=0.0, margin_type="cosface", ls=0.0,
               reduction="none", aligned=True)
    res = _run(world, cfg, tmp_path)
    for r in res:
        assert r["loss_min"] < 1e-12, r  # really in the regime where lse - z_y cancels
        assert r["loss_rel"] < 1e-9, r
        assert r["dH"] < 1e-9 and r["dW"] < 1e-9, r


def test_shard_ranges_partition():
    for K in (2, 7, 10, 101):
        for world in (1, 2, 3, 4):
            if K < world:
                continue
            spans = [shard_range(K, world, r) for r in range(world)]
            assert spans[0][0] == 0
            for (o1, s1), (o2, _) in zip(spans, spans[1:]):
                assert o1 + s1 == o2
            assert spans[-1][0] + spans[-1][1] == K


def test_single_process_equals_spherical_ce():
    torch.manual_seed(0)
    K, d = 9, 4
    crit = ShardedSphericalCELoss(K, d, tau=0.2, margin=0.1, dtype=torch.float64)
    W = crit.weight.detach().clone().requires_grad_(True)
    H = torch.randn(6, d, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 8, 3, 3, 5, 1])
    loss = crit(H, y)
    loss.backward()
    H2 = H.detach().clone().requires_grad_(True)
    ref = gnc_ext.spherical_cross_entropy(H2, W, y, tau=0.2, margin=0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(H.grad, H2.grad)
    torch.testing.assert_close(crit.weight.grad, W.grad)


def test_sampling_keeps_positives_and_takes_int_rate_times_shard():
    torch.manual_seed(1)
    crit = ShardedSphericalCELoss(50, 8, sample_rate=0.2, tau=0.1)
    H = torch.randn(6, 8)
    y = torch.tensor([0, 49, 7, 7, 20, 33])
    loss = crit(H, y)
    loss.backward()
    touched = (crit.weight.grad.abs().sum(1) > 0).nonzero().squeeze(1).tolist()
    assert set(y.tolist()) <= set(touched)
    idx = crit.last_sample_index
    assert idx.numel() == 10 and torch.equal(idx, idx.sort()[0])  # int(0.2 * 50), sorted (PartialFC_V2)
    assert set(touched) <= set(idx.tolist())
    assert torch.isfinite(loss)
    # more positives than int(rate · K_r): exactly the positives
    crit = ShardedSphericalCELoss(50, 8, sample_rate=0.05, tau=0.1)
    crit(H, y)
    assert crit.last_sample_index.tolist() == sorted(set(y.tolist()))
    # the same seed gives the same sample sequence
    a, b = (ShardedSphericalCELoss(50, 8, sample_rate=0.3, seed=4) for _ in range(2))
    for _ in range(2):
        a(H, y), b(H, y)
        assert torch.equal(a.last_sample_index, b.last_sample_index)


def test_sampled_loss_is_the_restricted_softmax_single_process():
    torch.manual_seed(2)
    crit = ShardedSphericalCELoss(40, 6, sample_rate=0.3, tau=0.1, margin=0.2, dtype=torch.float64)
    H = torch.randn(7, 6, dtype=torch.float64)
    y = torch.tensor([0, 39, 7, 7, 20, 33, -100])
    loss = crit(H, y)
    loss.backward()
    idx = crit.last_sample_index
    W = crit.weight.detach().clone().requires_grad_(True)
    y_ref = torch.where(y >= 0, torch.searchsorted(idx, y.clamp(min=0)), y)
    ref = gnc_ext.spherical_cross_entropy(H, W[idx], y_ref, tau=0.1, margin=0.2)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(crit.weight.grad, W.grad, rtol=0, atol=1e-13)


def test_sampling_is_exact_at_rate_one():
    """sample_rate=1 is the full softmax: identical to spherical_cross_entropy, and every
    class row gets gradient (nothing is sampled away)."""
    torch.manual_seed(3)
    crit = ShardedSphericalCELoss(30, 8, sample_rate=1.0, tau=0.1, margin=0.3, margin_type="arcface",
                                  dtype=torch.float64)
    H = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 30, (12,))
    W = crit.weight.detach().clone().requires_grad_(True)
    H2 = H.detach().clone().requires_grad_(True)
    loss = crit(H, y)
    loss.backward()
    ref = gnc_ext.spherical_cross_entropy(H2, W, y, tau=0.1, margin=0.3, margin_type="arcface")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(H.grad, H2.grad, rtol=0, atol=1e-13)
    torch.testing.assert_close(crit.weight.grad, W.grad, rtol=0, atol=1e-13)
    assert bool((crit.weight.grad.abs().sum(1) > 0).all()) and crit.last_sample_index is None


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("k", [1, 2])
def test_sampled_sharded_equals_restricted_softmax(world, k, tmp_path):
    cfg = dict(K=23, d=5, counts=[4, 3, 5], tau=0.1, margin=0.3, margin_type="cosface", ls=0.0,
               reduction="mean", sample_rate=0.4, subcenters=k, ignore=True)
    res = _run(world, cfg, tmp_path)
    for r in res:
        assert r["loss"] < 1e-12 and r["dH"] < 1e-12 and r["dW"] < 1e-12, r
        assert r["n_sampled"] is not None and sum(r["n_sampled"]) < cfg["K"], r
        assert r["sampled_rows_with_grad"] <= max(r["n_sampled"]) * k


def test_embedding_dim_name_and_deprecated_dim():
    crit = ShardedSphericalCELoss(num_classes=6, embedding_dim=4)
    assert crit.embedding_dim == 4 and crit.weight.shape == (6, 4)
    with pytest.warns(DeprecationWarning, match="embedding_dim"):
        old = ShardedSphericalCELoss(num_classes=6, dim=4)
    assert old.embedding_dim == 4 and old.dim == 4
    with pytest.raises(TypeError, match="dim"):
        ShardedSphericalCELoss(6, 4, dim=4)
    with pytest.raises(TypeError, match="embedding_dim"):
        ShardedSphericalCELoss(6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_shard_created_in_its_dtype(dtype):
    crit = ShardedSphericalCELoss(20, 16, dtype=dtype, num_subcenters=2, seed=5)
    assert crit.weight.dtype == dtype and crit.weight.shape == (40, 16)
    w = crit.weight.detach().double()
    assert bool(torch.isfinite(w).all()) and 0.7 < float(w.std()) < 1.3  # N(0, 1) entries
    assert torch.equal(crit.weight, ShardedSphericalCELoss(20, 16, dtype=dtype, num_subcenters=2, seed=5).weight)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        ShardedSphericalCELoss(1, 3)
    with pytest.raises(ValueError, match="tau"):
        ShardedSphericalCELoss(5, 3, tau=0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        ShardedSphericalCELoss(5, 3, sample_rate=0.0)
    with pytest.raises(ValueError, match="margin_type"):
        ShardedSphericalCELoss(5, 3, margin_type="sphereface")
    crit = ShardedSphericalCELoss(5, 3)
    with pytest.raises(ValueError, match="labels"):
        crit(torch.randn(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="features: expected width 3"):
        crit(torch.randn(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
    (dict(label_smoothing=None), TypeError, "label_smoothing"),
    (dict(label_smoothing="abc"), TypeError, "label_smoothing"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(ignore_index=1.7), TypeError, "ignore_index"),
    (dict(ignore_index=True), TypeError, "ignore_index"),
    (dict(ignore_index=2**63), ValueError, "ignore_index"),
    (dict(sample_rate="0.5"), TypeError, "sample_rate"),
    (dict(sample_rate=True), TypeError, "sample_rate"),
    (dict(sample_rate=float("nan")), ValueError, "sample_rate"),
    (dict(sample_rate=1.5), ValueError, "sample_rate"),
    (dict(reduction=["mean"]), ValueError, "reduction"),
    (dict(reduction="max"), ValueError, "reduction"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(seed=2.9), TypeError, "seed"),  # was silently truncated to 2
    (dict(seed=None), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(device="bogus"), ValueError, "device"),
    (dict(device="meta"), ValueError, "device"),
    (dict(tau=1e-300), ValueError, "tau"),  # was accepted: a loss of -inf
])
def test_constructor_validates(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        ShardedSphericalCELoss(5, 4, **kwargs)


def test_constructor_valid_arguments_and_seed_range():
    import numpy as np
    crit = ShardedSphericalCELoss(5, 4, label_smoothing=np.float32(0.5), ignore_index=np.int64(-1),
                                  sample_rate=1, device="cpu", dtype=torch.float64)
    assert crit.label_smoothing == 0.5 and crit.ignore_index == -1 and crit.sample_rate == 1.0
    assert type(crit.ignore_index) is int and crit.weight.dtype == torch.float64
    # label_smoothing = 1 is allowed, as in spherical_cross_entropy, and gives its loss
    torch.manual_seed(0)
    H, y = torch.randn(4, 4), torch.tensor([0, 1, 4, -100])
    crit = ShardedSphericalCELoss(5, 4, label_smoothing=1.0)
    torch.testing.assert_close(crit(H, y), gnc_ext.spherical_cross_entropy(H, crit.weight, y, label_smoothing=1.0))
    # the whole manual_seed range (negative seeds unchanged: manual_seed takes them mod 2**64)
    for seed in (-2**63, 2**64 - 1, np.int64(3)):
        ShardedSphericalCELoss(5, 4, seed=seed)
    torch.testing.assert_close(ShardedSphericalCELoss(5, 4, seed=-3).weight,
                               ShardedSphericalCELoss(5, 4, seed=2**64 - 3).weight)
