"""gnc_ext.metrics.nc_metrics (the NC1–NC5 suite) against float64 numpy brute force written
here from the definitions: every K × K matrix formed explicitly at small K, pairwise
differences taken directly (not through Gram identities), pinv from numpy."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import gnc_ext
from conftest import package_subprocess_env
import gnc_ext._engine
from gnc_ext.metrics import GNCAccumulator, NCMetrics, evaluate, nc_metrics

EPS64 = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- reference
def brute_nc(H, y, K, *, W=None, bias=None, ood=None, kernel="log", p=1.0, normalize=True):
    H_raw = np.asarray(H, np.float64)
    y = np.asarray(y)
    H = H_raw / np.maximum(np.linalg.norm(H_raw, axis=1, keepdims=True), 1e-12) if normalize else H_raw
    N, d = H.shape
    present = np.bincount(y, minlength=K) > 0
    ids = np.flatnonzero(present)
    Kp = len(ids)
    M = np.stack([H[y == k].mean(0) for k in ids])
    Mt = M - M.mean(0)
    allmeans = np.zeros((K, d))
    allmeans[ids] = M
    dev = H - allmeans[y]
    SW = dev.T @ dev / N
    SB = Mt.T @ Mt / Kp
    out = {}
    out["nc1_pinv"] = np.trace(SW @ np.linalg.pinv(SB, rcond=max(d, Kp) * EPS64, hermitian=True)) / Kp
    out["nc1_quotient"] = np.trace(SW) / np.trace(SB)
    sig2 = np.array([np.mean(np.sum((H[y == k] - H[y == k].mean(0)) ** 2, axis=1)) for k in ids])
    iu = np.triu_indices(Kp, 1)
    diff = M[:, None, :] - M[None, :, :]                      # (K, K, d) explicitly
    D2 = np.sum(diff ** 2, axis=-1)
    with np.errstate(divide="ignore"):  # the diagonal (i = j), not used
        out["nc1_cdnv"] = np.mean(((sig2[:, None] + sig2[None, :]) / (2 * D2 ** p))[iu])
    nrm = np.linalg.norm(Mt, axis=1)
    out["nc2_equinorm"] = nrm.std() / nrm.mean()
    X = Mt / nrm[:, None]
    C = X @ X.T
    out["nc2_equiangular"] = C[iu].std()
    Cd = C.copy()
    np.fill_diagonal(Cd, -np.inf)
    out["nc2_max_angle"] = np.mean(np.abs(Cd.max(1) + 1.0 / (Kp - 1)))
    E = (np.eye(Kp) - np.ones((Kp, Kp)) / Kp) / np.sqrt(Kp - 1)
    G = Mt @ Mt.T
    out["nc2_etf_error"] = np.linalg.norm(G / np.linalg.norm(G) - E)
    dist = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)[iu]
    kv = {"log": np.log(1.0 / dist), "riesz": dist ** (-(d - 2)), "distance": dist}[kernel]
    out["nc2_kernel_mean"] = kv.mean()
    out["nc2_kernel_var"] = kv.var()
    if W is not None:
        Wz = np.asarray(W, np.float64)[ids]
        wn = np.linalg.norm(Wz, axis=1)
        out["w_equinorm"] = wn.std() / wn.mean()
        Cw = (Wz / wn[:, None]) @ (Wz / wn[:, None]).T
        out["w_equiangular"] = Cw[iu].std()
        np.fill_diagonal(Cw, -np.inf)
        out["w_max_angle"] = np.mean(np.abs(Cw.max(1) + 1.0 / (Kp - 1)))
        P = Wz @ Mt.T
        out["nc3_duality_error"] = np.linalg.norm(P / np.linalg.norm(P) - E)
        out["nc3_uniform_duality"] = np.diag(P).var()
        b = np.zeros(K) if bias is None else np.asarray(bias, np.float64)
        lin = np.argmax(H_raw @ np.asarray(W, np.float64).T + b, axis=1)
        ncc = ids[np.argmin(np.linalg.norm(H[:, None, :] - M[None, :, :], axis=-1), axis=1)]
        out["nc4_agreement"] = np.mean(lin == ncc)
        out["_agree"] = lin == ncc  # per row
    if ood is not None:
        u = np.asarray(ood, np.float64)
        out["nc5_ood"] = np.mean(np.abs(M @ u) / (np.linalg.norm(M, axis=1) * np.linalg.norm(u)))  # raw means
        out["nc5_ood_centered"] = np.mean(np.abs(Mt @ u) / (nrm * np.linalg.norm(u)))
    return out


def make_data(K, d, n_per, seed, empty=(), spread=0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, d, generator=g, dtype=torch.float64)
    y = torch.arange(K).repeat_interleave(n_per)
    for e in empty:
        y[y == e] = (e + 1) % K
    H = mu[y] + spread * torch.randn(y.numel(), d, generator=g, dtype=torch.float64)
    perm = torch.randperm(y.numel(), generator=g)
    W = mu + 0.5 * torch.randn(K, d, generator=g, dtype=torch.float64)
    return H[perm].to(dtype), y[perm], W


def feed(acc, H, y, bs=97):
    for s in range(0, H.shape[0], bs):
        acc.update(H[s:s + bs], y[s:s + bs])
    return acc


def check_all(got: NCMetrics, ref, rtol=1e-9, atol=1e-12):
    for k, v in ref.items():
        if k.startswith("_"):
            continue
        g = getattr(got, k)
        assert g is not None, k
        assert math.isclose(g, float(v), rel_tol=rtol, abs_tol=atol), (k, g, float(v))


# (num_classes, d); two classes stay empty, so the non-empty K is 4 < d, 17 = d + 1, 298 >> d
SHAPES = [pytest.param(6, 16, id="K<d"), pytest.param(19, 16, id="K=d+1"), pytest.param(300, 5, id="K>>d")]


@pytest.mark.parametrize("K,d", SHAPES)
def test_every_field_matches_brute_force(device, K, d, monkeypatch):
    # small tiles: K = 300 spans 5 blocks of 64 (the last one ragged)
    monkeypatch.setattr(gnc_ext._engine, "TILE_BUDGET_BYTES", 64 * 64 * 64)
    assert gnc_ext.ops.metrics.pair_block() == 64
    empty = (2, K - 1)
    H, y, W = make_data(K, d, 4 if K > 100 else 9, seed=K + d, empty=empty)
    bias = 0.1 * torch.randn(K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ood = torch.randn(d, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.3
    acc = feed(GNCAccumulator(K, d, device=device), H.to(device), y.to(device))
    for kernel, p in (("log", 1.0), ("riesz", 0.5), ("distance", 2.0)):
        with pytest.warns(RuntimeWarning, match=f"2 of {K} classes have no samples"):
            got = nc_metrics(acc, W.to(device), bias=bias.to(device), ood_mean=ood.to(device), kernel=kernel,
                             cdnv_exponent=p, features=H.to(device), batch_size=50, gnc2=False)
        ref = brute_nc(H, y, K, W=W, bias=bias, ood=ood, kernel=kernel, p=p)
        check_all(got, ref)
        assert got.num_nonempty == K - 2 and got.num_classes == K and got.num_samples == H.shape[0]
        assert got.nc4_samples == H.shape[0] and got.kernel == kernel and got.cdnv_exponent == p
    # the agreement is a non-trivial number on this data
    assert 0.0 < got.nc4_agreement < 1.0
    # nc1_pinv is GNC1 with the centred Σ_B
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isclose(got.nc1_pinv, acc.compute(centered=True).gnc1, rel_tol=1e-12)


def test_without_data_normalize_false_and_float32(device):
    K, d = 40, 12
    H, y, W = make_data(K, d, 6, seed=3, dtype=torch.float32)
    acc = feed(GNCAccumulator(K, d, normalize=False, device=device), H.to(device), y.to(device))
    got = nc_metrics(acc, W.float().to(device))
    ref = brute_nc(H.double(), y, K, W=W.float().double(), normalize=False)
    ref.pop("nc4_agreement")
    check_all(got, ref, rtol=1e-7)  # fp32 features, fp32 reference points: fp64 sums
    assert got.nc4_agreement is None and got.nc5_ood is None and got.nc4_samples == 0
    only = nc_metrics(acc)
    assert only.w_equinorm is None and only.nc3_duality_error is None
    assert only.nc1_cdnv == got.nc1_cdnv


def test_near_etf_errors_are_small_and_accurate():
    """Class means on a simplex ETF and W = 2·means, with 1e-7 noise: the ETF and
    self-duality errors and the equiangular spreads are ~1e-7 and still match the brute
    force to 1e-5 (the 2 − 2cos and E[c²] − E[c]² forms would floor them at ~1e-8)."""
    K, d = 9, 12
    E = torch.eye(K, dtype=torch.float64) - 1.0 / K  # rows: a simplex ETF in R^K ...
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    U = E @ Q[:K]  # ... rotated into R^d
    g = torch.Generator().manual_seed(2)
    y = torch.arange(K).repeat_interleave(3)
    H = 5.0 * (U[y] + 1e-7 * torch.randn(y.numel(), d, generator=g, dtype=torch.float64))
    acc = feed(GNCAccumulator(K, d, normalize=False), H, y)
    W = 2.0 * U + 1e-7 * torch.randn(K, d, generator=g, dtype=torch.float64)
    got = nc_metrics(acc, W)
    ref = brute_nc(H, y, K, W=W, normalize=False)
    for key in ("nc2_etf_error", "nc3_duality_error", "nc2_equiangular", "w_equiangular"):
        assert getattr(got, key) < 1e-5, key
        assert math.isclose(getattr(got, key), ref[key], rel_tol=1e-5), key
    assert math.isclose(got.nc2_max_angle, ref["nc2_max_angle"], rel_tol=1e-5, abs_tol=1e-15)


def test_to_dict_is_json_ready():
    K, d = 12, 6
    H, y, W = make_data(K, d, 5, seed=4)
    acc = feed(GNCAccumulator(K, d), H, y)
    r = nc_metrics(acc, W, features=H)
    d_ = r.to_dict()
    assert set(d_) == {f.name for f in __import__("dataclasses").fields(NCMetrics)}
    assert all(v is None or type(v) in (float, int, str, bool) for v in d_.values())
    assert d_["normalized"] is True and r.normalized is True
    assert json.loads(json.dumps(d_, allow_nan=False)) == d_
    r.nc1_cdnv = math.inf
    assert r.to_dict()["nc1_cdnv"] is None


def test_coinciding_classes_warn_not_silent():
    K, d = 5, 4
    H, y, _ = make_data(K, d, 4, seed=7)
    H[y == 1] = H[y == 0][: int((y == 1).sum())]  # class 1 = class 0 exactly
    acc = feed(GNCAccumulator(K, d), H, y)
    with pytest.warns(RuntimeWarning) as rec:
        r = nc_metrics(acc, kernel="log")
    msgs = " ".join(str(w.message) for w in rec)
    assert "kernel mean is infinite" in msgs and "nc1_cdnv is infinite" in msgs
    assert r.nc2_kernel_mean == math.inf and math.isnan(r.nc2_kernel_var) and r.nc1_cdnv == math.inf
    with pytest.warns(RuntimeWarning, match="nc1_cdnv is infinite"):
        assert math.isfinite(nc_metrics(acc, kernel="distance").nc2_kernel_mean)


def test_evaluate_nc_matches_nc_metrics_and_brute_force(device):
    K, d = 25, 8
    H, y, W = make_data(K, d, 8, seed=8, empty=(4,))
    bias = 0.2 * torch.randn(K, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = evaluate(None, (H.to(device), y.to(device)), W=W.to(device), progress=False, num_classes=K,
                     batch_size=33, nc=True, bias=bias.to(device), kernel="distance", cdnv_exponent=1.5,
                     gnc2=False)
    ref = brute_nc(H, y, K, W=W, bias=bias, kernel="distance", p=1.5)
    check_all(r.nc, ref)
    assert r.nc.nc4_samples == H.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = evaluate(None, (H, y), progress=False, num_classes=K)
    assert plain.nc is None
    with pytest.raises(ValueError, match="nc"):
        evaluate(None, (H, y), progress=False, num_classes=K, kernel="riesz")
    with pytest.raises(ValueError, match="bias"):
        evaluate(None, (H, y), progress=False, num_classes=K, nc=True, bias=bias)


def test_accumulator_nc4_methods_match_brute_force(device):
    K, d = 30, 7
    H, y, W = make_data(K, d, 6, seed=10)
    bias = torch.randn(K, dtype=torch.float64)
    acc = feed(GNCAccumulator(K, d, device=device), H.to(device), y.to(device))
    ref = brute_nc(H, y, K, W=W, bias=bias)["nc4_agreement"]
    assert acc.nc4_agreement(H.to(device), W.to(device), bias.to(device)) == pytest.approx(ref, abs=1e-15)
    n = acc.nc4_agreement_count(H[:50].to(device), W.to(device), bias.to(device))
    assert isinstance(n, int) and n == int(brute_nc(H, y, K, W=W, bias=bias)["_agree"][:50].sum())
    lin = acc.linear_predict(H.to(device), W.to(device), bias.to(device)).cpu().numpy()
    np.testing.assert_array_equal(lin, np.argmax(H.numpy() @ W.numpy().T + bias.numpy(), axis=1))


def test_bad_input_names_the_argument():
    K, d = 8, 5
    H, y, W = make_data(K, d, 4, seed=11)
    acc = feed(GNCAccumulator(K, d), H, y)
    cases = [
        (dict(ood_mean=torch.ones(d + 1)), ValueError, "ood_mean"),
        (dict(ood_mean=torch.zeros(d)), ValueError, "ood_mean"),
        (dict(ood_mean=torch.ones(1, d)), ValueError, "ood_mean"),
        (dict(ood_mean=[1.0] * d), TypeError, "ood_mean"),
        (dict(W=W, bias=torch.ones(K + 1), features=H), ValueError, "bias"),
        (dict(W=W, bias=torch.ones(K, 1), features=H), ValueError, "bias"),
        (dict(bias=torch.ones(K)), ValueError, "bias"),
        (dict(W=W, bias=torch.ones(K)), ValueError, "bias"),
        (dict(kernel="gauss"), ValueError, "kernel"),
        (dict(kernel=3), TypeError, "kernel"),
        (dict(cdnv_exponent=0.0), ValueError, "cdnv_exponent"),
        (dict(cdnv_exponent=-1.0), ValueError, "cdnv_exponent"),
        (dict(cdnv_exponent=math.inf), ValueError, "cdnv_exponent"),
        (dict(cdnv_exponent="1"), TypeError, "cdnv_exponent"),
        (dict(W=W[:, :3]), ValueError, "W"),
        (dict(W=W[:-1]), ValueError, "W"),
        (dict(W=torch.zeros(K, d)), ValueError, "W"),
        (dict(W=W.clone().fill_(math.nan)), ValueError, "W"),
        (dict(features=H), ValueError, "features"),
        (dict(W=W, features=H[:, :2]), ValueError, "features"),
        (dict(W=W, features=3), TypeError, "features"),
    ]
    for kw, exc, name in cases:
        with pytest.raises(exc, match=name):
            nc_metrics(acc, **kw)
    with pytest.raises(TypeError, match="acc"):
        nc_metrics("not an accumulator")
    one = feed(GNCAccumulator(K, d), H[y == 0], y[y == 0])
    with pytest.raises(ValueError, match="acc"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nc_metrics(one)
    with pytest.raises(RuntimeError, match="no samples"):
        nc_metrics(GNCAccumulator(K, d))


# ----------------------------------------------------------------------------- memory
_MEM_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(2)
    from gnc_ext.metrics import GNCAccumulator, nc_metrics

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    K, d, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    g = torch.Generator().manual_seed(0)
    acc = GNCAccumulator(K, d)
    y = torch.arange(K).repeat(2)
    acc.update(torch.randn(2 * K, d, generator=g), y)
    W = torch.randn(K, d, generator=g)
    nc_metrics(GNCAccumulator(4, d).update(torch.randn(8, d), torch.arange(4).repeat(2)), W[:4])  # warm-up
    try:  # reset this process's RSS high-water mark to its current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status_kib("VmHWM")
    if mode == "suite":
        r = nc_metrics(acc, W, ood_mean=torch.ones(d), gnc2=False)  # the suite; GNC2's hull solver is not its subject
        assert r.nc2_kernel_mean == r.nc2_kernel_mean
    else:  # control: one dense K x K float64 Gram, as a brute-force implementation forms
        M = acc.class_statistics()[1]
        print(float((M @ M.T).max()), file=sys.stderr)
    print((status_kib("VmHWM") - before) * 1024)
""")


def _peak_growth(K, d, mode, cwd):
    env = package_subprocess_env(OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(K), str(d), mode], env=env, capture_output=True,
                         text=True, timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status (Linux)")
def test_no_K_by_K_tensor_is_allocated(tmp_path):
    """K = 9000: a K × K float64 matrix is 648 MB. The suite's peak RSS grows by less
    than 200 MB (tiles of 64 MiB with their temporaries), while the control — one dense
    K × K Gram — grows it by more than 80% of 648 MB, so the measurement does see such an
    allocation. The peak RSS of a fresh process (VmHWM, the high-water mark of its own
    address space, reset to the current RSS just before the call) counts torch's CPU
    allocations, which tracemalloc does not; ru_maxrss would not do: it keeps the
    parent's (pytest's) peak across the exec."""
    K, d = 9000, 16
    suite = _peak_growth(K, d, "suite", tmp_path)
    dense = _peak_growth(K, d, "dense", tmp_path)
    assert dense > 0.8 * K * K * 8, dense
    assert suite < 200e6, suite


@pytest.mark.parametrize("impl", ["native", "torch"])
def test_pairwise_tiles_both_paths_match_brute_force(impl):
    """ops.metrics.pairwise_class_stats: the fused CPU epilogue and the device-agnostic
    torch path (the one CUDA runs), against explicit K × K numpy grids, over ragged
    blocks, with a nearly parallel pair (exact differences) and a CDNV exponent."""
    from gnc_ext.ops.metrics import pairwise_class_stats

    K, d = 333, 6
    g = torch.Generator().manual_seed(12)
    X = torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    X[100] = torch.nn.functional.normalize(X[5] + 1e-7 * torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    r = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    s = torch.rand(K, generator=g, dtype=torch.float64)
    Xn, rn, sn = X.numpy(), r.numpy(), s.numpy()
    iu = np.triu_indices(K, 1)
    dist = np.linalg.norm(Xn[:, None] - Xn[None], axis=-1)
    C = Xn @ Xn.T
    np.fill_diagonal(C, -np.inf)
    mu = rn[:, None] * Xn
    D2 = np.sum((mu[:, None] - mu[None]) ** 2, axis=-1)[iu]
    for kernel, p in (("log", 1.0), ("riesz", 1.5), ("distance", 0.5)):
        got = pairwise_class_stats(X, radii=r, spreads=s, kernel=kernel, cdnv_exponent=p, block=64, impl=impl)
        kv = {"log": -np.log(dist[iu]), "riesz": dist[iu] ** (-(d - 2)), "distance": dist[iu]}[kernel]
        np.testing.assert_allclose(got.max_cos.numpy(), C.max(1), rtol=0, atol=1e-15)
        assert float(got.cdnv_mean) == pytest.approx(np.mean((sn[:, None] + sn[None])[iu] / (2 * D2 ** p)),
                                                     rel=1e-9)
        assert float(got.kernel_mean) == pytest.approx(kv.mean(), rel=1e-9)
        assert float(got.kernel_var) == pytest.approx(kv.var(), rel=1e-7)
        assert float(got.min_dist2) == pytest.approx(dist[iu].min() ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="impl"):
        pairwise_class_stats(X, impl="cuda")


def test_exact_simplex_etf_known_values():
    """A simplex ETF of K = 1500 class means (more than one 1024-row tile block), one
    sample per class, W equal to the means: every collapse measure takes its closed-form
    value (0, or the ETF's constants), computed by the default (64 MiB) tiles."""
    K = 1500
    E = torch.eye(K, dtype=torch.float64) - 1.0 / K
    Q, _ = torch.linalg.qr(torch.randn(K, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    M = 3.0 * (E @ Q)  # rows: a rotated simplex ETF (centred, equal norms, cos = -1/(K-1))
    y = torch.arange(K)
    acc = feed(GNCAccumulator(K, K, normalize=False), M, y, bs=512)
    r = nc_metrics(acc, M, features=M, ood_mean=torch.ones(K, dtype=torch.float64), gnc2=False)
    # no within-class spread (up to the fp32 rounding of the class reference points)
    assert abs(r.nc1_pinv) < 1e-20 and abs(r.nc1_quotient) < 1e-20 and abs(r.nc1_cdnv) < 1e-20
    for v in (r.nc2_equinorm, r.nc2_equiangular, r.nc2_max_angle, r.nc2_etf_error, r.w_equinorm,
              r.w_equiangular, r.w_max_angle, r.nc3_duality_error):
        assert abs(v) < 1e-9, r
    assert r.nc2_kernel_mean == pytest.approx(-0.5 * math.log(2 * K / (K - 1)), rel=1e-12)
    assert r.nc2_kernel_var < 1e-24
    assert r.nc4_agreement == 1.0 and r.nc3_uniform_duality < 1e-20
    # the ETF is orthogonal to 1 in the rotated frame only by accident: NC5 is |cos| to a fixed direction
    u = torch.ones(K, dtype=torch.float64) / math.sqrt(K)
    X = M / M.norm(dim=1, keepdim=True)
    assert r.nc5_ood == pytest.approx(float((X @ u).abs().mean()), rel=1e-12)
    assert r.nc5_ood_centered == pytest.approx(r.nc5_ood, rel=1e-12)  # the ETF's means are centred


def test_invariant_under_rotation_and_relabelling():
    """Every field is invariant under a rotation of feature space (applied to H, W and the
    OoD mean) and a permutation of the class labels (applied to y, W's rows and bias), at a
    K where the brute force is not run (K = 1200 > one tile block, K >> d)."""
    K, d = 1200, 24
    H, y, W = make_data(K, d, 3, seed=13, empty=(7,))
    bias = 0.1 * torch.randn(K, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    ood = torch.randn(d, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(16), dtype=torch.float64))
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(17))
    inv = torch.argsort(perm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = nc_metrics(feed(GNCAccumulator(K, d), H, y), W, bias=bias, ood_mean=ood, features=H, gnc2=False)
        b = nc_metrics(feed(GNCAccumulator(K, d), H @ Q, inv[y]), W[perm] @ Q, bias=bias[perm], ood_mean=ood @ Q,
                       features=H @ Q, gnc2=False)
    for k, v in a.to_dict().items():
        if isinstance(v, float):
            assert b.to_dict()[k] == pytest.approx(v, rel=1e-9, abs=1e-13), k


# ----------------------------------------------------------------------------- conventions
def toolkit_reference(H, y, K, W, ood):
    """The NC toolkit's definitions (rhubarbwu/neural-collapse, ``neural_collapse/measure.py``)
    written here in float64 torch from the class means M, the global mean m_G (unweighted
    mean of the class means), the within-class covariance V_intra = Σ(h − μ_y)(h − μ_y)ᵀ/N
    and the per-class variance norms; the structure error in the toolkit's form (normalise
    B Aᵀ, add 1/(K√(K−1)) everywhere, subtract 1/√(K−1) on the diagonal, Frobenius norm)."""
    H, W, ood = H.double(), W.double(), ood.double()
    M = torch.stack([H[y == k].mean(0) for k in range(K)])
    mG = M.mean(0)
    Mc = M - mG
    D = H - M[y]
    V_intra = D.T @ D / H.shape[0]
    V_inter = Mc.T @ Mc / K
    var = torch.stack([((H[y == k] - M[k]) ** 2).sum(1).mean() for k in range(K)])
    iu = torch.triu_indices(K, K, 1)

    def structure_error(A, B):
        s = B @ A.T
        s = s / torch.linalg.matrix_norm(s)
        s = s + 1.0 / K / math.sqrt(K - 1)
        s.diagonal().sub_(1.0 / math.sqrt(K - 1))
        return float(torch.linalg.matrix_norm(s))

    dist2 = torch.cdist(M, M) ** 2
    cdnv_grid = (var[:, None] + var[None, :]) / (2 * dist2)
    norms = Mc.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(Mc[:, None, :], Mc[None, :, :], dim=-1)
    return {
        "nc1_pinv": float(torch.trace(torch.linalg.pinv(V_inter) @ V_intra)) / K,
        "nc1_quotient": float(torch.trace(V_intra) / torch.trace(V_inter)),
        "nc1_cdnv": float(cdnv_grid[iu[0], iu[1]].mean()),
        "nc2_equinorm": float(norms.std(unbiased=False) / norms.mean()),
        "nc2_equiangular": float(cos[iu[0], iu[1]].std(unbiased=False)),
        "nc2_etf_error": structure_error(Mc, Mc),
        "nc3_duality_error": structure_error(Mc, W),
        "nc5_ood": float(torch.nn.functional.cosine_similarity(ood[None, :], M, dim=1).abs().mean()),
    }


def test_raw_features_equal_the_toolkit_definitions():
    """With normalize=False every metric is the toolkit's (float64, NC5 with the raw class
    means); with the default normalize=True they are the same definitions applied to the
    L2-normalised features, and the result says which (``normalized``). A large global
    mean makes NC5's raw and centred variants differ."""
    K, d = 15, 6
    H, y, W = make_data(K, d, 7, seed=21)
    H = H + 4.0  # a large global mean
    ood = torch.randn(d, generator=torch.Generator().manual_seed(22), dtype=torch.float64) + 1.0
    raw = nc_metrics(feed(GNCAccumulator(K, d, normalize=False), H, y), W, ood_mean=ood, gnc2=False)
    ref = toolkit_reference(H, y, K, W, ood)
    assert raw.normalized is False and raw.to_dict()["normalized"] is False
    for k, v in ref.items():
        assert getattr(raw, k) == pytest.approx(v, rel=1e-12, abs=1e-14), k
    assert abs(raw.nc5_ood - raw.nc5_ood_centered) > 0.1  # the two NC5 variants are different quantities
    Hn = torch.nn.functional.normalize(H, dim=1)
    ood_n = torch.nn.functional.normalize(H[:20] - 8.0, dim=1).mean(0)  # mean of normalised OoD features
    nrm = nc_metrics(feed(GNCAccumulator(K, d), H, y), W, ood_mean=ood_n, gnc2=False)
    ref_n = toolkit_reference(Hn, y, K, W, ood_n)
    assert nrm.normalized is True
    for k, v in ref_n.items():
        assert getattr(nrm, k) == pytest.approx(v, rel=1e-12, abs=1e-14), k
    assert nrm.nc2_equinorm != pytest.approx(raw.nc2_equinorm, rel=1e-3)


@pytest.mark.parametrize("K,d", [(40, 8), (12, 3), (30, 2)])
def test_etf_floor_closed_form_and_attained(K, d):
    """nc2_etf_floor = √(2 − 2√(d/(K−1))) for K > d + 1 equals ‖P_d/√d − P/√(K−1)‖_F
    formed densely (P the centring projector, P_d the projector on the top-d eigenspace
    of the ETF Gram P/√(K−1)); class means spanning that eigenspace (and W = those means)
    attain it in nc_metrics' ETF and duality errors; random means stay above it."""
    from gnc_ext.metrics import etf_error_floor

    floor = etf_error_floor(K, d)
    assert floor == pytest.approx(math.sqrt(2 - 2 * math.sqrt(d / (K - 1))), rel=1e-15)
    P = torch.eye(K, dtype=torch.float64) - 1.0 / K
    lam, V = torch.linalg.eigh(P / math.sqrt(K - 1))
    assert float(lam[0]) == pytest.approx(0.0, abs=1e-12) and float(lam[1]) == pytest.approx(1 / math.sqrt(K - 1))
    # the top eigenvalue 1/√(K−1) has a (K−1)-dimensional eigenspace (orthogonal to 1): a
    # random rotation inside it, then d of its vectors span a top-d eigenspace
    R, _ = torch.linalg.qr(torch.randn(K - 1, K - 1, generator=torch.Generator().manual_seed(d), dtype=torch.float64))
    U = (V[:, 1:] @ R)[:, :d]
    Pd = U @ U.T
    assert floor == pytest.approx(float(torch.linalg.matrix_norm(Pd / math.sqrt(d) - P / math.sqrt(K - 1))),
                                  rel=1e-12)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(K), dtype=torch.float64))
    means = 3.0 * U @ Q  # K points in R^d whose Gram is 9·P_d
    y = torch.arange(K).repeat(2)
    acc = feed(GNCAccumulator(K, d, normalize=False), means[y], y)
    r = nc_metrics(acc, means, gnc2=False)
    assert r.nc2_etf_floor == floor
    assert r.nc2_etf_error == pytest.approx(floor, abs=1e-12)
    assert r.nc3_duality_error == pytest.approx(floor, abs=1e-12)
    for seed in range(3):
        H, yy, W = make_data(K, d, 3, seed=seed)
        rr = nc_metrics(feed(GNCAccumulator(K, d), H, yy), W, gnc2=False)
        assert rr.nc2_etf_error > floor and rr.nc3_duality_error > floor


def test_etf_floor_is_zero_where_a_simplex_etf_exists():
    from gnc_ext.metrics import etf_error_floor

    assert etf_error_floor(2000, 64) == pytest.approx(1.281, abs=5e-4)  # the case
    for K, d in ((2, 1), (5, 4), (5, 10), (100, 99)):
        assert etf_error_floor(K, d) == 0.0
    H, y, W = make_data(6, 16, 3, seed=1)
    assert nc_metrics(feed(GNCAccumulator(6, 16), H, y), gnc2=False).nc2_etf_floor == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        etf_error_floor(1, 3)
    with pytest.raises(ValueError, match="dim"):
        etf_error_floor(5, 0)


def test_gnc2_view_equals_the_hull_solver_and_theory():
    """With W, nc_metrics carries GNC2 (ρ of the row-normalised W with its certificate,
    as gnc2(W) / one_vs_rest_distance give it) and the bounds on max ρ from
    theory.rho_bounds; gnc2=False skips it and a GNC2Result is reused as given."""
    from gnc_ext import one_vs_rest_distance, theory
    from gnc_ext.metrics import gnc2

    K, d = 30, 4  # K > d + 1
    H, y, W = make_data(K, d, 3, seed=31)
    acc = feed(GNCAccumulator(K, d), H, y)
    r = nc_metrics(acc, W)
    ovr = one_vs_rest_distance(torch.nn.functional.normalize(W, dim=1))
    assert r.gnc2_rho == pytest.approx(float(ovr.rho), rel=1e-12)
    assert r.gnc2_rho_lower == pytest.approx(float(ovr.rho_lower), rel=1e-12)
    assert r.gnc2_rho_lower <= r.gnc2_rho + 1e-15
    b = theory.rho_bounds(d, K)
    assert (r.gnc2_rho_max_lower, r.gnc2_rho_max_upper) == (float(b.lower), float(b.upper))
    assert r.gnc2_rho <= r.gnc2_rho_max_upper
    assert r.nc2_etf_floor > 0 and r.nc2_etf_error >= r.nc2_etf_floor
    assert nc_metrics(acc, W, gnc2=False).gnc2_rho is None
    g = gnc2(W)
    g.rho = 0.123  # a given result is used as it is (no second solve)
    assert nc_metrics(acc, W, gnc2=g).gnc2_rho == 0.123
    assert nc_metrics(acc).gnc2_rho is None  # no classifier
    # K <= d + 1: max ρ = K/(K − 1) exactly (Thm 3.3); a simplex ETF classifier attains it
    K, d = 5, 8
    E = torch.eye(K, dtype=torch.float64) - 1.0 / K
    Wetf = E @ torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0][:K]
    H, y, _ = make_data(K, d, 3, seed=32)
    r = nc_metrics(feed(GNCAccumulator(K, d), H, y), Wetf)
    assert r.gnc2_rho_max_lower == pytest.approx(K / (K - 1), rel=1e-12)
    assert r.gnc2_rho_max_upper == pytest.approx(K / (K - 1), rel=1e-12)
    assert r.gnc2_rho == pytest.approx(K / (K - 1), rel=1e-9)
    for bad, exc in (("yes", ValueError), (1, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="gnc2"):
            nc_metrics(acc, W, gnc2=bad)
    with pytest.raises(ValueError, match="gnc2"):
        nc_metrics(acc, gnc2=g)


def test_evaluate_reuses_gnc2_and_reports_ncc_in_the_suite():
    K, d = 12, 5
    H, y, W = make_data(K, d, 6, seed=41)
    r = evaluate(None, (H, y), W=W, progress=False, nc=True)
    assert r.nc.gnc2_rho == r.gnc2.rho and r.nc.gnc2_rho_lower == r.gnc2.rho_lower
    assert r.nc.ncc_accuracy == r.ncc_accuracy and r.nc.ncc_samples == H.shape[0]
    assert r.nc.normalized is True
