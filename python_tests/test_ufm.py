"""train_ufm / hardmax_problem: Fig. C.1 trend, HardMax = -rho (Lemma C.4), bad input.

References are independent of the code under test: the proven Tammes optimum for
d=3, K=7 (Schuette & van der Waerden; gnc_ext.theory.one_vs_one_closed_form), which is
also the HardMax/Softmax-Code solution's minimal angle (cosine 0.2101, rho = 1 - cos
as certified in benchmarks/results/solvers2_cpu.md), and the Thm 3.3 closed forms.
"""
import math

import pytest
import torch

from gnc_ext import hardmax_loss, theory
from gnc_ext.solvers import hardmax_problem, train_ufm

COS_HM_3_7 = 1.0 - theory.one_vs_one_closed_form(3, 7) ** 2 / 2.0  # 0.21013...


def test_ce_small_tau_approaches_hardmax_fig_c1():
    """Fig. C.1: the minimal-angle cosine of the CE-trained UFM moves to the HardMax
    solution's as tau decreases (tau = 0.5 -> 0.05)."""
    big = train_ufm(3, 7, 1, tau=0.5, steps=1500, seed=0, progress=False)
    small = train_ufm(3, 7, 1, tau=0.05, steps=1500, seed=0, progress=False)
    e_big = abs(big.max_cosine - COS_HM_3_7)
    e_small = abs(small.max_cosine - COS_HM_3_7)
    assert e_small < 0.5 * e_big, (big.max_cosine, small.max_cosine, COS_HM_3_7)
    assert e_small < 0.03
    # and the HardMax value of the CE solution approaches -rho* (rho* = 1 - cos here)
    assert small.hardmax_value < big.hardmax_value
    assert small.hardmax_value >= -(1.0 - COS_HM_3_7) - 1e-9  # cannot beat the optimum
    # GNC metrics: self-duality (GNC3) and collapse reported; n = 1 -> GNC1 = 0
    assert small.gnc3 < 1e-3 and small.gnc1 == pytest.approx(0.0, abs=1e-12)
    for r in (big, small):  # round-off of either sign in the raw value, never negative here
        assert r.gnc1 >= 0.0 and r.gnc1 == max(r.metrics.gnc1, 0.0)
    assert small.rho == pytest.approx(-small.hardmax_value, abs=1e-6)


def test_ufm_ce_collapse_with_n_features():
    r = train_ufm(2, 4, 3, tau=0.1, steps=800, seed=1, progress=False, dtype=torch.float32)
    assert r.W.shape == (4, 2) and r.H.shape == (12, 2) and r.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.allclose(r.H.norm(dim=1), torch.ones(12, dtype=torch.float64), atol=1e-6)
    assert r.gnc1 < 1e-3  # within-class variability collapses
    assert r.rho == pytest.approx(1.0, abs=1e-3)  # Thm 3.3: the square, rho = 1
    assert r.history[0][1] > r.history[-1][1]


def test_ufm_hardmax_loss_training():
    r = train_ufm(2, 5, 2, loss="hardmax", steps=1500, seed=0, progress=False)
    opt = theory.rho_closed_form(2, 5)
    assert r.hardmax_value == pytest.approx(-opt, abs=1e-3)
    assert r.hardmax_value >= -opt - 1e-9


@pytest.mark.parametrize("d,K,n", [(2, 6, 3), (3, 4, 2), (4, 7, 1)])
def test_hardmax_problem_closed_form(d, K, n):
    """Eq. 5 optimum = -rho* (Lemma C.4 + Thm 3.3), evaluated by the fused HardMax op."""
    r = hardmax_problem(d, K, n, seed=0, progress=False, restarts=4, batch=4, use_constructions=False)
    opt = theory.rho_closed_form(d, K)
    assert r.value == pytest.approx(-opt, abs=1e-6)
    assert r.H.shape == (n * K, d) and r.labels.shape == (n * K,)
    # H are the optimal features: repeated per class, and the HardMax value of (W, H)
    # equals -rho(W) (no feature can do better: Lemma C.4)
    assert torch.equal(r.H[::n], r.code.feature)
    v = float(hardmax_loss(r.H, r.W, r.labels, reduction="max"))
    assert v == pytest.approx(-r.rho, abs=1e-9)


def test_hardmax_problem_d3_K7_matches_tammes_optimum():
    r = hardmax_problem(3, 7, 2, seed=0, progress=False, restarts=8, batch=8)
    assert r.max_cosine == pytest.approx(COS_HM_3_7, abs=1e-5)
    assert r.value == pytest.approx(-(1.0 - COS_HM_3_7), abs=1e-6)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(d=0, K=3, n=1), ValueError, "d"),
    (dict(d=3, K=1, n=1), ValueError, "K"),
    (dict(d=3, K=3, n=0), ValueError, "n"),
    (dict(d=3, K=3.0, n=1), TypeError, "K"),
    (dict(d=3, K=3, n=1.5), TypeError, "n"),
    (dict(d=3, K=3, n=1, tau=0.0), ValueError, "tau"),
    (dict(d=3, K=3, n=1, tau=-1.0), ValueError, "tau"),
    (dict(d=3, K=3, n=1, tau=0.1, loss="hardmax"), ValueError, "tau"),
    (dict(d=3, K=3, n=1, loss="mse"), ValueError, "loss"),
    (dict(d=3, K=3, n=1, steps=0), ValueError, "steps"),
    (dict(d=3, K=3, n=1, lr=0.0), ValueError, "lr"),
    (dict(d=3, K=3, n=1, dtype=torch.int32), TypeError, "dtype"),
])
def test_train_ufm_bad_input(kw, exc, word):
    with pytest.raises(exc, match=word):
        train_ufm(progress=False, **kw)


def test_hardmax_problem_bad_input():
    with pytest.raises(ValueError, match="n"):
        hardmax_problem(3, 4, 0)
    with pytest.raises(TypeError, match="d"):
        hardmax_problem("3", 4, 1)


def test_train_ufm_cuda_matches_trend(cuda_device):
    """CUDA path (fused ops on the GPU, float32): the same Fig. C.1 trend at d=3, K=7."""
    big = train_ufm(3, 7, 2, tau=0.5, steps=1500, seed=0, progress=False, device=cuda_device, dtype=torch.float32)
    small = train_ufm(3, 7, 2, tau=0.05, steps=1500, seed=0, progress=False, device=cuda_device,
                      dtype=torch.float32)
    assert small.W.device.type == "cpu" and small.W.dtype == torch.float64  # results are returned on the CPU
    assert abs(small.max_cosine - COS_HM_3_7) < 0.5 * abs(big.max_cosine - COS_HM_3_7)


def test_softmax_code_cuda_smoothed_phase(cuda_device):
    from gnc_ext.solvers import softmax_code
    r = softmax_code(3, 12, seed=0, restarts=8, batch=8, progress=False, device=cuda_device)
    assert r.rho == pytest.approx(1.0 - 1.0 / math.sqrt(5.0), abs=1e-6)  # icosahedron (Tammes optimum, Thm 3.8 check)
