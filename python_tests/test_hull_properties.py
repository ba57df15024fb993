"""Hypothesis properties of one_vs_rest_distance: invariances and certificate geometry."""
import math

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gnc_ext

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _W(K, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    return (W / W.norm(dim=1, keepdim=True)).to(dtype)


def _orth(d, seed):
    g = torch.Generator().manual_seed(seed + 7)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


shapes = st.tuples(st.integers(2, 40), st.integers(1, 8), st.integers(0, 10_000))


@settings(**SETTINGS)
@given(shapes)
def test_rotation_and_permutation_invariance(args):
    K, d, seed = args
    W = _W(K, d, seed)
    r = gnc_ext.one_vs_rest_distance(W)
    Q = _orth(d, seed)
    rr = gnc_ext.one_vs_rest_distance(W @ Q)
    assert torch.allclose(rr.distance, r.distance, atol=1e-9, rtol=0)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(seed))
    rp = gnc_ext.one_vs_rest_distance(W[perm])
    assert torch.allclose(rp.distance, r.distance[perm], atol=1e-9, rtol=0)
    # the optimal feature rotates with W (where it is unique: distance > 0)
    nz = r.distance > 1e-8
    assert torch.allclose(rr.feature[nz], r.feature[nz] @ Q, atol=1e-6, rtol=0)


@settings(**SETTINGS)
@given(shapes, st.sampled_from([torch.float64, torch.float32]))
def test_certificate_geometry(args, dtype):
    K, d, seed = args
    W = _W(K, d, seed, dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-7
    r = gnc_ext.one_vs_rest_distance(W, tol=tol)
    W64 = W.double()
    assert torch.all(r.lower <= r.distance) and torch.all(r.lower >= 0)
    assert r.max_gap <= tol and r.stats["converged"]
    assert r.rho_lower <= r.rho
    # distance <= one-vs-one nearest-neighbour distance (a vertex is a hull point)
    o = gnc_ext.one_vs_one_distance(W)
    assert torch.all(r.distance <= o.distance + 1e-12)
    # supports: convex combinations of other classes reproducing the projection
    P = torch.empty(K, d, dtype=torch.float64)  # p_k rebuilt in fp64 from support/weights
    for k in range(K):
        m = r.support[k] >= 0
        sup, wt = r.support[k][m], r.weights[k][m]
        assert torch.all(wt > 0) and abs(float(wt.sum()) - 1) < 1e-12
        assert k not in sup.tolist() and sup.numel() <= d + 1
        P[k] = (wt.unsqueeze(1) * W64[sup]).sum(0)
        assert torch.allclose(P[k], r.projection[k].double(), atol=1e-6 if dtype == torch.float32 else 1e-12)
        assert abs(float((W64[k] - P[k]).norm()) - float(r.distance[k])) < 1e-12
    # every other w_j lies on the far side of the hyperplane through p_k, normal w_k - p_k
    U = (W64 - P) / r.distance.clamp_min(1e-300).unsqueeze(1)
    margin = W64 @ U.T - (P * U).sum(1).unsqueeze(0)  # [j, k] = <w_j - p_k, u_k>
    margin.fill_diagonal_(-math.inf)
    nz = r.distance > 1e-6
    if bool(nz.any()):
        assert float(margin[:, nz].max()) <= tol + 1e-12
    # rattlers: exactly the classes certified strictly above rho
    assert r.rattlers.tolist() == torch.nonzero(r.lower > r.rho + tol).flatten().tolist()


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 30), st.integers(2, 6), st.integers(0, 1000))
def test_duplicates_give_zero(K, d, seed):
    W = _W(K, d, seed)
    W[K - 1] = W[0]
    r = gnc_ext.one_vs_rest_distance(W)
    assert float(r.distance[0]) == 0.0 and float(r.distance[K - 1]) == 0.0
    assert r.rho == 0.0 and r.max_gap <= 1e-10
