"""one_vs_rest_distance / one_vs_one_distance against closed forms (Thm 3.3), an
independent float64 brute-force solver, an independent NNLS-based solver, and
geometric properties."""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import gnc_ext
from gnc_ext.geometry import OneVsOneResult, OneVsRestResult

DATA = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------- helpers
def rand_orth(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def unit_rows(K, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    return (W / W.norm(dim=1, keepdim=True)).to(dtype)


def polygon(K, seed):
    g = torch.Generator().manual_seed(seed)
    a = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K + float(torch.rand(1, generator=g)) * 6.0
    return torch.stack([a.cos(), a.sin()], 1)


def simplex_etf(K, d, seed):
    P = rand_orth(d, seed)[:, :K]  # d x K orthonormal columns
    M = math.sqrt(K / (K - 1)) * P @ (torch.eye(K, dtype=torch.float64) - torch.ones(K, K, dtype=torch.float64) / K)
    return M.T.contiguous()


def affine_min_norm(P, x):
    """min ||x - P^T v|| s.t. sum v = 1 (no sign constraint), via the KKT system; None if singular."""
    s = P.shape[0]
    G = P @ P.T
    A = np.zeros((s + 1, s + 1))
    A[:s, :s] = 2 * G
    A[:s, s] = 1
    A[s, :s] = 1
    rhs = np.concatenate([2 * P @ x, [1.0]])
    if np.linalg.cond(A) > 1e12:
        return None
    v = np.linalg.solve(A, rhs)[:s]
    return v


def brute_force_distance(W, k):
    """Exact float64 distance of w_k to conv(others) by enumerating supports of size <= d+1:
    the optimum is the affine projection onto the span of some face with non-negative
    weights; every such candidate is a hull point, so the minimum over them is exact."""
    W = np.asarray(W, dtype=np.float64)
    K, d = W.shape
    others = [j for j in range(K) if j != k]
    best = math.inf
    for s in range(1, min(len(others), d + 1) + 1):
        for S in itertools.combinations(others, s):
            P = W[list(S)]
            v = affine_min_norm(P, W[k])
            if v is None or v.min() < -1e-12:
                continue
            v = np.clip(v, 0, None)
            v /= v.sum()
            best = min(best, float(np.linalg.norm(W[k] - v @ P)))
    return best


def nnls_distance(W, k, lam=1e3):
    """Independent reference: NNLS on [M; lam 1^T] v = [w_k; lam] gives the support, then the
    exact affine KKT solve on that support polishes the value (checked feasible)."""
    W = np.asarray(W, dtype=np.float64)
    K, d = W.shape
    others = np.array([j for j in range(K) if j != k])
    A = np.vstack([W[others].T, lam * np.ones((1, len(others)))])
    b = np.concatenate([W[k], [lam]])
    v, _ = nnls(A, b, maxiter=50 * len(others))
    S = others[v > 1e-9 * v.max()]
    for _ in range(20):  # polish: exact affine solve; drop negative weights if any
        vv = affine_min_norm(W[S], W[k])
        if vv is None:
            break
        if vv.min() >= -1e-13:
            vv = np.clip(vv, 0, None)
            vv /= vv.sum()
            return float(np.linalg.norm(W[k] - vv @ W[S]))
        S = S[vv > vv.min()]
    v = v / v.sum()
    return float(np.linalg.norm(W[k] - v @ W[others]))


def check_certificate(r: OneVsRestResult, W: torch.Tensor, tol: float):
    W64 = W.double()
    K = W.shape[0]
    assert torch.all(r.lower <= r.distance)
    assert r.max_gap <= tol
    # supports are convex combinations reproducing the projection
    for k in range(K):
        sup = r.support[k][r.support[k] >= 0]
        wt = r.weights[k][: sup.numel()]
        assert torch.all(wt >= 0) and abs(float(wt.sum()) - 1) < 1e-12
        assert k not in sup.tolist()
        p = (wt.unsqueeze(1) * W64[sup]).sum(0)
        assert torch.allclose(p, r.projection[k].double(), atol=1e-12, rtol=0)
        assert abs(float((W64[k] - p).norm()) - float(r.distance[k])) < 1e-12
    # every other w_j on the far side of the hyperplane through p_k with normal w_k - p_k
    U = r.feature.double()
    P = r.projection.double()
    S = W64 @ U.T  # S[j, k] = <w_j, u_k>
    margin = S - (P * U).sum(1).unsqueeze(0)  # <w_j - p_k, u_k>
    margin.fill_diagonal_(-math.inf)
    nz = r.distance > 0
    assert float(margin[:, nz].max()) <= tol + 1e-12


# ---------------------------------------------------------------- closed forms (Thm 3.3)
@pytest.mark.parametrize("K", [3, 4, 5, 8, 17, 50])
def test_regular_polygon(K):
    W = polygon(K, K)
    r = gnc_ext.one_vs_rest_distance(W)
    expect = 1 - math.cos(2 * math.pi / K)
    assert torch.allclose(r.distance, torch.full((K,), expect, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(r.rho - expect) < 1e-12 and abs(r.rho_lower - expect) < 1e-10
    assert r.max_gap <= 1e-10
    assert r.rattlers.numel() == 0  # Thm 3.6: no rattlers for d = 2
    check_certificate(r, W, 1e-10)
    if K >= 4:  # the projection is the midpoint of the two neighbours
        for k in range(K):
            sup = sorted(r.support[k][r.support[k] >= 0].tolist())
            assert sup == sorted([(k - 1) % K, (k + 1) % K])
    # fp32 input of the same configuration
    r32 = gnc_ext.one_vs_rest_distance(W.float())
    assert abs(r32.rho - expect) < 1e-6 and r32.max_gap <= 1e-6


@pytest.mark.parametrize("K,d", [(2, 3), (3, 2), (4, 3), (5, 7), (9, 8), (12, 20)])
def test_simplex_etf(K, d):
    W = simplex_etf(K, d, seed=K + d) if K <= d else None
    if W is None:  # K = d + 1: build in R^K then rotate into R^d via the ETF's span
        full = math.sqrt(K / (K - 1)) * (torch.eye(K, dtype=torch.float64) - 1.0 / K)  # rows ⟂ 1
        # the ETF lies in the hyperplane orthogonal to 1; map that (K-1)-dim subspace to R^d
        Q = torch.linalg.qr(torch.cat([torch.ones(K, 1, dtype=torch.float64), torch.randn(K, K - 1, dtype=torch.float64)], 1))[0]
        W = (full @ Q[:, 1:]) @ rand_orth(d, K)[: K - 1]
    W = W / W.norm(dim=1, keepdim=True)
    r = gnc_ext.one_vs_rest_distance(W)
    expect = K / (K - 1)
    assert torch.allclose(r.distance, torch.full((K,), expect, dtype=torch.float64), atol=1e-12, rtol=0)
    assert r.max_gap <= 1e-10 and r.rattlers.numel() == 0
    # projection of w_k is the centroid of the others: weights 1/(K-1)
    assert torch.allclose(r.weights[r.support >= 0], torch.tensor(1.0 / (K - 1), dtype=torch.float64), atol=1e-10)
    check_certificate(r, W, 1e-10)


@pytest.mark.parametrize("d,K", [(3, 5), (3, 6), (5, 7), (5, 10), (8, 13)])
def test_cross_polytope_subsets(d, K):
    E = torch.cat([torch.eye(d, dtype=torch.float64), -torch.eye(d, dtype=torch.float64)])
    # keep K vertices: all +e_i, and -e_i for the first K - d axes (K - d >= 2 antipodal pairs)
    idx = list(range(d)) + list(range(d, d + (K - d)))
    W = E[idx] @ rand_orth(d, 100 + K)
    r = gnc_ext.one_vs_rest_distance(W)
    assert torch.allclose(r.distance, torch.ones(K, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(r.rho - 1) < 1e-12 and r.max_gap <= 1e-10
    check_certificate(r, W, 1e-10)


# ---------------------------------------------------------------- independent solvers
@pytest.mark.parametrize("seed", range(6))
def test_brute_force_small(seed):
    K, d = [(5, 2), (6, 3), (7, 3), (8, 4), (8, 3), (7, 5)][seed]
    W = unit_rows(K, d, seed)
    ref = np.array([brute_force_distance(W.numpy(), k) for k in range(K)])
    r = gnc_ext.one_vs_rest_distance(W)
    rel = np.abs(r.distance.numpy() - ref) / np.maximum(ref, 1e-300)
    assert rel.max() <= 1e-9, (rel.max(), ref, r.distance)
    assert r.max_gap <= 1e-10
    assert np.all(r.lower.numpy() <= ref * (1 + 1e-12) + 1e-15)
    check_certificate(r, W, 1e-10)
    # fp32 input: the reference is computed on the fp32 numbers upcast to fp64
    W32 = W.float()
    ref32 = np.array([brute_force_distance(W32.double().numpy(), k) for k in range(K)])
    r32 = gnc_ext.one_vs_rest_distance(W32)
    assert (np.abs(r32.distance.numpy() - ref32) / ref32).max() <= 1e-5
    assert r32.max_gap <= 1e-6


@pytest.mark.parametrize("K,d,m", [(40, 5, None), (60, 6, 3), (150, 12, 4), (120, 30, 8)])
def test_nnls_reference(K, d, m):
    """Column generation (small candidate lists force several pricing rounds) vs NNLS."""
    W = unit_rows(K, d, K + d)
    r = gnc_ext.one_vs_rest_distance(W, candidates=m)
    ks = range(K) if K <= 60 else range(0, K, 5)
    ref = np.array([nnls_distance(W.numpy(), k) for k in ks])
    got = r.distance.numpy()[list(ks)]
    assert (np.abs(got - ref) / ref).max() <= 1e-9
    assert r.max_gap <= 1e-10 and r.stats["converged"]
    if m is not None:
        assert r.stats["rounds"] >= 2  # the pricing pass did add violators
    check_certificate(r, W, 1e-10)


def test_sloane_packing_124():
    W = torch.from_numpy(np.load(DATA / "sloane_pack_3_124.npy")).double()
    assert W.shape == (124, 3)
    r = gnc_ext.one_vs_rest_distance(W)
    assert r.max_gap <= 1e-10
    check_certificate(r, W, 1e-10)
    ref = np.array([nnls_distance(W.numpy(), k) for k in range(124)])
    assert (np.abs(r.distance.numpy() - ref) / ref).max() <= 1e-9
    o = gnc_ext.one_vs_one_distance(W)
    assert abs(o.min - 0.32926) < 5e-5  # data/README.md: minimum pairwise chord
    assert torch.all(r.distance <= o.distance + 1e-12)
    # rattlers are exactly the classes certified above rho
    assert r.rattlers.tolist() == torch.nonzero(r.lower > r.rho + 1e-10).flatten().tolist()


# ---------------------------------------------------------------- special cases
def test_duplicate_class_distance_zero():
    W = unit_rows(10, 4, 3)
    W[7] = W[2]
    r = gnc_ext.one_vs_rest_distance(W)
    assert float(r.distance[2]) == 0.0 and float(r.distance[7]) == 0.0
    assert float(r.lower[2]) == 0.0 and float(r.lower[7]) == 0.0
    assert r.rho == 0.0 and r.max_gap <= 1e-10
    assert torch.all(r.feature[2] == 0) and torch.all(r.feature[7] == 0)
    others = [k for k in range(10) if k not in (2, 7)]
    ref = np.array([brute_force_distance(W.numpy(), k) for k in others])
    assert np.allclose(r.distance[others].numpy(), ref, rtol=1e-9, atol=0)


def test_rattler_pole():
    """An equatorial 12-gon plus the north pole: the pole is at distance 1 (the hull of the
    polygon contains the origin), the polygon vertices much closer: the pole rattles."""
    P = torch.cat([polygon(12, 0), torch.zeros(12, 1, dtype=torch.float64)], 1)
    W = torch.cat([P, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]) @ rand_orth(3, 5)
    r = gnc_ext.one_vs_rest_distance(W)
    assert abs(float(r.distance[12]) - 1) < 1e-12
    assert r.rattlers.tolist() == [12]
    ref = np.array([brute_force_distance(W.numpy(), k) for k in range(13)])
    assert np.allclose(r.distance.numpy(), ref, rtol=1e-9, atol=0)


def test_result_fields_and_dtypes():
    W = unit_rows(30, 5, 1, torch.float32)
    r = gnc_ext.one_vs_rest_distance(W)
    assert isinstance(r, OneVsRestResult)
    assert r.distance.dtype == torch.float64 and r.lower.dtype == torch.float64
    assert r.projection.shape == (30, 5) and r.projection.dtype == torch.float32
    assert r.feature.shape == (30, 5)
    assert r.support.dtype == torch.int64 and r.support.shape == r.weights.shape and r.support.shape[0] == 30
    assert r.rattlers.dtype == torch.int64 and r.rattlers.dim() == 1
    assert torch.allclose(r.feature.double().norm(dim=1), torch.ones(30, dtype=torch.float64), atol=1e-6)
    r2 = gnc_ext.one_vs_rest_distance(W, return_projection=False)
    assert r2.projection is None and r2.feature is None
    assert torch.equal(r2.distance, r.distance)
    for dt in (torch.float16, torch.bfloat16):
        Wl = unit_rows(30, 5, 1, dt)
        rl = gnc_ext.one_vs_rest_distance(Wl, normalize=True)
        Wn = gnc_ext.normalize_rows(Wl).double()  # the numbers actually solved for
        assert rl.max_gap <= 1e-6
        ref = np.array([nnls_distance(Wn.numpy(), k) for k in range(30)])
        assert (np.abs(rl.distance.numpy() - ref) / ref).max() <= 1e-9


def test_normalize_flag():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(25, 4, generator=g, dtype=torch.float64) * 3
    r = gnc_ext.one_vs_rest_distance(X, normalize=True)
    r2 = gnc_ext.one_vs_rest_distance(X / X.norm(dim=1, keepdim=True))
    assert torch.allclose(r.distance, r2.distance, atol=1e-13, rtol=0)


# ---------------------------------------------------------------- gradients
def test_gradcheck_distance():
    W = unit_rows(9, 3, 11).requires_grad_(True)

    def f(X):
        return gnc_ext.one_vs_rest_distance(X, normalize=True).distance

    assert torch.autograd.gradcheck(f, (W,), eps=1e-6, atol=1e-7)
    # and without normalisation: the envelope formula directly
    W2 = unit_rows(8, 4, 12).requires_grad_(True)
    r = gnc_ext.one_vs_rest_distance(W2)
    g = torch.randn(8, dtype=torch.float64)
    (r.distance * g).sum().backward()
    expect = g.unsqueeze(1) * r.feature
    for k in range(8):
        for j, v in zip(r.support[k].tolist(), r.weights[k].tolist()):
            if j >= 0:
                expect[j] -= g[k] * v * r.feature[k]
    assert torch.allclose(W2.grad, expect, atol=1e-12)
    # finite differences of rho through the envelope (support stable at a generic W)
    W3 = unit_rows(10, 3, 13).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda X: gnc_ext.one_vs_rest_distance(X, normalize=True).distance.min(),
                                    (W3,), eps=1e-6, atol=1e-7)


def test_opcheck_envelope_op():
    W = unit_rows(7, 3, 5).requires_grad_(True)
    r = gnc_ext.one_vs_rest_distance(W.detach())
    args = (W, r.distance, r.feature, r.support, r.weights)
    torch.library.opcheck(torch.ops.gnc_ext.hull_envelope.default, args)


def test_gradient_fp32_dtype():
    W = unit_rows(12, 4, 2, torch.float32).requires_grad_(True)
    r = gnc_ext.one_vs_rest_distance(W)
    r.distance.sum().backward()
    assert W.grad.dtype == torch.float32 and torch.isfinite(W.grad).all()


# ---------------------------------------------------------------- one-vs-one
@pytest.mark.parametrize("K,d", [(2, 1), (10, 3), (50, 4), (300, 16)])
def test_one_vs_one_brute_force(K, d):
    W = unit_rows(K, d, K)
    o = gnc_ext.one_vs_one_distance(W)
    assert isinstance(o, OneVsOneResult)
    D = torch.cdist(W, W)
    D.fill_diagonal_(math.inf)
    ref, nb = D.min(dim=1)
    assert torch.allclose(o.distance, ref, atol=1e-12, rtol=0)
    assert torch.equal(o.neighbor, nb)
    assert abs(o.min - float(ref.min())) < 1e-12
    W32 = W.float()
    o32 = gnc_ext.one_vs_one_distance(W32)
    assert torch.allclose(o32.distance, torch.cdist(W32.double(), W32.double()).fill_diagonal_(math.inf).min(1).values,
                          atol=1e-12, rtol=0)


def test_one_vs_one_known_codes():
    octa = torch.cat([torch.eye(3), -torch.eye(3)]).double() @ rand_orth(3, 1)
    assert abs(gnc_ext.one_vs_one_distance(octa).min - math.sqrt(2)) < 1e-12
    phi = (1 + 5 ** 0.5) / 2
    ico = torch.tensor([[0, s1, s2 * phi] for s1 in (-1, 1) for s2 in (-1, 1)], dtype=torch.float64)
    ico = torch.cat([ico, ico[:, [1, 2, 0]], ico[:, [2, 0, 1]]])
    ico = ico / ico.norm(dim=1, keepdim=True)
    # icosahedron: min angle with cos 1/sqrt(5): chord sqrt(2 - 2/sqrt(5))
    assert abs(gnc_ext.one_vs_one_distance(ico).min - math.sqrt(2 - 2 / math.sqrt(5))) < 1e-12
    W = unit_rows(20, 3, 0).requires_grad_(True)
    o = gnc_ext.one_vs_one_distance(W)
    o.distance.sum().backward()
    assert W.grad is not None and torch.isfinite(W.grad).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [gnc_ext.one_vs_rest_distance, gnc_ext.one_vs_one_distance])
def test_bad_inputs(fn):
    good = unit_rows(6, 3, 0)
    with pytest.raises(TypeError, match="W"):
        fn(good.numpy())
    with pytest.raises(TypeError, match="W"):
        fn(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="W"):
        fn(torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="W"):
        fn(torch.empty(0, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="W"):
        fn(torch.empty(4, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match="W"):
        fn(good[:1])
    for bad in (math.nan, math.inf):
        X = good.clone()
        X[2, 1] = bad
        with pytest.raises(ValueError, match="W"):
            fn(X)
        with pytest.raises(ValueError, match="W"):
            fn(X, normalize=True)
    with pytest.raises(ValueError, match="W: rows must have unit"):
        fn(good * 1.01)
    fn(good * 1.01, normalize=True)  # fine when asked to normalise
    with pytest.raises(ValueError, match="W"):
        fn(torch.zeros(4, 3, dtype=torch.float64), normalize=True)
    with pytest.raises(TypeError, match="normalize"):
        fn(good, normalize=1)


def test_unconverged_run_warns_but_stays_valid():
    W = unit_rows(200, 12, 9)
    with pytest.warns(RuntimeWarning, match="tol"):
        r = gnc_ext.one_vs_rest_distance(W, candidates=2, max_add=1, max_rounds=1)
    assert not r.stats["converged"] and r.max_gap > 1e-10
    exact = gnc_ext.one_vs_rest_distance(W)
    # still a valid certificate: lower <= exact <= distance
    assert torch.all(r.lower <= exact.distance + 1e-12) and torch.all(exact.distance <= r.distance + 1e-12)


def test_bad_options():
    W = unit_rows(6, 3, 0)
    with pytest.raises(ValueError, match="tol"):
        gnc_ext.one_vs_rest_distance(W, tol=-1.0)
    with pytest.raises(ValueError, match="candidates"):
        gnc_ext.one_vs_rest_distance(W, candidates=0)
    with pytest.raises(TypeError, match="return_projection"):
        gnc_ext.one_vs_rest_distance(W, return_projection="yes")


# ---------------------------------------------------------------- devices
def test_cuda_matches_cpu(cuda_device):
    for dt in (torch.float32, torch.float64):
        W = unit_rows(700, 16, 4, dt)
        rc = gnc_ext.one_vs_rest_distance(W)
        rg = gnc_ext.one_vs_rest_distance(W.to(cuda_device))
        assert rg.distance.device.type == "cuda"
        assert torch.allclose(rg.distance.cpu(), rc.distance, atol=1e-9, rtol=0)
        assert torch.allclose(rg.lower.cpu(), rc.lower, atol=1e-9, rtol=0)
        assert rg.max_gap <= 1e-6
        o = gnc_ext.one_vs_one_distance(W.to(cuda_device))
        oc = gnc_ext.one_vs_one_distance(W)
        assert torch.allclose(o.distance.cpu(), oc.distance, atol=1e-12)


def test_device_closed_form(device):
    W = polygon(9, 1).to(device)
    r = gnc_ext.one_vs_rest_distance(W)
    assert abs(r.rho - (1 - math.cos(2 * math.pi / 9))) < 1e-12
    assert r.distance.device.type == device and r.max_gap <= 1e-10


# ---------------------------------------------------------------- native solver arguments
def _solve_problem(K=12, d=5, seed=8, device="cpu"):
    """Every class against all the others (n = K - 1 candidates), fp64 unit rows."""
    W = unit_rows(K, d, seed).to(device)
    classes = torch.arange(K, device=device)
    cand = torch.stack([torch.cat([torch.arange(k), torch.arange(k + 1, K)]) for k in range(K)]).to(device)
    return W, classes, cand, min(K - 1, d + 1)


def _solve_outputs(K, d, s, device, pad=0):
    """(proj, dist, support, weights, iters, status); pad > 0: support and weights are
    column slices of wider buffers with different row strides (s + pad, s + 2 pad)."""
    f64, i64 = dict(dtype=torch.float64, device=device), dict(dtype=torch.int64, device=device)
    sup = torch.full((K, s + pad), -7, **i64)[:, pad:]
    wt = torch.full((K, s + 2 * pad), float("nan"), **f64)[:, :s]
    return (torch.empty(K, d, **f64), torch.empty(K, **f64), sup, wt, torch.empty(K, **i64), torch.empty(K, **i64))


def test_native_solve_refuses_strided_or_overlapping_outputs():
    """dist / iters / status are written densely by the kernels (CPU and CUDA): a strided
    one is refused, as are output rows that overlap (an expanded weights) and outputs that
    share memory (before: accepted, and the results written to the wrong places)."""
    from gnc_ext.ops import hull as H

    W, classes, cand, s = _solve_problem()
    K, d = W.shape
    good = _solve_outputs(K, d, s, "cpu")
    H.solve(W, classes, cand, 1e-12, 500, *good)
    names = ("proj", "dist", "support", "weights", "iters", "status")
    for i, name in ((1, "dist"), (4, "iters"), (5, "status")):
        bad = list(_solve_outputs(K, d, s, "cpu"))
        bad[i] = torch.empty(2 * K, dtype=bad[i].dtype)[::2]
        with pytest.raises(ValueError, match=rf"{name}: must be contiguous \(stride 1\), got stride 2"):
            H.solve(W, classes, cand, 1e-12, 500, *bad)
    bad = list(_solve_outputs(K, d, s, "cpu"))
    bad[3] = torch.zeros(1, s, dtype=torch.float64).expand(K, s)
    with pytest.raises(ValueError, match=r"weights: rows overlap \(row stride 0 < row length"):
        H.solve(W, classes, cand, 1e-12, 500, *bad)
    bad = list(_solve_outputs(K, d, s, "cpu"))
    buf = torch.empty(K, d + s, dtype=torch.float64)
    bad[0], bad[3] = buf[:, :d], buf[:, d:]
    with pytest.raises(ValueError, match=r"proj: must not share memory with weights"):
        H.solve(W, classes, cand, 1e-12, 500, *bad)
    bad = list(_solve_outputs(K, d, s, "cpu"))
    with pytest.raises(ValueError, match=r"proj: must not share memory with W"):
        H.solve(W, classes, cand, 1e-12, 500, W[:, :d], *bad[1:])
    assert len(names) == len(good)


def test_solve_honours_each_outputs_own_row_stride(device):
    """support, weights and the warm start's init_support / init_weights with four different
    row strides give the results of contiguous buffers (the CUDA kernel used to index
    weights with support's stride and init_weights with init_support's)."""
    from gnc_ext.ops import hull as H

    W, classes, cand, s = _solve_problem(device=device)
    K, d = W.shape
    ref = _solve_outputs(K, d, s, device)
    H.solve(W, classes, cand, 1e-13, 500, *ref)
    got = _solve_outputs(K, d, s, device, pad=3)
    H.solve(W, classes, cand, 1e-13, 500, *got)
    for a, b in zip(ref, got):
        assert torch.equal(torch.nan_to_num(a, 0.0), torch.nan_to_num(b, 0.0))
    # warm start from a corral stored with other strides than the outputs'
    isup = torch.full((K, s + 5), -1, dtype=torch.int64, device=device)[:, 5:]
    iwt = torch.zeros((K, s + 1), dtype=torch.float64, device=device)[:, 1:]
    isup.copy_(ref[2])
    iwt.copy_(torch.where(ref[2] >= 0, ref[3], torch.zeros_like(ref[3])))
    warm_ref = _solve_outputs(K, d, s, device)
    H.solve(W, classes, cand, 1e-13, 500, *warm_ref, isup.contiguous(), iwt.contiguous())
    warm = _solve_outputs(K, d, s, device, pad=2)
    H.solve(W, classes, cand, 1e-13, 500, *warm, isup, iwt)
    for a, b in zip(warm_ref, warm):
        assert torch.equal(torch.nan_to_num(a, 0.0), torch.nan_to_num(b, 0.0))
    torch.testing.assert_close(warm[1], ref[1], atol=1e-12, rtol=0)
