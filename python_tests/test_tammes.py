"""gnc_ext.solvers.tammes and assign_classes.

Reference values are independent of the solver: proven optima (closed forms, and for
d = 3 Sloane's table angles), regular polygons, simplex/cross-polytope cosines, and
brute-force assignment over all permutations."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gnc_ext import solvers

DATA = Path(__file__).resolve().parent / "data"
FAST = dict(restarts=16, batch=16, hops=0, progress=False)


def _max_cos_independent(W: torch.Tensor) -> float:
    D = torch.cdist(W, W)  # independent of the solver's cosine bookkeeping
    D = D + 10 * torch.eye(len(W), dtype=W.dtype)
    c = float(D.min())
    return 1.0 - c * c / 2.0


def _check_result(r, d, K):
    assert r.W.shape == (K, d) and r.W.dtype == torch.float64
    np.testing.assert_allclose(r.W.norm(dim=1).numpy(), 1.0, atol=1e-13)
    assert r.max_cosine == pytest.approx(_max_cos_independent(r.W), abs=1e-9)
    assert r.min_distance == pytest.approx(math.sqrt(2 - 2 * r.max_cosine), abs=1e-12)
    assert r.min_angle_deg == pytest.approx(math.degrees(math.acos(r.max_cosine)), abs=1e-9)
    assert r.time_s > 0 and r.restarts >= 1 and len(r.history) >= 1
    assert all(a <= b + 1e-15 for a, b in zip(r.history, r.history[1:]))  # best-so-far


@pytest.mark.parametrize("d,K,cos", [
    (3, 4, -1.0 / 3.0),             # tetrahedron (Fejes Toth 1943)
    (3, 6, 0.0),                    # octahedron
    (3, 12, 1.0 / math.sqrt(5.0)),  # icosahedron
])
def test_proven_optima_d3(d, K, cos):
    r = solvers.tammes(d, K, seed=0, **FAST)
    _check_result(r, d, K)
    assert abs(r.max_cosine - cos) < 1e-7
    assert r.optimal is True
    assert r.rattlers.numel() == 0


def test_24_cell_d4():
    # The 24-cell (cosine 1/2) is the best known 24-point code in R^4 (it solves the
    # kissing problem; its Tammes optimality is still open, Cohn et al. 2024).
    r = solvers.tammes(4, 24, seed=1, restarts=64, batch=32, hops=0, progress=False)
    _check_result(r, 4, 24)
    assert abs(r.max_cosine - 0.5) < 1e-7
    assert r.optimal is None
    assert r.contacts == 96  # each vertex of the 24-cell has 8 nearest neighbours


def test_d3_best_known_small():
    # Sloane's table (degrees): K = 7, 8, 9, 10 are proven optima; 24 the snub cube.
    for K, deg in [(7, 77.8695421), (8, 74.8584922), (9, 70.5287794), (10, 66.1468220)]:
        r = solvers.tammes(3, K, seed=K, **FAST)
        assert r.min_angle_deg == pytest.approx(deg, abs=2e-7)


@pytest.mark.parametrize("K", range(3, 13))
def test_d2_regular_polygon(K):
    r = solvers.tammes(2, K, seed=K, **FAST)
    _check_result(r, 2, K)
    assert r.min_distance == pytest.approx(2 * math.sin(math.pi / K), abs=1e-9)
    ang = np.sort(np.arctan2(r.W[:, 1].numpy(), r.W[:, 0].numpy()))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * np.pi]))
    np.testing.assert_allclose(gaps, 2 * np.pi / K, atol=1e-7)  # equally spaced


# (16, 24) is left out on purpose: its polish converges only linearly on some seeds
# (~20 s on the CI CPU); see the module docstring of gnc_ext.solvers.tammes.
@pytest.mark.parametrize("d,K", [(3, 5), (5, 6), (5, 8), (5, 10), (8, 9), (8, 12), (8, 16), (12, 18),
                                 (16, 17), (16, 20), (16, 28), (16, 32)])
def test_simplex_and_cross_polytope_regimes(d, K):
    r = solvers.tammes(d, K, seed=2, **FAST)
    _check_result(r, d, K)
    expect = -1.0 / (K - 1) if K <= d + 1 else 0.0
    assert abs(r.max_cosine - expect) < 1e-7
    assert r.optimal is True


def test_d1_and_result_fields():
    r = solvers.tammes(1, 3, progress=False)
    assert r.min_distance == 0.0 and r.optimal is True
    r = solvers.tammes(1, 2, progress=False)
    assert r.min_distance == 2.0


def test_seed_reproducible_and_progress_bar(capsys):
    a = solvers.tammes(3, 9, seed=5, restarts=8, batch=8, hops=0, progress=False)
    b = solvers.tammes(3, 9, seed=5, restarts=8, batch=8, hops=0, progress=True)
    assert torch.equal(a.W, b.W)


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    import sys

    from gnc_ext import _progress

    kw = dict(restarts=4, batch=4, hops=0, seed=0)
    solvers.tammes(3, 5, **kw)  # default progress=None; pytest's stderr is not a terminal
    assert capsys.readouterr().err == ""
    solvers.tammes(3, 5, progress=True, **kw)  # forced
    assert "tammes d=3 K=5" in capsys.readouterr().err
    solvers.softmax_code(3, 5, restarts=1, batch=1, max_iter=5, polish_iter=1, seed=0, use_constructions=False)
    assert capsys.readouterr().err == ""
    assert _progress.enabled(None) is False and _progress.enabled(True) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress.enabled(None) is True and _progress.enabled(False) is False
    with pytest.raises(TypeError, match="progress"):
        _progress.enabled(1)


def test_device(device):
    r = solvers.tammes(3, 6, seed=0, device=device, **FAST)
    assert abs(r.max_cosine) < 1e-7 and r.W.device.type == "cpu"


def test_sloane_124_file_reference():
    W = torch.from_numpy(np.load(DATA / "sloane_pack_3_124.npy"))
    c = _max_cos_independent(W)
    assert math.sqrt(2 - 2 * c) == pytest.approx(0.32926, abs=5e-6)


@pytest.mark.parametrize("kw,exc,name", [
    (dict(d=0, K=4), ValueError, "d"),
    (dict(d=3, K=1), ValueError, "K"),
    (dict(d=3.0, K=4), TypeError, "d"),
    (dict(d=3, K="4"), TypeError, "K"),
    (dict(d=3, K=4, restarts=0), ValueError, "restarts"),
    (dict(d=3, K=4, max_iter=0), ValueError, "max_iter"),
    (dict(d=3, K=4, tol=-1.0), ValueError, "tol"),
    (dict(d=3, K=4, seed=1.5), TypeError, "seed"),
    (dict(d=3, K=4, progress=1), TypeError, "progress"),
    (dict(d=3, K=4, device="nonsense"), ValueError, "device"),
])
def test_tammes_bad_input(kw, exc, name):
    with pytest.raises(exc, match=rf"^{name}"):
        solvers.tammes(**kw)


# ----------------------------------------------------------------- assign_classes
def test_assign_recovers_permutation():
    g = torch.Generator().manual_seed(0)
    K, d = 40, 8
    code = torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    perm = torch.randperm(K, generator=g)
    means = 3.0 * code[perm] + 0.05 * torch.randn(K, d, generator=g, dtype=torch.float64)
    r = solvers.assign_classes(means.to(torch.float32), code)
    assert torch.equal(r.permutation, perm)
    assert r.assigned_code.shape == (K, d)
    cos_ind = torch.nn.functional.cosine_similarity(means, code[perm], dim=1)
    assert r.mean_cosine == pytest.approx(float(cos_ind.mean()), abs=1e-6)
    assert r.min_cosine == pytest.approx(float(cos_ind.min()), abs=1e-6)
    assert r.total_cosine == pytest.approx(float(cos_ind.sum()), abs=1e-5)


def test_assign_optimal_against_brute_force():
    g = torch.Generator().manual_seed(3)
    for trial in range(3):
        K, d, M = 6, 3, 7 if trial == 2 else 6
        means = torch.randn(K, d, generator=g, dtype=torch.float64)
        code = torch.randn(M, d, generator=g, dtype=torch.float64)
        r = solvers.assign_classes(means, code)
        S = torch.nn.functional.normalize(means, dim=1) @ torch.nn.functional.normalize(code, dim=1).T
        best = max(sum(float(S[k, p[k]]) for k in range(K)) for p in itertools.permutations(range(M), K))
        assert r.total_cosine == pytest.approx(best, abs=1e-12)
        assert len(set(r.permutation.tolist())) == K


def test_assign_with_a_solved_code():
    code = solvers.tammes(3, 12, seed=0, **FAST).W
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(12, generator=g)
    r = solvers.assign_classes(code[perm] + 0.01 * torch.randn(12, 3, generator=g, dtype=torch.float64), code)
    assert torch.equal(r.permutation, perm) and r.min_cosine > 0.99


@pytest.mark.parametrize("means,code,exc,name", [
    (torch.randn(5, 3), torch.randn(5, 4), ValueError, "code"),
    (torch.randn(5, 3), torch.randn(4, 3), ValueError, "code"),
    (torch.randn(5), torch.randn(5, 3), ValueError, "class_means"),
    (torch.zeros(5, 3), torch.randn(5, 3), ValueError, "class_means"),
    (torch.randn(5, 3), torch.full((5, 3), float("nan")), ValueError, "code"),
    (np.zeros((5, 3)), torch.randn(5, 3), TypeError, "class_means"),
    (torch.randn(5, 3), torch.ones(5, 3, dtype=torch.int64), TypeError, "code"),
])
def test_assign_bad_input(means, code, exc, name):
    with pytest.raises(exc, match=rf"^{name}"):
        solvers.assign_classes(means, code)


def test_hops_and_time_limit_paths():
    r = solvers.tammes(3, 13, seed=4, restarts=8, batch=8, hops=2, progress=False)
    _check_result(r, 3, 13)
    assert len(r.history) == 1 + 2 and r.restarts == 8
    r = solvers.tammes(3, 20, seed=4, restarts=64, batch=8, hops=4, time_limit=1e-3, progress=False)
    assert r.restarts == 8 and len(r.history) == 1  # stopped after the first batch
    _check_result(r, 3, 20)


def test_sphere_helpers():
    from gnc_ext.solvers import _sphere

    g = torch.Generator().manual_seed(0)
    X = _sphere.random_points(3, 7, 5, generator=g)
    np.testing.assert_allclose(X.norm(dim=-1).numpy(), 1.0, atol=1e-15)
    V = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    T = _sphere.tangent(X, V)
    assert float((T * X).sum(-1).abs().max()) < 1e-14
    W = X[0].numpy()
    W[0] = [-1.0, 0, 0, 0, 0]  # the reflection's sign branch
    B = _sphere.tangent_bases(W)
    assert B.shape == (7, 5, 4)
    for k in range(7):
        np.testing.assert_allclose(B[k].T @ B[k], np.eye(4), atol=1e-14)
        np.testing.assert_allclose(W[k] @ B[k], 0.0, atol=1e-14)
    C = _sphere.pairwise_cos(X)
    assert float(_sphere.max_cos(X)[1]) == pytest.approx(float((X[1] @ X[1].T - 3 * torch.eye(7)).max()))
    assert float(C[0].diagonal().max()) == -2.0


def test_thread_count_restored():
    before = torch.get_num_threads()
    solvers.tammes(3, 6, seed=0, **FAST)
    assert torch.get_num_threads() == before
