"""One type for rattlers (a 1-D int64 tensor) and one name for the per-class worst
certificate gap (max_gap; gap is a deprecated alias) across the package."""
import warnings

import numpy as np
import pytest
import torch

import gnc_ext
from gnc_ext.solvers import certify_code, softmax_code, tammes


def _unit(K, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(K, d, dtype=torch.float64, generator=g), dim=1)


def _is_index_tensor(t):
    return isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1


def test_rattlers_are_int64_tensors_everywhere():
    W = _unit(40, 3, 0)
    r = gnc_ext.one_vs_rest_distance(W)
    # brute force from the returned bounds, float64: classes certified above rho
    expect = [k for k in range(40) if float(r.lower[k]) > r.rho + 1e-10]
    assert _is_index_tensor(r.rattlers) and r.rattlers.tolist() == expect
    acc = gnc_ext.metrics.GNCAccumulator(40, 3)
    acc.update(W.float(), torch.arange(40))
    assert _is_index_tensor(acc.compute(W=W).gnc2.rattlers)
    cert = certify_code(W, rattler_tol=1e-7)
    assert _is_index_tensor(cert["rattlers"])
    assert cert["rattlers"].tolist() == [k for k in range(40) if float(cert["lower"][k]) > cert["rho"] + 1e-7]
    sc = softmax_code(3, 8, seed=0, restarts=1, max_iter=30, progress=False)
    assert _is_index_tensor(sc.rattlers)
    tm = tammes(3, 8, seed=0, restarts=2, progress=False)
    assert _is_index_tensor(tm.rattlers)
    # Tammes rattlers: points with no neighbour at the minimal distance (within the default contact_tol 1e-8 in cosine)
    C = tm.W.numpy() @ tm.W.numpy().T
    np.fill_diagonal(C, -2.0)
    brute = [k for k in range(8) if not (C[k] >= C.max() - 1e-8).any()]
    assert tm.rattlers.tolist() == brute


def test_max_gap_is_the_per_class_worst_gap_and_gap_is_deprecated():
    W = _unit(60, 4, 1)
    r = gnc_ext.one_vs_rest_distance(W)
    assert r.max_gap == float((r.distance - r.lower).max())
    assert r.rho - r.rho_lower <= r.max_gap + 1e-300
    with pytest.warns(DeprecationWarning, match="use max_gap"):
        assert r.gap == r.max_gap
    acc = gnc_ext.metrics.GNCAccumulator(60, 4)
    acc.update(W.float(), torch.arange(60))
    g2 = acc.compute(W=W).gnc2
    assert g2.max_gap == pytest.approx(float((g2.distance - g2.lower).max()), abs=1e-15)
    with pytest.warns(DeprecationWarning):
        assert g2.gap == g2.max_gap
    sc = softmax_code(3, 8, seed=0, restarts=1, max_iter=30, progress=False)
    assert sc.max_gap == pytest.approx(float((sc.distance - sc.lower).max()), abs=1e-15)
    with pytest.warns(DeprecationWarning):
        assert sc.gap == sc.max_gap
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name never warns
        _ = r.max_gap, g2.max_gap, sc.max_gap
