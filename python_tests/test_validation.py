"""Bad input across the package: each call raises TypeError/ValueError naming the
argument (each case comes from an audit of the public API and failed before its fix)."""
import math

import numpy as np
import pytest
import torch

import gnc_ext
from gnc_ext import _validate, solvers, theory


def _unit(K, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)


def test_sparse_tensors_are_refused_by_name():
    with pytest.raises(TypeError, match=r"X: expected a dense \(strided\) tensor"):
        gnc_ext.normalize_rows(torch.randn(2, 3).to_sparse())
    with pytest.raises(TypeError, match=r"W: expected a dense \(strided\) tensor"):
        gnc_ext.one_vs_rest_distance(torch.eye(3).to_sparse())
    with pytest.raises(TypeError, match=r"H: expected a dense"):
        gnc_ext.spherical_cross_entropy(torch.randn(3, 4).to_sparse(), torch.randn(5, 4), torch.tensor([0, 1, 2]))


def test_integers_beyond_int64_and_numpy_scalars():
    H, W, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="ignore_index: expected an integer in"):
        gnc_ext.spherical_cross_entropy(H, W, y, ignore_index=2**63)
    with pytest.raises(ValueError, match=r"ignore_index: .*got 118059\.\.\.\(22 digits\)"):
        gnc_ext.spherical_cross_entropy(H, W, y, ignore_index=2**70)
    with pytest.raises(ValueError, match="max_iter: expected an integer in"):
        gnc_ext.one_vs_rest_distance(torch.eye(3), max_iter=2**63)
    with pytest.raises(ValueError, match="eps: expected a finite number"):
        gnc_ext.normalize_rows(H, eps=10**400)
    with pytest.raises(ValueError, match="d: expected an integer in"):
        theory.rho_bounds(10**400, 3)
    # NumPy scalars are numbers like any other (they were rejected for some arguments)
    a = gnc_ext.spherical_cross_entropy(H, W, y, margin=np.float32(0.25), label_smoothing=np.float64(0.1))
    b = gnc_ext.spherical_cross_entropy(H, W, y, margin=0.25, label_smoothing=0.1)
    assert abs(float(a) - float(b)) < 1e-6
    U = _unit(6, 3)
    r = gnc_ext.one_vs_one_distance(U, shortlist=np.int64(3))
    assert r is not None
    assert gnc_ext.one_vs_rest_distance(U, rattler_tol=np.float32(1e-6)).rho > 0
    with pytest.raises(TypeError, match="shortlist: expected an integer"):
        gnc_ext.one_vs_one_distance(U, shortlist=True)
    with pytest.raises(TypeError, match="margin: expected a real number"):
        gnc_ext.spherical_cross_entropy(H, W, y, margin=np.bool_(True))


def test_rattler_tol_checked_before_the_solve(monkeypatch):
    from gnc_ext.geometry import one_vs_rest as ovr
    called = []
    monkeypatch.setattr(ovr, "_candidates", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match="rattler_tol: expected a finite number >= 0"):
        gnc_ext.one_vs_rest_distance(_unit(6, 3), rattler_tol=-1.0)
    assert not called


def test_normalize_true_errors_name_W():
    W = _unit(6, 3).float()
    W[0] = 3e38  # finite, but its norm overflows in fp32
    with pytest.raises(ValueError, match=r"^W: contains NaN or Inf values \(or a row whose norm overflows\)"):
        gnc_ext.one_vs_rest_distance(W, normalize=True)


def test_devices_and_seeds():
    with pytest.raises(ValueError, match="device: expected a cpu or cuda device, got meta"):
        solvers.softmax_code(3, 10, device="meta", restarts=1, max_iter=5, progress=False, seed=0)
    with pytest.raises(ValueError, match="device: not a valid torch device"):
        solvers.tammes(3, 10, device="bogus", restarts=1, max_iter=5, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda requested but CUDA is not available"):
            solvers.train_ufm(2, 3, 1, steps=2, progress=False, device="cuda")
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[-2\*\*63, 2\*\*64\)"):
        solvers.tammes(3, 10, seed=2**70, restarts=1, max_iter=5, progress=False)
    with pytest.raises(ValueError, match="seed: expected an integer in"):
        theory.simplex_etf(3, seed=2**64)
    with pytest.raises(TypeError, match="seed: expected an integer or None"):
        solvers.train_ufm(2, 3, 1, steps=2, progress=False, seed=1.5)
    # the largest seed is fine, including softmax_code's derived seed for its spacing estimate
    assert solvers.softmax_code(20, 8, seed=2**64 - 1, restarts=1, max_iter=2, polish_iter=0,
                                progress=False).rho > 0
    with pytest.raises(ValueError, match="phase: expected a finite number"):
        theory.polygon(5, phase=math.inf)


def test_certify_code_validates_and_normalises_robustly():
    with pytest.raises(ValueError, match="rattler_tol: expected a finite number >= 0"):
        solvers.certify_code(torch.eye(3), rattler_tol=-5)
    with pytest.raises(ValueError, match="rattler_tol"):
        solvers.certify_code(torch.eye(3), rattler_tol=float("nan"))
    with pytest.raises(TypeError, match="W: expected a torch.Tensor"):
        solvers.certify_code(None)
    with pytest.raises(ValueError, match="W: row 1 is zero"):
        solvers.certify_code(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    # rows whose plain float64 norm overflows (1e200) or underflows (1e-200) keep their direction
    ref = solvers.certify_code(torch.eye(3, dtype=torch.float64))["rho"]
    assert abs(ref - math.sqrt(1.5)) < 1e-12  # simplex of 3 points: distance to the opposite edge
    for s in (1e200, 1e-200):
        assert abs(solvers.certify_code(torch.eye(3, dtype=torch.float64) * s)["rho"] - ref) < 1e-12
    assert abs(solvers.certify_code(np.eye(3))["rho"] - ref) < 1e-12


def test_assign_classes_with_huge_and_tiny_rows():
    A = torch.tensor([[1e200, 0.0], [0.0, 1e200]], dtype=torch.float64)
    C = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    tiny = torch.tensor([[1e-200, 0.0], [0.0, 1e-200]], dtype=torch.float64)
    for a, c in ((A, C), (tiny, C * 1e-300)):
        r = solvers.assign_classes(a, c)
        assert r.permutation.tolist() == [1, 0]
        torch.testing.assert_close(r.cosines, torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(r.assigned_code, torch.eye(2, dtype=torch.float64))


def test_validate_helpers_directly():
    assert _validate.integer(np.int64(3), "k") == 3
    assert _validate.positive_float(np.float32(0.5), "x") == 0.5
    with pytest.raises(TypeError, match="k: expected an integer"):
        _validate.integer(np.bool_(True), "k")
    with pytest.raises(TypeError, match="device: expected a str, torch.device or None"):
        _validate.device(3.5)
    assert _validate.device(None) == torch.device("cpu")
    assert _validate.seed(None) is None and _validate.seed(np.uint64(2**64 - 1)) == 2**64 - 1


def test_train_ufm_learning_rate_bound():
    with pytest.raises(ValueError, match=r"lr: expected a learning rate in \(0, 1e6\]"):
        solvers.train_ufm(2, 3, 1, steps=3, progress=False, lr=1e300, seed=0)
    assert solvers.train_ufm(2, 3, 1, steps=3, progress=False, lr=1e6, seed=0).loss > 0
