"""gnc_ext.metrics: GNC1/GNC3/NCC against float64 numpy implementations of the paper's
formulas written here (independent of the accumulator's shifted-data algorithm)."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import gnc_ext
from conftest import package_subprocess_env
import gnc_ext._engine
from gnc_ext.metrics import GNCAccumulator, evaluate

EPS64 = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- reference
def ref_gnc(H, y, K, *, normalize=True, centered=False, rtol=None, W=None):
    """The paper's formulas in float64 numpy, two-pass (means, then deviations)."""
    H = np.asarray(H, dtype=np.float64)
    y = np.asarray(y)
    if normalize:
        H = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
    N, d = H.shape
    counts = np.bincount(y, minlength=K)
    present = counts > 0
    means = np.zeros((K, d))
    for k in np.flatnonzero(present):
        means[k] = H[y == k].mean(0)
    dev = H - means[y]
    SW = dev.T @ dev / N
    M = means[present]
    if centered:
        M = M - M.mean(0)
    Kp = int(present.sum())
    SB = M.T @ M / Kp
    if rtol is None:
        rtol = max(d, Kp) * EPS64
    gnc1 = float(np.trace(SW @ np.linalg.pinv(SB, rcond=rtol, hermitian=True))) / Kp
    spread = np.full(K, np.nan)
    for k in np.flatnonzero(present):
        spread[k] = (np.linalg.norm(dev[y == k], axis=1) ** 2).mean()
    out = {"gnc1": gnc1, "means": means, "counts": counts, "SW": SW, "SB": SB, "spread": spread,
           "present": present, "H": H}
    if W is not None:
        Wn = np.asarray(W, np.float64)
        Wn = Wn / np.linalg.norm(Wn, axis=1, keepdims=True)
        out["gnc3"] = float(np.mean(1.0 - (Wn * means).sum(1)[present]))
    return out


def rel(a, b):
    return abs(a - b) / abs(b)


def collapsed_data(K, d, n, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.arange(K).repeat_interleave(n)
    H = mu[y] + spread * torch.randn(K * n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(K * n, generator=g)
    return H[perm].float(), y[perm]


def random_data(K, d, N, seed=0, dtype=torch.float32, mu_seed=None):
    g = torch.Generator().manual_seed(seed if mu_seed is None else mu_seed)
    mu = 0.7 * torch.randn(K, d, generator=g, dtype=torch.float64)
    if mu_seed is not None:
        g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    H = mu[y] + torch.randn(N, d, generator=g, dtype=torch.float64)
    return H.to(dtype), y


def feed(acc, H, y, sizes, device="cpu"):
    s = 0
    i = 0
    while s < H.shape[0]:
        b = sizes[i % len(sizes)]
        acc.update(H[s:s + b].to(device), y[s:s + b].to(device))
        s += b
        i += 1
    return acc


# ----------------------------------------------------------------------------- GNC1
@pytest.mark.parametrize("centered", [False, True])
def test_gnc1_random_matches_reference(device, centered):
    K, d, N = 20, 16, 700
    H, y = random_data(K, d, N, seed=1)
    acc = feed(GNCAccumulator(K, d, device=device), H, y, [64, 1, 129], device)
    r = acc.compute(centered=centered)
    ref = ref_gnc(H, y, K, centered=centered)
    assert r.centered is centered
    assert rel(r.gnc1, ref["gnc1"]) < 1e-10
    assert torch.equal(r.counts, torch.as_tensor(ref["counts"]))
    np.testing.assert_allclose(r.class_mean_norms.numpy(), np.linalg.norm(ref["means"], axis=1), rtol=1e-12)
    np.testing.assert_allclose(r.within_class_spread.numpy(), ref["spread"], rtol=1e-10)
    assert rel(r.trace_sigma_w, np.trace(ref["SW"])) < 1e-10
    assert rel(r.trace_sigma_b, np.trace(ref["SB"])) < 1e-12
    assert r.worst_by_spread.tolist() == list(np.argsort(-ref["spread"], kind="stable")[:10])
    assert r.sigma_b_rank == (K - 1 if centered and K <= d else min(K, d))
    assert r.pinv_cutoff == pytest.approx(r.pinv_rtol * np.linalg.eigvalsh(ref["SB"]).max(), rel=1e-10)


def test_gnc1_no_normalize_and_fp64_input():
    K, d, N = 12, 9, 300
    H, y = random_data(K, d, N, seed=2, dtype=torch.float64)
    r = feed(GNCAccumulator(K, d, normalize=False), H, y, [50]).compute()
    assert rel(r.gnc1, ref_gnc(H, y, K, normalize=False)["gnc1"]) < 1e-10
    assert not r.normalize


def test_gnc1_nearly_collapsed_where_naive_fp32_fails():
    """Spread 1e-6 around unit class means, fp32 features, K > d: the accumulator matches
    the float64 two-pass reference to 1e-6 while the naive fp32 one-pass formula
    E[hhᵀ] − μμᵀ is off by orders of magnitude."""
    K, d, n = 60, 24, 8
    H, y = collapsed_data(K, d, n, 1e-6, seed=3)
    acc = feed(GNCAccumulator(K, d), H, y, [100, 7, 33])
    r = acc.compute()
    ref = ref_gnc(H, y, K)
    assert 0 < ref["gnc1"] < 1e-9  # really collapsed
    assert rel(r.gnc1, ref["gnc1"]) <= 1e-6
    np.testing.assert_allclose(r.within_class_spread.numpy(), ref["spread"], rtol=1e-6)

    # the naive one-pass formula in fp32 on the same (normalised) features
    Hn = torch.as_tensor(ref["H"]).float()
    N = Hn.shape[0]
    sums = torch.zeros(K, d).index_add_(0, y, Hn)
    cnt = torch.bincount(y, minlength=K).float()
    mu = sums / cnt[:, None]
    second = Hn.T @ Hn / N
    SW_naive = second - (mu.T * (cnt / N)) @ mu
    SBp = np.linalg.pinv(ref["SB"], rcond=max(d, K) * EPS64, hermitian=True)
    naive32 = float(np.trace(SW_naive.double().numpy() @ SBp)) / K
    assert rel(naive32, ref["gnc1"]) > 10.0, naive32  # badly wrong (often even negative)


def test_gnc1_collapsed_cuda(cuda_device):
    K, d, n = 60, 24, 8
    H, y = collapsed_data(K, d, n, 1e-6, seed=4)
    r = feed(GNCAccumulator(K, d, device=cuda_device), H, y, [100, 7, 33], cuda_device).compute()
    assert rel(r.gnc1, ref_gnc(H, y, K)["gnc1"]) <= 1e-6


def test_low_precision_features_accepted(device):
    K, d, N = 10, 16, 200
    H, y = random_data(K, d, N, seed=5)
    for dt in (torch.bfloat16, torch.float16):
        Hl = H.to(dt)
        r = feed(GNCAccumulator(K, d, device=device), Hl, y, [64], device).compute()
        assert rel(r.gnc1, ref_gnc(Hl.float(), y, K)["gnc1"]) < 1e-9


# ----------------------------------------------------------------------------- invariance
def _result_vector(r):
    return np.concatenate([[r.gnc1, r.trace_sigma_w, r.trace_sigma_b], r.class_mean_norms.numpy(),
                           r.within_class_spread.numpy()])


def test_batch_split_and_merge_order_independent(device):
    K, d, N = 25, 12, 900
    H, y = collapsed_data(K, d, N // K, 1e-3, seed=6)
    base = _result_vector(feed(GNCAccumulator(K, d, device=device), H, y, [N], device).compute())
    for sizes in ([1], [7, 300, 2], [256]):
        v = _result_vector(feed(GNCAccumulator(K, d, device=device), H, y, sizes, device).compute())
        np.testing.assert_allclose(v, base, rtol=1e-9)
    # three shards, merged in different orders (and one shard alone in a class)
    cuts = [0, 100, 450, N]
    parts = [feed(GNCAccumulator(K, d, device=device), H[a:b], y[a:b], [64], device)
             for a, b in zip(cuts[:-1], cuts[1:])]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        m = GNCAccumulator(K, d, device=device)
        for i in order:
            m.merge(parts[i])
        np.testing.assert_allclose(_result_vector(m.compute()), base, rtol=1e-9)
    # merged states keep accepting updates correctly
    m = GNCAccumulator(K, d, device=device).merge(parts[0])
    feed(m, H[100:], y[100:], [333], device)
    np.testing.assert_allclose(_result_vector(m.compute()), base, rtol=1e-9)


def test_merge_collapsed_keeps_precision():
    K, d, n = 40, 16, 10
    H, y = collapsed_data(K, d, n, 1e-6, seed=7)
    a = feed(GNCAccumulator(K, d), H[:150], y[:150], [50])
    b = feed(GNCAccumulator(K, d), H[150:], y[150:], [50])
    r = a.merge(b).compute()
    assert rel(r.gnc1, ref_gnc(H, y, K)["gnc1"]) <= 1e-6


def test_state_dict_round_trip(tmp_path):
    K, d, N = 15, 10, 400
    H, y = random_data(K, d, N, seed=8)
    a = feed(GNCAccumulator(K, d), H[:200], y[:200], [33])
    path = tmp_path / "acc.pt"
    torch.save(a.state_dict(), path)
    b = GNCAccumulator(K, d).load_state_dict(torch.load(path))
    feed(a, H[200:], y[200:], [40])
    feed(b, H[200:], y[200:], [40])
    ra, rb = a.compute(), b.compute()
    assert ra.gnc1 == rb.gnc1
    np.testing.assert_array_equal(_result_vector(ra), _result_vector(rb))
    assert rel(ra.gnc1, ref_gnc(H, y, K)["gnc1"]) < 1e-10
    with pytest.raises(ValueError, match="num_classes"):
        GNCAccumulator(K + 1, d).load_state_dict(a.state_dict())
    bad = a.state_dict()
    bad["dsum"] = bad["dsum"][:, :3]
    with pytest.raises(ValueError, match="dsum"):
        GNCAccumulator(K, d).load_state_dict(bad)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path, out_name, *extra):
    """Run _metrics_dist_worker.py as ranks 0 and 1 (gloo) on tmp_path/data.pt; both must exit 0."""
    port = _free_port()
    worker = os.path.join(os.path.dirname(__file__), "_metrics_dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    root = os.path.dirname(os.path.dirname(os.path.abspath(gnc_ext.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, worker, str(r), "2", str(port), str(tmp_path / "data.pt"),
                               str(tmp_path / out_name), *extra], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]


def test_sync_gloo_two_processes(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    K, d, n = 30, 12, 12
    H, y = collapsed_data(K, d, n, 1e-6, seed=9)
    y[y == 3] = 4  # class 3 empty on every rank
    torch.save({"H": H, "y": y, "K": K}, tmp_path / "data.pt")
    _run_two_ranks(tmp_path, "out.pt")
    got = torch.load(tmp_path / "out.pt")
    ref = ref_gnc(H, y, K)
    assert torch.equal(got["counts"], torch.as_tensor(ref["counts"]))
    assert rel(got["gnc1"], ref["gnc1"]) <= 1e-6
    ref_norms = np.where(ref["present"], np.linalg.norm(ref["means"], axis=1), np.nan)
    np.testing.assert_allclose(got["norms"].numpy(), ref_norms, rtol=1e-12)  # NaN for the empty class
    np.testing.assert_allclose(got["spread"].numpy(), ref["spread"], rtol=1e-6)
    # synced state behaves like a single-process accumulator over all data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = feed(GNCAccumulator(K, d), H, y, [64]).compute()
        synced = GNCAccumulator(K, d).load_state_dict(got["state"]).compute()
    np.testing.assert_allclose(_result_vector(synced), _result_vector(single), rtol=1e-6)


def test_sync_refuses_mismatched_ranks(tmp_path):
    """Rank 1 builds its accumulator with normalize=False: sync() raises the same
    ValueError on both ranks (and neither hangs) before any state is exchanged."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    H, y = collapsed_data(6, 4, 5, 1e-3, seed=1)
    torch.save({"H": H, "y": y, "K": 6}, tmp_path / "data.pt")
    _run_two_ranks(tmp_path, "out", "mismatch")
    for r in range(2):
        msg = (tmp_path / f"out.{r}").read_text()
        assert msg.startswith("sync: the ranks' accumulators differ (normalize ranges over [0, 1])"), msg


def test_sync_without_process_group_is_noop():
    K, d = 5, 4
    H, y = random_data(K, d, 50, seed=10)
    a = feed(GNCAccumulator(K, d), H, y, [50])
    before = a.state_dict()
    a.sync()
    after = a.state_dict()
    for k in ("counts", "shift", "dsum", "sqsum", "scatter"):
        assert torch.equal(before[k], after[k])


# ----------------------------------------------------------------------------- empty classes
def test_empty_classes_excluded_and_reported():
    K, d, N = 20, 8, 300
    H, y = random_data(K, d, N, seed=11)
    y[(y == 2) | (y == 17)] = 5
    acc = feed(GNCAccumulator(K, d), H, y, [100])
    with pytest.warns(RuntimeWarning, match="2 of 20 classes have no samples"):
        r = acc.compute()
    assert r.empty_classes.tolist() == [2, 17]
    assert r.num_nonempty == 18
    assert rel(r.gnc1, ref_gnc(H, y, K)["gnc1"]) < 1e-10
    assert torch.isnan(r.class_mean_norms[2]) and torch.isnan(r.within_class_spread[17])
    assert 2 not in r.worst_by_spread.tolist() and 17 not in r.worst_by_spread.tolist()
    # NCC never predicts an empty class
    pred = acc.ncc_predict(torch.randn(500, d))
    assert not bool(((pred == 2) | (pred == 17)).any())


# ----------------------------------------------------------------------------- GNC3
def test_gnc3_matches_formula(device):
    K, d, N = 18, 10, 400
    H, y = random_data(K, d, N, seed=12)
    y[y == 4] = 0
    W = torch.randn(K, d) * 3.0
    acc = feed(GNCAccumulator(K, d, device=device), H, y, [77], device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = acc.compute(W.to(device), gnc2=False)
    assert rel(r.gnc3, ref_gnc(H, y, K, W=W)["gnc3"]) < 1e-12
    assert r.gnc2 is None


def test_gnc3_zero_for_self_dual_collapse():
    K, d, n = 8, 12, 5
    H, y = collapsed_data(K, d, n, 0.0, seed=13)
    acc = feed(GNCAccumulator(K, d), H, y, [40])
    means = torch.stack([torch.nn.functional.normalize(H[y == k].double(), dim=1).mean(0) for k in range(K)])
    r = acc.compute(means * 2.5, gnc2=False)
    assert abs(r.gnc3) < 1e-7


# ----------------------------------------------------------------------------- NCC
def _brute_force_ncc(H, y, K, Q, normalize=True):
    ref = ref_gnc(H, y, K, normalize=normalize)
    Qd = np.asarray(Q, np.float64)
    if normalize:
        Qd = Qd / np.maximum(np.linalg.norm(Qd, axis=1, keepdims=True), 1e-12)
    D = ((Qd[:, None, :] - ref["means"][None, :, :]) ** 2).sum(-1)
    D[:, ~ref["present"]] = np.inf
    order = np.sort(D, axis=1)
    return D.argmin(1), order[:, 1] - order[:, 0]


@pytest.mark.parametrize("normalize", [True, False])
def test_ncc_matches_brute_force(device, normalize, monkeypatch):
    monkeypatch.setattr(gnc_ext._engine, "TILE_BUDGET_BYTES", 4 * 64 * 100)  # force several tiles
    K, d, N = 200, 16, 1500
    dt = torch.float64 if device == "cpu" else torch.float32
    H, y = random_data(K, d, N, seed=14, dtype=dt)
    acc = feed(GNCAccumulator(K, d, device=device, normalize=normalize), H, y, [500], device)
    Q, yq = random_data(K, d, 700, seed=15, dtype=dt, mu_seed=14)
    want, margin = _brute_force_ncc(H, y, K, Q, normalize)
    got = acc.ncc_predict(Q.to(device), row_block=256).cpu().numpy()
    if dt == torch.float64:
        np.testing.assert_array_equal(got, want)
    else:  # fp32 GEMM: exact wherever the decision is not a near-tie
        safe = margin > 1e-4
        assert safe.mean() > 0.95
        np.testing.assert_array_equal(got[safe], want[safe])
    acc_val = acc.ncc_accuracy(Q.to(device), yq.to(device))
    assert acc_val == pytest.approx(float((got == yq.numpy()).mean()), abs=1e-12)
    assert 0.05 < acc_val < 1.0  # a non-trivial problem


def test_ncc_screened_is_exact(monkeypatch, emulate_tf32_tile):
    """TF32-screened NCC (the CUDA default for fp32; forced here on the CPU with TF32
    truncation emulated): equal to the float64 brute force wherever the decision is not a
    float32-level near tie, although plain argmax of the TF32 scores is wrong on some of
    those rows (so the exact re-scoring is what makes it right)."""
    monkeypatch.setattr(gnc_ext._engine, "TILE_BUDGET_BYTES", 4 * 64 * 100)  # several tiles
    monkeypatch.setattr(gnc_ext.config, "ncc_screen", "on")
    K, d, N = 400, 48, 4000
    # class means in near-duplicate pairs: many queries are nearly equidistant from the
    # two members of a pair (gaps far above fp32 rounding, below the TF32 error)
    g = torch.Generator().manual_seed(41)
    base = torch.randn(K // 2, d, generator=g, dtype=torch.float64)
    mu = torch.cat([base, base + 2e-3 * torch.randn(K // 2, d, generator=g, dtype=torch.float64)])
    y = torch.arange(K).repeat(N // K)
    H = (mu[y] + 0.05 * torch.randn(N, d, generator=g, dtype=torch.float64)).float()
    acc = feed(GNCAccumulator(K, d), H, y, [1000])
    Q = (mu[torch.randint(0, K, (3000,), generator=g)] + 0.3 * torch.randn(3000, d, generator=g,
                                                                       dtype=torch.float64)).float()
    want, margin = _brute_force_ncc(H, y, K, Q)
    got = acc.ncc_predict(Q, row_block=700).numpy()
    safe = margin > 1e-5
    assert safe.mean() > 0.99
    np.testing.assert_array_equal(got[safe], want[safe])
    # the TF32 scores alone pick a wrong class on some safe rows
    M, bias = acc._ncc_tables(torch.float32)
    A = torch.nn.functional.normalize(Q, dim=1)
    naive = emulate_tf32_tile(A, M, bias).argmax(1).numpy()
    assert (naive[safe] != want[safe]).sum() >= 1
    with pytest.raises(ValueError, match="ncc_screen"):
        gnc_ext.config.ncc_screen = "bogus"


def test_tf32_bound_and_certified_argmax_edge_cases(device, emulate_tf32_tile):
    """_engine.certified_argmax: masks, ties, all-masked rows, empty classes (-inf bias),
    against float64 brute force; the per-row bound covers the emulated TF32 error."""
    from gnc_ext._engine import certified_argmax, tf32_row_bounds

    g = torch.Generator().manual_seed(43)
    R, K, d = 37, 301, 33
    A = torch.randn(R, d, generator=g)
    B = torch.randn(K, d, generator=g)
    B[100] = B[7]  # exact duplicate: ties go to the lower index
    bias = torch.randn(K, generator=g)
    bias[100] = bias[7]
    bias[50:60] = -math.inf  # excluded classes
    y = torch.randint(0, K, (R,), generator=g)
    y[0] = -100  # masks nothing
    y[1] = 7
    S = A.double() @ B.double().T + bias.double()
    eps = tf32_row_bounds(A, B, bias)
    err = (emulate_tf32_tile(A, B, bias).double() - S).abs()
    fin = torch.isfinite(S)
    assert bool((err[fin] <= eps[:, None].expand_as(S)[fin]).all())
    Sm = S.clone()
    rows = torch.arange(R)
    ok = (y >= 0) & (y < K)
    Sm[rows[ok], y[ok]] = -math.inf
    want_val, want_idx = Sm.max(1)  # torch.max returns the first maximal index
    val, idx, checked = certified_argmax(A.to(device), B.to(device), bias.to(device), y.to(device), chunk=64)
    assert torch.equal(idx.cpu(), want_idx)
    torch.testing.assert_close(val.cpu(), want_val, rtol=1e-12, atol=1e-12)
    assert int(checked.min()) >= 1
    # a single class, masked for every row: -inf / -1
    val, idx, _ = certified_argmax(A[:3].to(device), B[:1].to(device), None, torch.zeros(3, dtype=torch.int64,
                                                                                       device=device))
    assert torch.isinf(val).all() and (idx == -1).all()


def test_cuda_tf32_screening_on_hardware(cuda_device):
    """The real TF32 tensor-core tiles stay inside the screening's error bound (every
    entry, d = 512 and d = 2048, with a bias), and certified_argmax on them equals the
    float64 brute force exactly."""
    from gnc_ext._engine import certified_argmax, tf32_on, tf32_row_bounds, tf32_tile

    g = torch.Generator().manual_seed(44)
    for R, K, d in ((2048, 6000, 512), (512, 3000, 2048)):
        A = torch.nn.functional.normalize(torch.randn(R, d, generator=g), dim=1)
        B = 0.9 * torch.nn.functional.normalize(torch.randn(K, d, generator=g), dim=1)
        bias = -0.5 * (B.double() ** 2).sum(1).float()
        S = A.double() @ B.double().T + bias.double()
        Ac, Bc, bc = A.to(cuda_device), B.to(cuda_device), bias.to(cuda_device)
        with tf32_on():
            T = tf32_tile(Ac, Bc, bc).double().cpu()
        eps = tf32_row_bounds(A, B, bias)
        ratio = float(((T - S).abs() / eps[:, None]).max())
        assert ratio <= 1.0, ratio
        assert float((T - S).abs().max()) > 1e-5  # TF32-sized errors: the GEMM really ran in TF32
        val, idx, checked = certified_argmax(Ac, Bc, bc, None)
        want_val, want_idx = S.max(1)
        assert torch.equal(idx.cpu(), want_idx)
        torch.testing.assert_close(val.cpu(), want_val, rtol=1e-12, atol=1e-12)


def test_ncc_fp32_cpu_matches_brute_force():
    K, d, N = 150, 32, 1200
    H, y = random_data(K, d, N, seed=16)
    acc = feed(GNCAccumulator(K, d), H, y, [256])
    Q, _ = random_data(K, d, 400, seed=17)
    want, margin = _brute_force_ncc(H, y, K, Q)
    got = acc.ncc_predict(Q).numpy()
    safe = margin > 1e-4
    np.testing.assert_array_equal(got[safe], want[safe])


def test_ncc_ties_pick_lowest_index(monkeypatch):
    monkeypatch.setattr(gnc_ext._engine, "TILE_BUDGET_BYTES", 4 * 64 * 4)
    K, d = 130, 4
    base = torch.nn.functional.normalize(torch.randn(K, d, dtype=torch.float64), dim=1)
    base[100] = base[7]  # class 100 (a later tile) duplicates class 7
    acc = GNCAccumulator(K, d)
    acc.update(base, torch.arange(K))
    pred = acc.ncc_predict(base[[7, 100]].clone())
    assert pred.tolist() == [7, 7]


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_loader_and_precomputed():
    K, d, N = 30, 8, 600
    X, y = random_data(K, d, N, seed=18)
    proj = torch.randn(d, d)
    loader = [(X[s:s + 64], y[s:s + 64]) for s in range(0, N, 64)]
    fn = lambda x: x @ proj  # noqa: E731
    r = evaluate(fn, loader, num_classes=K, progress=False)
    F = X @ proj
    assert rel(r.gnc1, ref_gnc(F, y, K)["gnc1"]) < 1e-9
    want, _ = _brute_force_ncc(F, y, K, F)
    assert r.ncc_samples == N
    assert r.ncc_accuracy == pytest.approx(float((want == y.numpy()).mean()), abs=2.0 / N)
    r2 = evaluate(None, (F, y), progress=True, batch_size=100)
    assert r2.gnc1 == pytest.approx(r.gnc1, rel=1e-9)
    assert r2.ncc_accuracy == pytest.approx(r.ncc_accuracy, abs=1e-12)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate(fn, loader, progress=False)
    with pytest.raises(TypeError, match="feature_fn"):
        evaluate(None, loader, num_classes=K, progress=False)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument(device):
    K, d = 6, 5
    acc = GNCAccumulator(K, d, device=device)
    with pytest.raises(RuntimeError, match="no samples accumulated"):
        acc.compute()
    with pytest.raises(RuntimeError, match="no samples accumulated"):
        acc.ncc_predict(torch.randn(3, d, device=device))
    with pytest.raises(ValueError, match="features: expected width dim=5"):
        acc.update(torch.randn(4, 6, device=device), torch.zeros(4, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="labels: value 6 .*outside"):
        acc.update(torch.randn(4, d, device=device), torch.tensor([0, 1, 6, 2], device=device))
    with pytest.raises(ValueError, match="labels: value -1 .*outside"):
        acc.update(torch.randn(4, d, device=device), torch.tensor([0, -1, 3, 2], device=device))
    bad = torch.randn(4, d, device=device)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="features: .*NaN or Inf"):
        acc.update(bad, torch.tensor([0, 1, 2, 3], device=device))
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="features: .*NaN or Inf"):
        acc.update(bad, torch.tensor([0, 1, 2, 3], device=device))
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        acc.update(torch.randn(4, d, device=device), torch.zeros(4, device=device))
    with pytest.raises(ValueError, match="labels: expected shape"):
        acc.update(torch.randn(4, d, device=device), torch.zeros(3, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="features"):
        acc.update(np.zeros((4, d)), torch.zeros(4, dtype=torch.int64))
    assert acc.num_samples == 0  # failed updates left the state untouched
    acc.update(torch.randn(12, d, device=device), torch.arange(12, device=device) % K)
    with pytest.raises(ValueError, match=r"W: expected shape \(6, 5\)"):
        acc.compute(torch.randn(K, d + 1, device=device))
    with pytest.raises(ValueError, match=r"W: expected shape \(6, 5\)"):
        acc.compute(torch.randn(K + 1, d, device=device))
    Wbad = torch.randn(K, d, device=device)
    Wbad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="W: contains NaN"):
        acc.compute(Wbad)
    with pytest.raises(ValueError, match="pinv_rtol"):
        acc.compute(pinv_rtol=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        GNCAccumulator(0, d)
    with pytest.raises(TypeError, match="dim"):
        GNCAccumulator(3, 2.5)
    with pytest.raises(ValueError, match="other: num_classes"):
        acc.merge(GNCAccumulator(K + 1, d, device=device))
    with pytest.raises(ValueError, match="other: eps=1e-06 differs"):
        acc.merge(GNCAccumulator(K, d, device=device, eps=1e-6))


def test_bad_input_cpu_state_untouched_on_late_error():
    """The native kernel validates before writing: a bad row late in a batch leaves no trace."""
    K, d = 4, 3
    acc = GNCAccumulator(K, d)
    acc.update(torch.randn(8, d), torch.arange(8) % K)
    before = acc.state_dict()
    X = torch.randn(1000, d)
    X[999, 0] = float("nan")
    with pytest.raises(ValueError, match="features: row 999"):
        acc.update(X, torch.arange(1000) % K)
    after = acc.state_dict()
    for k in ("counts", "shift", "dsum", "sqsum", "scatter"):
        assert torch.equal(before[k], after[k])


# ----------------------------------------------------------------------------- GNC2
def _nnls_distance(W):
    """dist_k = min over the simplex of ‖w_k − Σ v_j w_j‖ via scipy nnls with a heavily
    weighted sum-to-one row (float64 brute force)."""
    from scipy.optimize import nnls

    K = W.shape[0]
    out = np.empty(K)
    for k in range(K):
        others = np.delete(W, k, axis=0).T  # d × (K−1)
        big = 1e4
        A = np.vstack([others, big * np.ones((1, K - 1))])
        b = np.concatenate([W[k], [big]])
        v, _ = nnls(A, b, maxiter=5000)
        out[k] = np.linalg.norm(W[k] - others @ v)
    return out


def test_gnc2_matches_nnls():
    pytest.importorskip("scipy")
    K, d = 9, 4
    g = torch.Generator().manual_seed(19)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    Wn = (W / W.norm(dim=1, keepdim=True)).numpy()
    want = _nnls_distance(Wn)
    acc = GNCAccumulator(K, d)
    acc.update(torch.randn(30, d), torch.arange(30) % K)
    r = acc.compute(W.float() * 2.0, gnc2=True)  # scale must not matter (rows normalised)
    g2 = r.gnc2
    assert g2.rho == pytest.approx(want.min(), abs=1e-5)
    assert g2.rho_lower <= g2.rho + 1e-9 and g2.max_gap >= -1e-9
    np.testing.assert_allclose(g2.distance.numpy(), want, atol=1e-5)
    assert r.worst_by_distance[0].item() == int(np.argmin(want))
    assert g2.rattlers.dtype == torch.int64 and g2.rattlers.dim() == 1


def test_gnc2_theory_fields():
    # K ≤ d+1: simplex ETF optimum K/(K−1) (Thm 3.3) is reported as the reference
    K, d = 4, 6
    acc = GNCAccumulator(K, d)
    acc.update(torch.randn(8, d), torch.arange(8) % K)
    r = acc.compute(torch.randn(K, d), gnc2=True)
    assert r.gnc2.rho_optimum == pytest.approx(K / (K - 1))
    assert r.gnc2.rho <= r.gnc2.rho_optimum + 1e-6


def test_strided_features_int32_labels_and_dataloader(device):
    from torch.utils.data import DataLoader, TensorDataset

    K, d, N = 7, 5, 300
    H, y = random_data(K, d, N, seed=20)
    Ht = H.T.contiguous().T  # column-major view: row stride 1, column stride N
    assert not Ht.is_contiguous()
    a = GNCAccumulator(K, d, device=device)
    a.update(Ht.to(device) if device == "cpu" else Ht.to(device).T.contiguous().T, y.to(torch.int32).to(device))
    assert rel(a.compute().gnc1, ref_gnc(H, y, K)["gnc1"]) < 1e-10
    dl = DataLoader(TensorDataset(H, y), batch_size=64)
    r = evaluate(lambda x: x.to(device), dl, num_classes=K, progress=False)
    assert rel(r.gnc1, ref_gnc(H, y, K)["gnc1"]) < 1e-10
    assert r.ncc_accuracy == pytest.approx(a.ncc_accuracy(H.to(device), y.to(device)), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_sync_batch_check_used_on_cuda(dtype):
    """The CUDA update checks labels and finiteness with two aminmax reductions and one
    synchronisation (the native CUDA kernels cannot raise); the same torch code runs here."""
    from gnc_ext.metrics.accumulator import _raise_if_bad_batch
    K = 7
    x = torch.randn(9, 4).to(dtype)
    y = torch.arange(9) % K
    _raise_if_bad_batch(x, y, K, True)  # fine
    _raise_if_bad_batch(x, y.to(torch.uint8), K, True)
    for v in (float("nan"), float("inf"), -float("inf")):
        xb = x.clone()
        xb[5, 2] = v
        with pytest.raises(ValueError, match="features: contains NaN or Inf"):
            _raise_if_bad_batch(xb, y, K, True)
        _raise_if_bad_batch(xb, y, K, False)  # config.check_finite off: not checked
    for bad, shown in ((K, K), (-1, -1), (2**62 + 1, 2**62 + 1)):
        yb = y.clone()
        yb[3] = bad
        with pytest.raises(ValueError, match=rf"labels: value {shown} is outside \[0, num_classes=7\)"):
            _raise_if_bad_batch(x, yb, K, True)


# ----------------------------------------------------------------------------- bad input: state, ranges, options
_STATE_KEYS = ("counts", "shift", "dsum", "sqsum", "scatter")


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, after[k]), k
        else:
            assert v == after[k], k


def test_load_state_dict_rejects_bad_tensors_and_config():
    """Sparse, NaN/Inf state tensors and a mismatched eps/normalize/version are refused,
    naming the key, and leave the target unchanged; strided tensors are stored as dense
    contiguous copies, so later updates work (before: a sparse scatter made update raise
    NotImplementedError after half-writing the state; a column-major dsum made every
    update fail naming an internal field)."""
    K, d = 4, 3
    H, y = random_data(K, d, 40, seed=30)
    src = feed(GNCAccumulator(K, d), H[:20], y[:20], [20])
    tgt = feed(GNCAccumulator(K, d), H[20:], y[20:], [20])
    before = tgt.state_dict()
    cases = []
    sd = src.state_dict()
    sd["scatter"] = sd["scatter"].to_sparse()
    cases.append((sd, r"state\['scatter'\]: expected a dense"))
    for key, val in (("dsum", float("nan")), ("shift", float("inf")), ("sqsum", -float("inf")),
                     ("scatter", float("nan"))):
        sd = src.state_dict()
        sd[key].view(-1)[0] = val
        cases.append((sd, rf"state\['{key}'\]: contains NaN or Inf"))
    sd = src.state_dict()
    sd["sqsum"][1] = -1.0
    cases.append((sd, r"state\['sqsum'\]: has negative"))
    sd = src.state_dict()
    sd["counts"][:2] = 2**62
    cases.append((sd, r"state\['counts'\]: the total count overflows"))
    sd = src.state_dict()
    sd["eps"] = 5.0  # was silently ignored
    cases.append((sd, r"state: eps=5.0 does not match"))
    sd = src.state_dict()
    sd["normalize"] = 1  # 1 == True passed the old check
    cases.append((sd, r"state: normalize=1 does not match"))
    sd = src.state_dict()
    sd["num_classes"] = float(K)
    cases.append((sd, r"state: num_classes=4.0 does not match"))
    sd = src.state_dict()
    sd["version"] = True
    cases.append((sd, r"state: unsupported version True"))
    sd = src.state_dict()
    del sd["eps"]
    cases.append((sd, r"state: missing key 'eps'"))
    for sd, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tgt.load_state_dict(sd)
        _assert_same_state(before, tgt.state_dict())
    tgt.update(H[:5], y[:5])  # still usable
    # column-major dsum/shift: accepted as contiguous copies; updates then work and
    # give the same result as the original accumulator
    sd = src.state_dict()
    sd["dsum"] = sd["dsum"].T.contiguous().T
    sd["shift"] = sd["shift"].T.contiguous().T
    b = GNCAccumulator(K, d).load_state_dict(sd)
    assert b._dsum.is_contiguous() and b._shift.is_contiguous()
    a = GNCAccumulator(K, d).load_state_dict(src.state_dict())
    a.update(H[20:], y[20:])
    b.update(H[20:], y[20:])
    np.testing.assert_array_equal(_result_vector(a.compute()), _result_vector(b.compute()))
    # numpy scalars for the configuration are fine
    sd = src.state_dict()
    sd["num_classes"], sd["dim"], sd["eps"] = np.int64(K), np.int32(d), np.float64(1e-12)
    GNCAccumulator(K, d).load_state_dict(sd)


def test_eps_floor_and_zero_rows_never_nan_or_minus_one():
    """normalize=True needs eps >= the smallest normal float32 (eps=0 turned an all-zero
    row into NaN state and NCC class -1). Zero feature rows (update and query) with the
    default eps give a finite state and real classes."""
    for eps in (0.0, 1e-40, 1e-320):
        with pytest.raises(ValueError, match=r"^eps: expected a number >= 1.17549e-38"):
            GNCAccumulator(2, 3, eps=eps)
    GNCAccumulator(2, 3, eps=0.0, normalize=False)  # eps unused without normalisation
    GNCAccumulator(2, 3, eps=float(torch.finfo(torch.float32).tiny))
    a = GNCAccumulator(3, 4)
    a.update(torch.zeros(2, 4), torch.tensor([0, 0]))
    a.update(torch.eye(4)[:2] * 3.0, torch.tensor([1, 2]))
    sd = a.state_dict()
    assert all(bool(torch.isfinite(sd[k]).all()) for k in ("shift", "dsum", "sqsum", "scatter"))
    for dt in (torch.float32, torch.float64):
        pred = a.ncc_predict(torch.zeros(3, 4, dtype=dt))
        assert pred.tolist() == [0, 0, 0]  # the zero mean is the nearest centre
    assert a.ncc_accuracy(torch.zeros(2, 4), torch.tensor([0, 1])) == 0.5
    # large float32 queries are normalised in float64 like update (a float32 norm
    # overflowed to inf, giving a zero row and the wrong class); rows below eps stay ~0
    Q = torch.tensor([[0.0, 3e38, 0.0, 0.0], [2e19, 0.0, 0.0, 0.0], [1e-39, 0.0, 0.0, 0.0]])
    assert a.ncc_predict(Q).tolist() == [2, 1, 0]


def test_normalize_false_ranges_checked():
    """normalize=False: float64 features beyond the float32 range are refused before the
    state is written (the float32 reference points became inf); NCC scores that could
    overflow are refused instead of returning class -1."""
    K, d = 2, 3
    a = GNCAccumulator(K, d, normalize=False)
    a.update(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), torch.tensor([0]))
    before = a.state_dict()
    X = torch.ones(4, d, dtype=torch.float64)
    X[3, 1] = -1e39
    with pytest.raises(ValueError, match=r"^features: value -1e\+39 exceeds 3.40282e\+38 .*normalize=False"):
        a.update(X, torch.tensor([0, 1, 0, 1]))
    _assert_same_state(before, a.state_dict())
    a.update(torch.tensor([[3e38, 0.0, 0.0]], dtype=torch.float64), torch.tensor([1]))  # in range
    r = a.compute()
    assert math.isfinite(r.gnc1) and math.isfinite(r.trace_sigma_b)
    # float32 NCC against class means of norm 3e38: the scores overflow float32
    with pytest.raises(ValueError, match=r"^features: the class means .* too large for float32"):
        a.ncc_predict(torch.ones(2, d))
    assert a.ncc_predict(torch.tensor([[1.0, 2.0, 3.0], [2e38, 0.0, 0.0]], dtype=torch.float64)).tolist() == [0, 1]
    # moderate means, float32 queries near the float32 maximum
    b = GNCAccumulator(K, d, normalize=False)
    b.update(torch.tensor([[1e3, 0.0, 0.0], [0.0, 1e3, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^features: values up to 3e\+38 are too large"):
        b.ncc_predict(torch.tensor([[1.0, 0.0, 0.0], [0.0, 3e38, 0.0]]))
    with pytest.raises(ValueError, match=r"^features: contains NaN or Inf"):
        b.ncc_predict(torch.tensor([[1.0, float("nan"), 0.0]]))
    c = GNCAccumulator(K, d, normalize=False)
    c.update(torch.tensor([[1e20, 0.0, 0.0], [0.0, 1e20, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^features: the class means"):  # was tensor([-1, -1])
        c.ncc_predict(torch.tensor([[1e20, 0.0, 0.0]]))
    assert c.ncc_predict(torch.tensor([[1e20, 0.0, 0.0], [0.0, 9e19, 1.0]], dtype=torch.float64)).tolist() == [0, 1]


def test_compute_options_strict():
    K, d = 4, 3
    H, y = random_data(K, d, 40, seed=31)
    acc = feed(GNCAccumulator(K, d), H, y, [40])
    W = torch.randn(K, d)
    for v in (1.0, 2.0, 10):
        with pytest.raises(ValueError, match=r"^pinv_rtol: expected a number in \[0, 1\)"):
            acc.compute(pinv_rtol=v)
    with pytest.raises(TypeError, match=r"^pinv_rtol: "):
        acc.compute(pinv_rtol="0.1")
    assert math.isfinite(acc.compute(pinv_rtol=0.5).gnc1)
    for v in ("no", 1, None, np.bool_(True)):
        with pytest.raises(TypeError, match=r"^centered: expected a bool"):
            acc.compute(centered=v)
    for v in (1, 0, torch.tensor(True), None):
        with pytest.raises(TypeError, match=r"^gnc2: expected 'auto' or a bool"):
            acc.compute(W, gnc2=v)
    with pytest.raises(ValueError, match=r"^gnc2: expected 'auto', True or False"):
        acc.compute(W, gnc2="yes")
    assert acc.compute(W, gnc2=False).gnc2 is None
    # Σ_B without an eigenvalue above the cutoff: gnc1 is NaN with a warning
    z = GNCAccumulator(2, d, normalize=False)
    z.update(torch.zeros(4, d), torch.tensor([0, 1, 0, 1]))
    with pytest.warns(RuntimeWarning, match="no eigenvalue above the cutoff"):
        r = z.compute()
    assert math.isnan(r.gnc1) and r.sigma_b_rank == 0


def test_device_argument_validated():
    for dev, exc in (("bogus", ValueError), ("meta", ValueError), (1.5, TypeError), ([0], TypeError)):
        with pytest.raises(exc, match=r"^device: "):
            GNCAccumulator(4, 3, device=dev)
        with pytest.raises(exc, match=r"^device: "):
            evaluate(None, (torch.randn(4, 3), torch.arange(4)), device=dev, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: cuda requested but CUDA is not available"):
            GNCAccumulator(4, 3, device="cuda")
    assert GNCAccumulator(4, 3, device=torch.device("cpu")).device == torch.device("cpu")


def test_gnc2_normalises_extreme_rows():
    """metrics.gnc2 normalises rows of any finite magnitude (it said "pass normalize=True",
    an argument it does not take, when a float32 norm overflowed or underflowed)."""
    from gnc_ext.metrics import gnc2

    base = torch.tensor([[1.0, 0.2], [-1.0, 0.3], [0.1, 1.0]], dtype=torch.float64)
    want = gnc2(base)
    for W in (base.float() * 3e38 / 1.0, base.float() * 1e-40, base * 1e300, base * 1e-300):
        got = gnc2(W)
        tol = 1e-9 if W.dtype == torch.float64 else 2e-4
        assert got.rho == pytest.approx(want.rho, abs=tol)
        np.testing.assert_allclose(got.distance.numpy(), want.distance.numpy(), atol=tol)
    with pytest.raises(ValueError, match=r"^W: row 1 is all zeros"):
        gnc2(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(TypeError, match=r"^W: expected a torch.Tensor"):
        gnc2([[1.0, 0.0], [0.0, 1.0]])
    # GNC3 with extreme W rows matches the unit-row value
    K, d = 3, 2
    acc = GNCAccumulator(K, d)
    acc.update(torch.randn(9, d, dtype=torch.float64), torch.arange(9) % K)
    g3 = acc.compute(base, gnc2=False).gnc3
    assert acc.compute(base * 1e200, gnc2=False).gnc3 == pytest.approx(g3, abs=1e-12)
    assert acc.compute(base * 1e-200, gnc2=False).gnc3 == pytest.approx(g3, abs=1e-12)


def test_evaluate_loader_must_be_reiterable_and_labels_checked_in_pass_two():
    K, d = 4, 3
    F, L = torch.randn(8, d), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    fn = lambda x: x  # noqa: E731
    # a one-shot iterator gave ncc_accuracy = nan silently
    with pytest.raises(ValueError, match=r"^loader: a one-shot iterator"):
        evaluate(fn, iter([(F, L)]), num_classes=K, progress=False)
    with pytest.raises(ValueError, match=r"^loader: a one-shot iterator"):
        evaluate(fn, ((F, L) for _ in range(1)), num_classes=K, progress=False)

    class Once:  # re-iterable in form, empty the second time
        n = 0

        def __iter__(self):
            self.n += 1
            if self.n == 1:
                yield (F, L)

    with pytest.raises(ValueError, match=r"^loader: yielded no samples on the second pass"):
        evaluate(fn, Once(), num_classes=K, progress=False)

    class Shifted:  # labels out of range only in pass 2 (were accepted: accuracy 0.0)
        n = 0

        def __iter__(self):
            self.n += 1
            yield (F, L if self.n == 1 else L + 10)

    with pytest.raises(ValueError, match=r"^labels: value 13 is outside \[0, num_classes=4\)"):
        evaluate(fn, Shifted(), num_classes=K, progress=False)
    r = evaluate(fn, [(F, L)], num_classes=K, progress=False)
    assert r.ncc_samples == 8 and 0.0 <= r.ncc_accuracy <= 1.0


def test_evaluate_bad_arguments_name_the_argument():
    K, d = 4, 3
    F, L = torch.randn(8, d), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    fn = lambda x: x  # noqa: E731
    loader = [(F, L)]
    with pytest.raises(TypeError, match=r"^W: expected a torch.Tensor"):  # was AttributeError
        evaluate(None, (F, L), W=[[1.0, 0.0, 0.0]] * 4, progress=False)
    with pytest.raises(TypeError, match=r"^W: expected a torch.Tensor"):
        evaluate(fn, loader, W=[[1.0, 0.0, 0.0]] * 4, progress=False)
    with pytest.raises(ValueError, match=r"^W: expected 5 rows"):
        evaluate(fn, loader, W=torch.randn(4, d), num_classes=5, progress=False)
    with pytest.raises(ValueError, match=r"^W: expected shape \(4, 3\)"):
        evaluate(fn, loader, W=torch.randn(4, d + 1), progress=False)
    # precomputed labels: dtype and range checked (naming labels) before num_classes is inferred
    with pytest.raises(ValueError, match=r"^labels: the largest label 1000000000000 would make num_classes"):
        evaluate(None, (F, torch.tensor([0, 1, 2, 10**12, 0, 1, 2, 3])), progress=False)
    with pytest.raises(TypeError, match=r"^labels: expected an integer tensor, got float32"):
        evaluate(None, (F[:2], torch.tensor([0.0, float("nan")])), progress=False)
    with pytest.raises(TypeError, match=r"^labels: expected a torch.Tensor, got list"):
        evaluate(None, (F, L.tolist()), progress=False)
    with pytest.raises(ValueError, match=r"^labels: value -1 is negative"):
        evaluate(None, (F, L - 1), progress=False)
    with pytest.raises(ValueError, match=r"^labels: value 3 is outside \[0, num_classes=3\)"):
        evaluate(None, (F, L), num_classes=3, progress=False)
    with pytest.raises(ValueError, match=r"^labels: expected a 1-D tensor of length 8"):
        evaluate(None, (F, L[:5]), progress=False)
    with pytest.warns(RuntimeWarning, match="6 of 10 classes have no samples"):
        r = evaluate(None, (F, L), num_classes=10, progress=False)  # explicit K > N is fine
    assert r.num_classes == 10
    # loader / feature_fn
    with pytest.raises(TypeError, match=r"^loader: expected an iterable"):
        evaluate(fn, None, num_classes=K, progress=False)
    with pytest.raises(ValueError, match=r"^feature_fn: expected it to return a 2-D \(B, d\) tensor"):
        evaluate(lambda x: x[:, 0], loader, num_classes=K, progress=False)  # named `dim` before
    with pytest.raises(ValueError, match=r"^feature_fn: expected it to return features of width >= 1"):
        evaluate(lambda x: x[:, :0], loader, num_classes=K, progress=False)
    # options validated before the first pass
    calls = []

    def counting(x):
        calls.append(1)
        return x

    for kw, exc, name in ((dict(progress="no"), TypeError, "progress"), (dict(centered="no"), TypeError, "centered"),
                          (dict(normalize=1), TypeError, "normalize"), (dict(gnc2=1), TypeError, "gnc2"),
                          (dict(worst=-1), ValueError, "worst"), (dict(batch_size=0), ValueError, "batch_size"),
                          (dict(num_classes=True), TypeError, "num_classes")):
        kw.setdefault("num_classes", K)
        kw.setdefault("progress", False)
        with pytest.raises(exc, match=rf"^{name}: "):
            evaluate(counting, loader, **kw)
    assert not calls


def test_update_checks_everything_before_writing():
    """update: every check (labels, finiteness, the float32 range of normalize=False)
    runs before the native kernel writes the state, on both the CPU path and the CUDA
    one-synchronisation helper (exercised here on the CPU)."""
    from gnc_ext.metrics.accumulator import _raise_if_bad_batch

    x = torch.ones(4, 3, dtype=torch.float64)
    y = torch.arange(4) % 2
    x[2, 0] = 5e38
    with pytest.raises(ValueError, match=r"^features: value 5e\+38 exceeds 3.40282e\+38 .*because"):
        _raise_if_bad_batch(x, y, 2, True, 3.4028234663852886e38, "because")
    with pytest.raises(ValueError, match=r"^features: value 5e\+38 exceeds"):
        _raise_if_bad_batch(x, y, 2, False, 3.4028234663852886e38, "because")  # check_finite off
    with pytest.raises(ValueError, match=r"^labels: value 2 is outside"):  # labels first
        _raise_if_bad_batch(x, y + 1, 2, True, 1.0, "because")
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^features: contains NaN or Inf"):
        _raise_if_bad_batch(x, y, 2, True, 1.0, "because")
    _raise_if_bad_batch(x, y, 2, False, 1.0, "because")  # non-finite: not the range check's business
    # on the CPU: each bad batch leaves the state bit-identical
    for normalize in (True, False):
        acc = GNCAccumulator(3, 3, normalize=normalize)
        acc.update(torch.randn(6, 3, dtype=torch.float64), torch.arange(6) % 3)
        before = acc.state_dict()
        bad = [(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 3, 2])),
               (torch.tensor([[1.0, float("inf"), 0.0]], dtype=torch.float64), torch.tensor([0]))]
        if normalize:
            bad.append((torch.full((2, 3), 1e200, dtype=torch.float64), torch.tensor([0, 1])))  # norm overflows
        else:
            bad.append((torch.full((2, 3), 1e39, dtype=torch.float64), torch.tensor([0, 1])))
        for X, lab in bad:
            with pytest.raises(ValueError, match=r"^(features|labels): "):
                acc.update(X, lab)
            _assert_same_state(before, acc.state_dict())


# ----------------------------------------------------------------------------- torchmetrics
def test_torchmetrics_adapter_matches_accumulator():
    """GNCMetric (single process): update/compute/reset give the accumulator's numbers,
    and the metric's state is the accumulator's own (a state_dict round trip)."""
    tm = pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (extra [torchmetrics])")
    from gnc_ext.metrics import GNCMetric, nc_metrics

    K, d = 20, 6
    H, y = random_data(K, d, 300, seed=21)
    W = torch.randn(K, d, generator=torch.Generator().manual_seed(3))
    m = GNCMetric(K, d, W=lambda: W, kernel="distance")
    assert isinstance(m, tm.Metric)
    for s in range(0, 300, 64):
        m(H[s:s + 64], y[s:s + 64])  # forward = update
    got = m.compute()
    acc = feed(GNCAccumulator(K, d), H, y, [64])
    assert got["gnc1"].item() == pytest.approx(acc.compute().gnc1, rel=1e-12)
    assert got["gnc3"].item() == pytest.approx(acc.compute(W, gnc2=False).gnc3, rel=1e-12)
    ref = nc_metrics(acc, W, kernel="distance")
    for key in ("nc1_cdnv", "nc2_etf_error", "nc2_kernel_mean", "nc3_duality_error"):
        assert got[key].item() == pytest.approx(getattr(ref, key), rel=1e-12)
    st = m.accumulator().state_dict()
    for k, v in acc.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.allclose(st[k], v, rtol=1e-12, atol=1e-14), k
    m.reset()
    m.update(H[:40], y[:40])
    one = feed(GNCAccumulator(K, d), H[:40], y[:40], [40])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m.compute()["gnc1"].item() == pytest.approx(one.compute().gnc1, rel=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        GNCMetric(K, d, kernel="gauss")
    with pytest.raises(ValueError, match="num_classes"):
        GNCMetric(0, d)


def test_torchmetrics_adapter_ddp_equals_sync(tmp_path):
    """Two gloo ranks, uneven interleaved shards: GNCMetric.compute() (torchmetrics'
    gather + Chan merge) equals GNCAccumulator.sync() followed by compute/nc_metrics."""
    pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (extra [torchmetrics])")
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    K, d, n = 30, 12, 12
    H, y = collapsed_data(K, d, n, 1e-3, seed=19)
    y[y == 5] = 6  # an empty class
    W = torch.randn(K, d, generator=torch.Generator().manual_seed(4))
    torch.save({"H": H, "y": y, "K": K, "W": W}, tmp_path / "data.pt")
    _run_two_ranks(tmp_path, "out.pt", "torchmetrics")
    got = torch.load(tmp_path / "out.pt")
    metric, synced = got["metric"], got["synced"]
    assert set(synced) <= set(metric) and len(synced) >= 16
    for key, v in synced.items():
        assert metric[key] == pytest.approx(v, rel=1e-10, abs=1e-14), key


def test_metrics_work_without_torchmetrics(tmp_path):
    """torchmetrics is optional: with it unimportable, gnc_ext.metrics imports and works,
    and only GNCMetric raises ImportError (naming torchmetrics)."""
    code = ("import sys; sys.modules['torchmetrics'] = None\n"
            "import torch, gnc_ext.metrics as m\n"
            "a = m.GNCAccumulator(3, 2).update(torch.randn(6, 2), torch.arange(3).repeat(2))\n"
            "m.nc_metrics(a)\n"
            "try:\n    m.GNCMetric\nexcept ImportError as e:\n    print('ImportError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=package_subprocess_env(), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImportError" in out.stdout and "torchmetrics" in out.stdout
