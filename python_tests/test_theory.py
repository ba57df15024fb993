"""gnc_ext.theory: closed forms (Thm 3.3) against independent geometry, Thm 3.9 bounds
(log-gamma evaluation against direct Gamma, order, monotonicity, consistency with the
exact values), the feature-dimension design functions, constructors, bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gnc_ext import theory


# ----------------------------------------------------------- independent references
def _dist_to_hull(w: np.ndarray, others: np.ndarray) -> float:
    """Distance from w to conv(others) by SLSQP on the simplex, verified with the
    variational inequality of the projection: p is the projection iff
    max_j <o_j - p, w - p> <= 0."""
    m = len(others)
    best = None
    for start in (np.full(m, 1.0 / m), np.eye(m)[np.argmax(others @ w)]):
        res = minimize(
            lambda v: float(np.sum((w - v @ others) ** 2)),
            start,
            jac=lambda v: -2.0 * others @ (w - v @ others),
            bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones(m)}],
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    p = best.x @ others
    r = w - p
    # optimality certificate of the projection (Lemma C.4 duality)
    assert np.max((others - p) @ r) <= 1e-7
    return float(np.linalg.norm(r))


def _rho_brute(W: np.ndarray) -> float:
    return min(_dist_to_hull(W[k], np.delete(W, k, axis=0)) for k in range(len(W)))


def _rho_polygon_geometric(W: np.ndarray) -> float:
    """For points on a circle: the hull of the others is the convex polygon through
    them in angular order; the distance from an outside point is the minimum distance
    to its edges (point-to-segment)."""
    K = len(W)
    best = math.inf
    for k in range(K):
        o = np.delete(W, k, axis=0)
        o = o[np.argsort(np.arctan2(o[:, 1], o[:, 0]))]
        dk = math.inf
        for a, b in zip(o, np.roll(o, -1, axis=0)):
            ab = b - a
            t = np.clip(np.dot(W[k] - a, ab) / np.dot(ab, ab), 0.0, 1.0)
            dk = min(dk, float(np.linalg.norm(W[k] - (a + t * ab))))
        best = min(best, dk)
    return best


# ----------------------------------------------------------------- closed forms
@pytest.mark.parametrize("K", range(3, 13))
def test_polygon_rho_matches_geometry(K):
    W = theory.polygon(K, phase=0.3).numpy()
    assert W.shape == (K, 2)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-15)
    geo = _rho_polygon_geometric(W)
    assert theory.rho_closed_form(2, K) == pytest.approx(geo, abs=1e-12)
    if K <= 8:
        assert _rho_brute(W) == pytest.approx(geo, abs=1e-7)
    # Tammes value: the minimal chord of the polygon
    D = np.linalg.norm(W[:, None] - W[None], axis=-1) + 10 * np.eye(K)
    assert theory.one_vs_one_closed_form(2, K) == pytest.approx(D.min(), abs=1e-12)


@pytest.mark.parametrize("K,d", [(2, 1), (2, 5), (3, 2), (4, 3), (5, 4), (6, 9), (9, 8), (17, 16)])
def test_simplex_etf(K, d):
    for seed in (None, 7):
        W = theory.simplex_etf(K, d, seed=seed)
        assert W.dtype == torch.float64 and W.shape == (K, d)
        G = (W @ W.T).numpy()
        np.testing.assert_allclose(np.diag(G), 1.0, atol=1e-14)
        off = G[~np.eye(K, dtype=bool)]
        np.testing.assert_allclose(off, -1.0 / (K - 1), atol=1e-14)
        assert abs(G.sum()) < 1e-12  # centred
    assert theory.rho_closed_form(d, K) == pytest.approx(K / (K - 1), abs=1e-15)
    Wn = theory.simplex_etf(K, d, seed=3).numpy()
    if K <= 9:
        assert _rho_brute(Wn) == pytest.approx(K / (K - 1), abs=1e-7)
    D = np.linalg.norm(Wn[:, None] - Wn[None], axis=-1) + 10 * np.eye(K)
    assert theory.one_vs_one_closed_form(d, K) == pytest.approx(D.min(), abs=1e-12)


@pytest.mark.parametrize("d,K", [(2, 4), (3, 5), (3, 6), (4, 6), (4, 8), (6, 9), (8, 16), (16, 18), (16, 32)])
def test_cross_polytope(d, K):
    W = theory.cross_polytope(K, d, seed=11).numpy()
    assert W.shape == (K, d)
    G = W @ W.T
    off = G[~np.eye(K, dtype=bool)]
    assert np.all(np.isclose(off, 0.0, atol=1e-14) | np.isclose(off, -1.0, atol=1e-14))
    assert theory.rho_closed_form(d, K) == 1.0
    if K <= 9:
        assert _rho_brute(W) == pytest.approx(1.0, abs=1e-7)
    assert theory.one_vs_one_closed_form(d, K) == pytest.approx(math.sqrt(2.0), abs=1e-15)
    assert off.max() == pytest.approx(0.0, abs=1e-14)


def test_closed_form_cases_and_none():
    assert theory.rho_closed_form(1, 2) == 2.0
    assert theory.rho_closed_form(1, 3) == 0.0
    assert theory.rho_closed_form(2, 3) == pytest.approx(1.5)  # both formulas agree
    assert theory.rho_closed_form(2, 4) == pytest.approx(1.0)
    assert theory.rho_closed_form(3, 7) is None
    assert theory.rho_closed_form(10, 21) is None
    assert theory.rho_closed_form(10, 20) == 1.0
    assert theory.rho_closed_form(10, 11) == pytest.approx(1.1)
    # proven d=3 Tammes values against Sloane's table angles (degrees, 7 decimals)
    for K, deg in [(7, 77.8695421), (8, 74.8584922), (9, 70.5287794), (11, 63.4349488), (12, 63.4349488)]:
        c = theory.one_vs_one_closed_form(3, K)
        assert math.degrees(2 * math.asin(c / 2)) == pytest.approx(deg, abs=1e-7)
    assert theory.one_vs_one_closed_form(3, 13) is None
    assert theory.one_vs_one_closed_form(4, 24) is None  # 24-cell optimality is open


# ------------------------------------------------------------------------ bounds
def _bounds_direct(d, K):
    lo = 0.5 * ((math.sqrt(math.pi) / K) * math.gamma((d + 1) / 2) / math.gamma(d / 2 + 1)) ** (2 / (d - 1))
    up = 2.0 * ((2 * math.sqrt(math.pi) / K) * math.gamma((d + 1) / 2) / math.gamma(d / 2)) ** (1 / (d - 1))
    return lo, up


DS = [2, 3, 4, 10, 64, 512, 4096]
KS = [2, 10, 1000, 10**6, 10**9]


def test_bounds_against_direct_gamma():
    for d in [2, 3, 5, 10, 40, 100]:
        for K in [2, 7, 100, 10**4]:
            b = theory.rho_bounds(d, K)
            lo, up = _bounds_direct(d, K)
            assert b.thm39_lower == pytest.approx(lo, rel=1e-12)
            assert b.thm39_upper == pytest.approx(up, rel=1e-12)


def test_bounds_finite_ordered_monotone():
    prev_d = {}
    for d in DS:
        prev = None
        for K in KS:
            b = theory.rho_bounds(d, K)
            assert math.isfinite(b.thm39_lower) and math.isfinite(b.thm39_upper)
            assert 0.0 < b.thm39_lower <= b.thm39_upper
            assert b.thm39_lower < 0.5
            assert b.valid == (K >= math.sqrt(2 * math.pi * math.sqrt(math.e) * d))
            assert b.K_min == pytest.approx(math.sqrt(2 * math.pi * math.exp(0.5) * d))
            if prev is not None:  # decreasing in K
                assert b.thm39_lower < prev.thm39_lower and b.thm39_upper < prev.thm39_upper
            if K in prev_d and b.valid:  # increasing in d (where the theorem holds)
                assert b.thm39_lower > prev_d[K].thm39_lower and b.thm39_upper > prev_d[K].thm39_upper
            prev_d[K] = b
            prev = b
    # fine monotonicity in d of the lower bound (min_feature_dim's bisection relies on it)
    for K in [10, 1000, 10**9]:
        lows = [theory.rho_bounds(d, K).thm39_lower for d in range(2, 600)]
        assert all(a < b for a, b in zip(lows, lows[1:]))


def test_bounds_bracket_exact_values_where_valid():
    checked = 0
    for K in range(5, 400):  # d = 2: polygon is exact
        b = theory.rho_bounds(2, K)
        if b.valid:
            assert b.thm39_lower <= theory.rho_closed_form(2, K) <= b.thm39_upper
            checked += 1
    for d in [4, 8, 16, 32]:
        for K in range(2, 2 * d + 1):
            b = theory.rho_bounds(d, K)
            if b.valid:
                assert b.thm39_lower <= theory.rho_closed_form(d, K) <= b.thm39_upper
                checked += 1
    # d = 3 best-known Tammes codes give feasible one-vs-rest values: rho >= 1 - cos(theta)
    # only for codes whose Delaunay caps are triangles; we check the weaker known fact
    # that the optimum sits between the bounds for the exactly known icosahedron case:
    b = theory.rho_bounds(3, 12)
    assert b.valid and b.thm39_lower <= 1 - 1 / math.sqrt(5) <= b.thm39_upper
    assert checked > 400


def _exact_thm33(d, K):
    """The Thm 3.3 optima, restated here from the paper (not from gnc_ext.theory)."""
    if K <= d + 1:
        return K / (K - 1)
    if K <= 2 * d:
        return 1.0
    if d == 2:
        return 1.0 - math.cos(2.0 * math.pi / K)
    return None


def test_rho_bounds_exact_where_thm33_applies():
    n = 0
    for d in range(2, 12):
        for K in range(2, 3 * d + 5):
            v = _exact_thm33(d, K)
            if v is None:
                continue
            b = theory.rho_bounds(d, K)
            assert b.lower == pytest.approx(v, rel=1e-12) and b.upper == pytest.approx(v, rel=1e-12)
            assert b.lower_source == b.upper_source and b.upper_source.startswith("exact")
            n += 1
    assert n > 120


def test_rho_bounds_upper_is_the_tightest_valid_one():
    # the issue's case: Thm 3.9's upper bound is 1.96, but no code with K > 2d exceeds 1
    b = theory.rho_bounds(512, 10**6)
    assert b.thm39_upper == pytest.approx(1.962, abs=1e-3)
    assert b.upper == 1.0 < math.sqrt(2.0) and "Thm 3.3" in b.upper_source
    assert b.lower == b.thm39_lower and b.lower_source == "Thm 3.9 lower bound"
    # large K: Thm 3.9's upper bound is the tighter one
    b = theory.rho_bounds(4, 10**6)
    assert b.upper == b.thm39_upper < 1.0 and b.upper_source == "Thm 3.9 upper bound"
    for d in range(3, 40):
        prev = math.inf
        for K in list(range(2, 4 * d)) + [10**3, 10**5, 10**9]:
            b = theory.rho_bounds(d, K)
            assert 0.0 < b.lower <= b.upper <= prev + 1e-15  # max rho is non-increasing in K
            if K > 2 * d:
                assert b.upper <= 1.0
                assert b.valid and b.upper <= b.thm39_upper and b.lower >= b.thm39_lower
            prev = b.upper


def test_fejes_toth_bound_against_known_tammes_optima():
    # attained: equilateral triangle, tetrahedron, octahedron, icosahedron
    assert theory.fejes_toth_chord(3) == pytest.approx(math.sqrt(3.0), rel=1e-12)
    assert theory.fejes_toth_chord(4) == pytest.approx(math.sqrt(8.0 / 3.0), rel=1e-12)
    assert theory.fejes_toth_chord(6) == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert theory.fejes_toth_chord(12) == pytest.approx(math.sqrt(2.0 - 2.0 / math.sqrt(5.0)), rel=1e-12)
    # best-known codes stay below it (Sloane's K = 124 table entry, min chord 0.32926)
    W = np.load(Path(__file__).resolve().parent / "data" / "sloane_pack_3_124.npy")
    G = W @ W.T
    np.fill_diagonal(G, -2.0)
    chord = math.sqrt(2.0 - 2.0 * G.max())
    assert chord == pytest.approx(0.32926, abs=5e-6)
    b = theory.rho_bounds(3, 124)
    assert chord <= theory.fejes_toth_chord(124) == b.upper < b.thm39_upper
    assert "Fejes Toth" in b.upper_source
    with pytest.raises(ValueError, match="K"):
        theory.fejes_toth_chord(2)


def test_rho_bounds_bracket_feasible_codes():
    """Any code's rho (computed here by SLSQP, independently of gnc_ext) is at most
    max rho <= upper; the icosahedron's rho 1 - 1/sqrt(5) lies between the bounds."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    ico = np.array([(0, s1, s2 * phi) for s1 in (1, -1) for s2 in (1, -1)], dtype=float)
    ico = np.concatenate([ico, np.roll(ico, 1, axis=1), np.roll(ico, 2, axis=1)])
    ico /= np.linalg.norm(ico, axis=1, keepdims=True)
    r = _rho_brute(ico)
    assert r == pytest.approx(1.0 - 1.0 / math.sqrt(5.0), abs=1e-7)
    b = theory.rho_bounds(3, 12)
    assert b.lower <= r <= b.upper
    rng = np.random.default_rng(0)
    for d, K in [(3, 7), (3, 9), (4, 10), (5, 13)]:
        X = rng.standard_normal((K, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        assert _rho_brute(X) <= theory.rho_bounds(d, K).upper + 1e-9


def test_design_dim_names_its_source():
    # the case: d = 10000 comes from the cross-polytope, not from Thm 3.9
    r = theory.design_dim(20000, 0.5)
    assert r.d == 10000 and "cross-polytope" in r.source
    assert theory.design_dim(10**6, 0.2).source == "Thm 3.9 lower bound"
    assert "simplex" in theory.design_dim(8, 8 / 7).source
    assert "polygon" in theory.design_dim(6, 0.49).source
    assert theory.design_dim(2, 2.0) == theory.DimDesign(1, "antipodal pair (K = 2)")
    for K, rho in [(10, 0.3), (1000, 0.05), (10**6, 0.2), (50, 1.0)]:
        assert theory.design_dim(K, rho).d == theory.min_feature_dim(K, rho)


def test_bounds_invalid_region_flagged():
    b = theory.rho_bounds(3, 4)
    assert not b.valid  # 4 < sqrt(2 pi sqrt(e) 3) = 5.57
    assert theory.rho_bounds(3, 6).valid


# ----------------------------------------------------------------- design helpers
def _certified(d, K, rho):
    """Independent restatement of the sufficient conditions."""
    cf = theory.rho_closed_form(d, K)
    if cf is not None and cf >= rho:
        return True
    if d >= 2:
        b = theory.rho_bounds(d, K)
        if b.valid and b.thm39_lower >= rho:
            return True
    return False


@pytest.mark.parametrize("K", [2, 3, 5, 10, 100, 1000, 10**5, 10**9])
@pytest.mark.parametrize("rho", [1e-4, 0.01, 0.1, 0.4, 0.9, 1.0, 1.2])
def test_min_feature_dim(K, rho):
    if rho > K / (K - 1):
        with pytest.raises(ValueError, match="rho"):
            theory.min_feature_dim(K, rho)
        return
    d = theory.min_feature_dim(K, rho)
    assert isinstance(d, int) and d >= 1
    assert _certified(d, K, rho)
    if d > 1 and d < 10**6:
        assert not _certified(d - 1, K, rho)


def test_min_feature_dim_examples():
    assert theory.min_feature_dim(2, 2.0) == 1
    assert theory.min_feature_dim(8, 1.0) == 4  # cross-polytope
    assert theory.min_feature_dim(8, 8 / 7) == 7  # simplex
    assert theory.min_feature_dim(6, 1 - math.cos(2 * math.pi / 6)) == 2  # hexagon (rho = 1/2)
    # K = 1e6 classes at margin 0.1: small dimension suffices per Thm 3.9
    d = theory.min_feature_dim(10**6, 0.1)
    assert 2 < d < 200


@pytest.mark.parametrize("d", [1, 2, 3, 10, 64, 512, 4096])
@pytest.mark.parametrize("rho", [1e-3, 0.05, 0.3, 0.9, 1.0, 1.5, 2.0])
def test_max_classes(d, rho):
    K = theory.max_classes(d, rho)
    assert isinstance(K, int) and K >= 2
    if K < 10**15:
        assert _certified(d, K, rho) or K == 2
        assert not _certified(d, K + 1, rho)
        if K >= 3:
            assert theory.min_feature_dim(K, rho) <= d  # round trip
    if d >= 2 and rho <= 1.0:
        assert K >= 2 * d


def test_no_cancellation_at_large_K():
    K = 10**9
    assert theory.rho_closed_form(2, K) == pytest.approx(2 * math.pi**2 / K**2, rel=1e-9)
    assert theory.max_classes(2, 1e-30) > 10**15
    d = theory.min_feature_dim(10**15, 1e-3)  # huge K: no float-rounding loops
    assert _certified(d, 10**15, 1e-3)


def test_max_classes_exact_for_d2_and_huge_values():
    for rho in [0.01, 0.1, 0.5, 1.0, 1.5]:
        K = theory.max_classes(2, rho)
        assert theory.rho_closed_form(2, K) >= rho
        assert theory.rho_closed_form(2, K + 1) < rho
    big = theory.max_classes(512, 0.1)
    lg = (0.5 * math.log(math.pi) + math.lgamma(256.5) - math.lgamma(257) - 255.5 * math.log(0.2))
    assert math.log(big) == pytest.approx(lg, rel=1e-12)
    assert big > 10**170


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn,args", [
    (theory.rho_closed_form, (3.0, 5)),
    (theory.rho_closed_form, (3, True)),
    (theory.rho_bounds, ("3", 5)),
    (theory.min_feature_dim, (5.5, 0.1)),
    (theory.max_classes, (3, "0.1")),
    (theory.simplex_etf, (4.0,)),
])
def test_type_errors(fn, args):
    with pytest.raises(TypeError):
        fn(*args)


@pytest.mark.parametrize("fn,args,name", [
    (theory.rho_closed_form, (0, 5), "d"),
    (theory.rho_closed_form, (3, 1), "K"),
    (theory.rho_bounds, (1, 5), "d"),
    (theory.rho_bounds, (3, -2), "K"),
    (theory.min_feature_dim, (10, 0.0), "rho"),
    (theory.min_feature_dim, (10, 2.5), "rho"),
    (theory.min_feature_dim, (10, float("nan")), "rho"),
    (theory.min_feature_dim, (1, 0.5), "K"),
    (theory.max_classes, (0, 0.5), "d"),
    (theory.max_classes, (3, -0.1), "rho"),
    (theory.simplex_etf, (5, 3), "d"),
    (theory.cross_polytope, (7, 3), "K"),
    (theory.polygon, (1,), "K"),
])
def test_value_errors_name_argument(fn, args, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        fn(*args)


def test_numpy_integers_accepted():
    assert theory.rho_closed_form(np.int64(3), np.int32(4)) == pytest.approx(4 / 3)
    assert theory.rho_bounds(np.int64(3), np.int64(10**9)).lower > 0
