"""Softmax Codes: K unit vectors in R^d maximising the one-vs-rest distance rho (Def. 2.1).

``rho(W) = min_k dist(w_k, conv{w_j : j != k})``. By Lemma C.4 (duality),
``dist_k = max_{|h| = 1} min_{j != k} <w_k - w_j, h>`` (for w_k outside the hull of the
others), so maximising rho is the joint problem

    max_{W, H unit rows}  t   s.t.  <w_k - w_j, h_k> >= t   for all k, j != k,

i.e. the HardMax problem (Eq. 5) with one feature per class and the sign flipped. Its
constraints are smooth (bilinear) even where ``dist_k`` is not differentiable (a change
of the hull face), which is what makes an active-set method work here.

Algorithm (restarts in batches, then a polish, as in :mod:`gnc_ext.solvers.tammes`):

1. **Smoothed global phase** (torch, batched over restarts, any device): minimise the
   soft-max ``f_s = s * logsumexp_{k, j != k}(-M_kj / s)`` with
   ``M_kj = <w_k - w_j, h_k>`` over (W, H) on the spheres (``f_s -> -min M`` as
   ``s -> 0``; this is the tempered HardMax / a CE-like UFM objective), annealing
   ``s`` from about the expected rho down to 1/100 of it. Riemannian Adam steps
   (tangent projection, row-normalising retraction). Starts: uniform random W with H=W.
2. **Smoothing continuation** (float64, L-BFGS; by default only for large polish LPs,
   see ``continuation``): the same ``f_s`` with W = X/|X|, H = Y/|Y| unconstrained,
   for s = s_end_of_phase_1, /10, /100, ... down to 1e-9, each level warm-started;
   the best iterate by certified ``rho_lower`` is kept. Quasi-Newton steps see the
   curvature that the LP of step 3 cannot, which matters where the optimum has many
   more free directions than active constraints (d=10, K=100: within ~2e-7 of the
   best value seen, in about 25 s per start, where the LP alone had gained only to
   6.6053e-1 after 240 s).
3. **Active-set polish** (float64, CPU, scipy HiGHS): sequential LP with a trust
   region on the tangent spaces of both W and H. With tangent bases B_k (at w_k) and
   C_k (at h_k), the near-active constraints are linearised,
   ``M_kj + <B_k a_k - B_j a_j, h_k> + <w_k - w_j, C_k b_k> >= t``, and the LP
   maximises t over ``|a|, |b| <= Delta`` (box). After each step H is *reset* to the
   optimal features of the new W given by the certified one-vs-rest solver
   (``one_vs_rest_distance(W).feature``, Thm 3.5), so the objective that is tracked and
   accepted (ratio test on Delta) is the **certified** lower value ``rho_lower(W)``.
   Stops when the LP predicts no increase above ``tol`` (first-order stationarity of
   the max-min problem) or Delta underflows. For large LPs (after the continuation,
   final best start only) also when it stalls (see ``polish_status``).
4. **Constructions**: where Thm 3.3 gives the optimum (K <= d+1, d = 2, d+1 < K <= 2d)
   the closed-form code (:mod:`gnc_ext.theory`) is also evaluated (unless
   ``use_constructions=False``) and the search stops as soon as the certificate shows
   the closed-form value is reached.

Limitations (measured on a 2-core CPU): the polish converges fast (a few dozen LP steps
to ~1e-12) at rigid optima such as d=3, K <= 30, but only linearly where the optimum is
not a vertex of the linearised problem (many free directions, e.g. K <= d+1 at d = 16,
or d=10, K=100, where one LP step costs 4-8 s and still gains ~3e-10 per step after
the continuation: there the result is "stalled", not a certified stationary point).
Each LP has 2K(d-1)+1 variables: above 20,000 (e.g. d=512, K=10,000) the LP polish
is skipped and the result comes from the smoothed phase and the continuation alone
(both run on ``device``; certification runs on the CPU). These problems are tiny: on a shared, loaded CPU use ``torch.set_num_threads(1)``
(softmax_code(3, 30): 6.4 s with one thread vs 108 s with two oversubscribed threads).

Certificate: every returned value comes from :func:`gnc_ext.one_vs_rest_distance`, so
``rho_lower <= rho(W) <= rho`` with ``gap = rho - rho_lower`` (about 1e-10 or less).
This certifies the *value of the returned W*; that W is a global maximiser is only
known where Thm 3.3 gives the optimum (``optimal``), otherwise it is the best of the
restarts (a local optimum, stationary to ``tol``).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import List, Optional

import numpy as np
import torch

from .. import _validate
from .. import resources
from .. import theory as _theory
from ..ops.normalize import unit_rows_f64
from . import _driver, _sphere

__all__ = ["SoftmaxCodeResult", "softmax_code", "certify_code"]


@dataclasses.dataclass
class SoftmaxCodeResult:
    """Result of :func:`softmax_code`.

    Attributes:
        W: (K, d) float64 CPU tensor with unit rows — the best code found.
        rho: certified upper value of rho_one-vs-rest(W) (``min_k distance_k``).
        rho_lower: certified lower bound (Lemma C.4); the exact rho(W) lies in
            ``[rho_lower, rho]``.
        max_gap: the per-class worst certificate gap ``max_k (distance_k − lower_k)``;
            ``rho - rho_lower`` is at most this (``gap`` is its former name, deprecated).
        distance: (K,) float64 per-class one-vs-rest distances of W.
        lower: (K,) float64 per-class certified lower bounds.
        feature: (K, d) float64 optimal features ``h_k`` of W (Thm 3.5): the HardMax
            minimiser over H for this W.
        rattlers: 1-D int64 tensor of the classes whose certified lower bound exceeds
            ``rho + rattler_tol`` (Def. 3.4: provably strictly farther than the minimum).
        max_cosine: largest pairwise cosine of W (cosine of its minimal angle).
        min_distance: its minimal pairwise chord ``sqrt(2 - 2 max_cosine)``.
        rho_optimum: the Thm 3.3 optimum where known, else None.
        optimal: whether ``rho_lower >= rho_optimum - tol`` (None when unknown).
        source: where the returned code came from: ``"restart"``, ``"construction"``
            or ``"init"`` (one of the given starting codes, polished).
        restarts: random starts run (fewer than asked when stopped early).
        restart_values: certified rho of each polished restart.
        history: best certified rho_lower so far, after each polished candidate.
        polish_iters: LP iterations of the returned code's polish.
        time_s: wall time in seconds.
        polish_status: why the returned code's LP polish stopped: "stationary" (the
            linearised max-min problem admits no increase above ``tol``: a first-order
            stationary point), "target" (the Thm 3.3 optimum is reached), "stalled"
            (large LPs only, 2K(d-1)+1 > 600 variables: the certified value rose by
            less than max(100 * tol, 1e-8) over the last 5 LP steps: slow, linear
            progress), "trust_region" (the trust radius underflowed), "time_limit",
            "max_iter", or "none" (not polished).
    """

    W: torch.Tensor
    rho: float
    rho_lower: float
    max_gap: float
    distance: torch.Tensor
    lower: torch.Tensor
    feature: torch.Tensor
    rattlers: torch.Tensor
    max_cosine: float
    min_distance: float
    rho_optimum: Optional[float]
    optimal: Optional[bool]
    source: str
    restarts: int
    restart_values: List[float]
    history: List[float]
    polish_iters: int
    time_s: float
    polish_status: str = "none"

    @property
    def time(self) -> float:
        """Alias of ``time_s``."""
        return self.time_s

    @property
    def gap(self) -> float:
        """Deprecated: the former name of :attr:`max_gap`."""
        warnings.warn("SoftmaxCodeResult.gap is deprecated; use max_gap (the same number)",
                      DeprecationWarning, stacklevel=2)
        return self.max_gap


# --------------------------------------------------------------------- evaluation
def _ovr(W: np.ndarray):
    """Certified one-vs-rest evaluation of a float64 (K, d) array with unit rows."""
    from ..geometry.one_vs_rest import one_vs_rest_distance

    return one_vs_rest_distance(torch.from_numpy(np.ascontiguousarray(W)), tol=1e-12)


def _features(W: np.ndarray, r) -> np.ndarray:
    """Optimal features; a zero feature (w_k duplicated, dist 0) is replaced by w_k."""
    Hf = r.feature.numpy().copy()
    zero = np.linalg.norm(Hf, axis=1) < 0.5
    Hf[zero] = W[zero]
    return Hf


def certify_code(W, *, rattler_tol: float = 1e-7):
    """Certified rho, per-class distances, features and rattlers of a code W.

    Args:
        W: (K, d) floating tensor or NumPy array, finite, no zero row (rows are
            normalised here in float64).
        rattler_tol: margin (>= 0) above rho for a class to count as a rattler.
    Raises:
        TypeError/ValueError naming ``W`` or ``rattler_tol``.
    Returns:
        dict with rho, rho_lower, max_gap, distance, lower, feature, rattlers (1-D int64
        tensor), max_cosine,
        min_distance (all computed by :func:`gnc_ext.one_vs_rest_distance` and float64
        cosines).
    """
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(W)
    _validate.tensor(W, "W", ndim=2)
    if W.shape[0] < 2:
        raise ValueError(f"W: expected a (K, d) matrix with K >= 2, got shape {tuple(W.shape)}")
    _validate.finite(W, "W")
    rattler_tol = _validate.positive_float(rattler_tol, "rattler_tol", allow_zero=True)
    Wn = unit_rows_f64(W.cpu(), "W")
    Wa = Wn.numpy()
    r = _ovr(Wa)
    C = Wa @ Wa.T
    np.fill_diagonal(C, -2.0)
    cmax = float(C.max())
    ratt = torch.nonzero(r.lower > r.rho + rattler_tol).flatten().cpu()
    return {
        "W": Wn, "rho": r.rho, "rho_lower": r.rho_lower, "max_gap": r.max_gap, "distance": r.distance.detach().clone(),
        "lower": r.lower.clone(), "feature": torch.from_numpy(_features(Wa, r)), "rattlers": ratt,
        "max_cosine": cmax, "min_distance": math.sqrt(max(2.0 - 2.0 * cmax, 0.0)),
    }


# ------------------------------------------------------------------ global phase
def _expected_rho(d: int, K: int) -> float:
    """Rough scale of max rho: chord^2/2 of the typical spacing of K points on S^{d-1}."""
    if d == 1:
        return 1.0
    log_area = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(d / 2.0)
    h = min(2.0, math.exp((log_area - math.log(K)) / (d - 1)))
    return max(1e-4, min(1.0, 0.5 * h * h))


# Adam normalises each coordinate's step, so a step's norm grows like lr·sqrt(d - 1):
# the learning rate is divided by sqrt((d - 1)/LR_DIM_REF) above d = LR_DIM_REF + 1,
# keeping the step a fixed fraction of the point spacing. Without it, d = 512 steps
# have norm ~0.9 and the smoothed phase makes a random code worse (the measurements are
# in benchmarks/RESULTS.md, 2026-12-04 section).
LR_DIM_REF = 15


def _lr_dim_factor(d: int) -> float:
    return min(1.0, math.sqrt(LR_DIM_REF / max(d - 1, 1)))


def _random_spacing(d: int, K: int, seed: Optional[int], device) -> float:
    """``1 - mean_k max_{j != k} <x_k, x_j>`` of a random code (its own generator, so the
    restarts' random stream is unchanged): the scale of rho where random codes are
    already well spread. Chunked: no K × K matrix."""
    g = torch.Generator().manual_seed(7919 if seed is None else (seed + 7919) % 2**64)
    X = _sphere.random_points(1, K, d, generator=g, device=device, dtype=torch.float32)[0]
    tot = 0.0
    for s in range(0, K, 2048):
        S = X[s:s + 2048] @ X.T
        S[torch.arange(S.shape[0], device=S.device), torch.arange(s, s + S.shape[0], device=S.device)] = -2.0
        tot += float(S.max(1).values.sum())
    return float(min(1.0, max(1e-4, 1.0 - tot / K)))


# Elements of one (R, rows, K) block of the soft-min objective: the objective and its
# gradient never form the (R, K, K) matrix M (at d = 512, K = 10,000 the autograd
# version held 4.7 GB per evaluation, 11 GB peak in a run; the blocks hold about this many floats at a time).
_SOFTMIN_BLOCK_ELEMS = 1 << 24


def _softmin_value_and_grad(W: torch.Tensor, H: torch.Tensor, s: float,
                            block_elems: int = _SOFTMIN_BLOCK_ELEMS):
    """``f = s * logsumexp_{k, j != k}(-M_kj / s)`` with ``M_kj = <w_k - w_j, h_k>`` for a
    batch (R, K, d) of (W, H), and its gradients, in one pass over row blocks of M.

    With ``P = softmax`` of the (k, j != k) entries and ``r_k = sum_j P_kj``:
    ``df/dh_k = (P W)_k - r_k w_k`` and ``df/dw_j = (P^T H)_j - r_j h_j``. The blocks
    are folded with a running maximum per batch entry (online log-sum-exp): the row
    blocks of df/dH are rescaled at the end, the df/dW accumulator whenever the maximum
    grows. Memory: O(R * rows * K) for a block plus the (R, K, d) outputs.
    Returns ``(f (R,), dW (R, K, d), dH (R, K, d))``.
    """
    R, K, d = W.shape
    rows = max(1, min(K, block_elems // max(1, R * K)))
    m = torch.full((R,), -math.inf, dtype=W.dtype, device=W.device)
    l = torch.zeros(R, dtype=W.dtype, device=W.device)
    gW = torch.zeros_like(W)
    gH = torch.empty_like(H)
    block_max = []
    for k0 in range(0, K, rows):
        k1 = min(K, k0 + rows)
        n = k1 - k0
        Hb = H[:, k0:k1]
        Z = Hb @ W.transpose(1, 2)  # S_kj = <h_k, w_j> for k in the block
        idx = torch.arange(n, device=W.device)
        diag = Z[:, idx, idx + k0].clone()  # S_kk
        Z.sub_(diag.unsqueeze(2)).div_(s)  # Z_kj = -M_kj / s
        Z[:, idx, idx + k0] = -math.inf
        m_new = torch.maximum(m, Z.amax(dim=(1, 2)))
        Z.sub_(m_new.view(R, 1, 1)).exp_()  # E = exp(Z - m_new); 0 on the diagonal
        rescale = torch.exp(m - m_new)  # 0 for the first block (m = -inf)
        r = Z.sum(dim=2)  # (R, n) row sums, in the m_new scale
        l = l * rescale + r.sum(dim=1)
        gW.mul_(rescale.view(R, 1, 1))
        gW.add_(Z.transpose(1, 2) @ Hb)  # (P^T H), unnormalised
        gW[:, k0:k1] -= r.unsqueeze(2) * Hb
        gH[:, k0:k1] = Z @ W - r.unsqueeze(2) * W[:, k0:k1]
        block_max.append(m_new)
        m = m_new
        del Z
    inv_l = 1.0 / l
    gW.mul_(inv_l.view(R, 1, 1))
    for i, k0 in enumerate(range(0, K, rows)):
        gH[:, k0:min(K, k0 + rows)] *= (torch.exp(block_max[i] - m) * inv_l).view(R, 1, 1)
    f = s * (m + torch.log(l))
    return f, gW, gH


class _SoftMin(torch.autograd.Function):
    """Autograd wrapper of :func:`_softmin_value_and_grad` (the gradient is formed in the
    forward and scaled by the incoming gradient in the backward)."""

    @staticmethod
    def forward(ctx, W, H, s):
        f, gW, gH = _softmin_value_and_grad(W, H, s)
        ctx.save_for_backward(gW, gH)
        return f

    @staticmethod
    def backward(ctx, gf):
        gW, gH = ctx.saved_tensors
        g = gf.view(-1, 1, 1)
        return gW * g, gH * g, None


def _smoothed(X: torch.Tensor, iters: int, scale: float, s_factors, deadline: Optional[float] = None,
              report=None) -> torch.Tensor:
    """Annealed soft-min of M_kj over (W, H) on a batch X (R, K, d); returns W.

    deadline: a time.perf_counter() value after which the annealing stops (after at
    least one step) and returns its current iterate; report(phase, value): progress
    callback, called every few steps (the tqdm bar's postfix). The objective and its
    gradient come from :func:`_softmin_value_and_grad` (row blocks, no (R, K, K) tensor)."""
    R, K, d = X.shape
    total, done = max(1, iters // len(s_factors)) * len(s_factors), 0
    W = X.clone()
    H = X.clone()
    per = max(1, iters // len(s_factors))
    b1, b2, eps = 0.9, 0.999, 1e-12
    for si, fac in enumerate(s_factors):
        s = scale * fac
        mW = torch.zeros_like(W)
        vW = torch.zeros_like(W)
        mH = torch.zeros_like(H)
        vH = torch.zeros_like(H)
        lr_hi = 0.3 * math.sqrt(scale) * (0.6 ** si) * _lr_dim_factor(d)
        lr_lo = 0.01 * lr_hi
        for it in range(per):
            _, gW, gH = _softmin_value_and_grad(W, H, s)
            t = it + 1
            frac = it / max(1, per - 1)
            lr = lr_lo + 0.5 * (lr_hi - lr_lo) * (1 + math.cos(math.pi * frac))
            new = []
            for P, G, m, v in ((W, gW, mW, vW), (H, gH, mH, vH)):
                G = _sphere.tangent(P, G)
                m.mul_(b1).add_(G, alpha=1 - b1)
                v.mul_(b2).addcmul_(G, G, value=1 - b2)
                step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
                new.append(_sphere.retract(P, -lr * _sphere.tangent(P, step)))
            W, H = new
            done += 1
            if report is not None and (done % 10 == 0 or done == total):
                report(f"smoothed phase {done}/{total}", -math.inf)
            if deadline is not None and time.perf_counter() > deadline:
                return W
    return W


# ------------------------------------------------------------ continuation phase
class _DeadlineReached(Exception):
    """Raised inside the L-BFGS closure when the time limit has passed."""


# Smoothing levels of the continuation: s = s0, s0/10, ... while s >= _S_END (absolute,
# in rho units); each level is one L-BFGS run of at most _LBFGS_ITERS iterations.
_S_END = 1e-9
_LBFGS_ITERS = 2000


def _continuation(W: np.ndarray, s0: float, *, deadline: Optional[float] = None,
                  trace: Optional[list] = None, device=None, report=None):
    """Smoothing continuation in float64 with L-BFGS. Returns (W, r): the best iterate by
    the **certified** rho_lower (``r`` its one-vs-rest result), never worse than the input.

    Minimises ``f_s = s * logsumexp_{k, j != k}(-M_kj / s)`` over (W, H), parametrised
    without constraints as ``W = X/|X|``, ``H = Y/|Y|`` (row-wise), for s = s0, s0/10, ...
    down to _S_END, each level warm-started from the previous one (H starts at the
    certified optimal features of the input W). The minimiser of f_s tends to a max-min
    point as s -> 0 and each level is a smooth problem, so a quasi-Newton method makes
    fast progress where the LP polish, faced with many more free directions than active
    constraints (d=10, K=100), only converges linearly. Stops early when a level (after
    the second) gains less than 1e-11 in certified rho, or at ``deadline``.
    ``trace`` (optional list) receives (s, certified rho_lower) per level. ``device``:
    where the L-BFGS runs (float64; the certification is on the CPU). ``report``
    (optional callable(phase: str, value: float)) is called after each level.
    """
    K, d = W.shape
    r = _ovr(W)
    best = (W, r)
    X = torch.from_numpy(W.copy()).to(device).requires_grad_(True)
    Y = torch.from_numpy(_features(W, r)).to(device).requires_grad_(True)
    s = s0
    level = 0
    while s >= _S_END:
        if deadline is not None and time.perf_counter() > deadline:
            break
        opt = torch.optim.LBFGS([X, Y], lr=1.0, max_iter=_LBFGS_ITERS, tolerance_grad=1e-15,
                                tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

        def closure(s=s):
            if deadline is not None and time.perf_counter() > deadline:
                raise _DeadlineReached
            opt.zero_grad()
            Wt = X / X.norm(dim=1, keepdim=True)
            Ht = Y / Y.norm(dim=1, keepdim=True)
            f = _SoftMin.apply(Wt.unsqueeze(0), Ht.unsqueeze(0), s)[0]  # row blocks, no K x K
            f.backward()
            return f

        out_of_time = False
        try:
            opt.step(closure)
        except _DeadlineReached:  # X, Y hold the last iterate tried: still a valid point
            out_of_time = True
        with torch.no_grad():
            X /= X.norm(dim=1, keepdim=True)
            Y /= Y.norm(dim=1, keepdim=True)
        Wn = X.detach().cpu().numpy().copy()
        rn = _ovr(Wn)
        if trace is not None:
            trace.append((s, rn.rho_lower))
        if report is not None:
            report(f"continuation s={s:.0e}", rn.rho_lower)
        gain = rn.rho_lower - best[1].rho_lower
        if gain > 0:
            best = (Wn, rn)
        level += 1
        if out_of_time or (level >= 2 and gain < 1e-11):
            break
        s *= 0.1
    return best


# ------------------------------------------------------------------------ polish
def _polish(W: np.ndarray, *, max_iter: int, tol: float, target: Optional[float],
            trace: Optional[list] = None, deadline: Optional[float] = None,
            delta0: Optional[float] = None, r=None, stall: Optional[tuple] = None, report=None):
    """Trust-region SLP on (W, H) with certified acceptance. Returns (W, r, iterations,
    status) with status one of "target" (reached ``target``), "stationary" (the LP
    predicts no increase above ``tol``), "trust_region" (Delta underflowed), "stalled"
    (``stall = (n, eps)``: the certified value gained less than eps over the last n
    iterations), "time_limit" or "max_iter".
    ``trace`` (optional list) receives (seconds, certified rho_lower) per accepted step.
    ``delta0``: initial trust radius (default from the value); ``r``: W's one-vs-rest
    result if already computed; ``report``: optional callable(phase, value) called after
    each accepted step."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    K, d = W.shape
    dm1 = d - 1
    n = K * dm1
    if r is None:
        r = _ovr(W)
    H = _features(W, r)
    val = r.rho_lower
    delta = 0.05 * max(math.sqrt(max(val, 1e-6)), 1e-3) if delta0 is None else delta0
    its = 0
    status = "max_iter"
    vals_hist = [val]
    # interior point first (3x faster than simplex on these degenerate LPs, measured at
    # d=16, K=17); primal simplex as the fallback
    opts = {"simplex_strategy": 4}
    tstart = time.perf_counter()
    for it in range(max_iter):
        if target is not None and val >= target - tol:
            status = "target"
            break
        if deadline is not None and it > 0 and time.perf_counter() > deadline:
            status = "time_limit"
            break
        if stall is not None and len(vals_hist) > stall[0] and val - vals_hist[-1 - stall[0]] < stall[1]:
            status = "stalled"
            break
        its = it + 1
        S = H @ W.T
        M = np.diag(S)[:, None] - S
        np.fill_diagonal(M, np.inf)
        t0 = M.min()
        reach = 8.0 * delta * math.sqrt(dm1) + 16.0 * delta * delta * dm1
        I, J = np.nonzero(M <= t0 + reach)
        P = I.size
        B = _sphere.tangent_bases(W)
        Cb = _sphere.tangent_bases(H)
        ga_k = np.einsum("pdq,pd->pq", B[I], H[I])        # d M_kj / d a_k
        ga_j = -np.einsum("pdq,pd->pq", B[J], H[I])       # d M_kj / d a_j
        gb_k = np.einsum("pdq,pd->pq", Cb[I], W[I] - W[J])  # d M_kj / d b_k
        ar = np.arange(dm1)[None, :]
        rows = np.repeat(np.arange(P), 3 * dm1 + 1)
        cols = np.concatenate([I[:, None] * dm1 + ar, J[:, None] * dm1 + ar, n + I[:, None] * dm1 + ar,
                               np.full((P, 1), 2 * n)], axis=1).ravel()
        vals = np.concatenate([-ga_k, -ga_j, -gb_k, np.ones((P, 1))], axis=1).ravel()
        A = coo_matrix((vals, (rows, cols)), shape=(P, 2 * n + 1)).tocsr()
        b = (M[I, J] - t0) / delta
        c = np.zeros(2 * n + 1)
        c[-1] = -1.0
        bounds = [(-1.0, 1.0)] * (2 * n) + [(None, None)]
        res = linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs-ipm")
        if res.status != 0 or res.x is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs-ds", options=opts)
        if res.status != 0 or res.x is None:
            delta *= 0.25
            vals_hist.append(val)
            if delta < 1e-14:
                status = "trust_region"
                break
            continue
        pred = t0 + delta * res.x[-1] - val
        if delta * res.x[-1] <= tol:
            status = "stationary"  # linearised max-min problem: no increase possible
            break
        U = (delta * res.x[:n]).reshape(K, dm1)
        W_new = W + np.einsum("kdq,kq->kd", B, U)
        W_new /= np.linalg.norm(W_new, axis=1, keepdims=True)
        r_new = _ovr(W_new)
        actual = r_new.rho_lower - val
        if actual > 0:
            W, r, val = W_new, r_new, r_new.rho_lower
            H = _features(W, r)
            if trace is not None:
                trace.append((time.perf_counter() - tstart, val))
            if report is not None:
                report(f"LP step {its}", val)
            ratio = actual / max(pred, 1e-300)
            if ratio > 0.75 and np.abs(res.x[:n]).max() > 0.99:
                delta = min(2.0 * delta, 0.5)
            elif ratio < 0.25:
                delta *= 0.25
        else:
            delta *= 0.25
        vals_hist.append(val)
        if delta < 1e-14:
            status = "trust_region"
            break
    return W, r, its, status


def _constructions(d: int, K: int, seed: Optional[int]) -> List[np.ndarray]:
    out = []
    if K <= d + 1:
        out.append(_theory.simplex_etf(K, d, seed=seed).numpy())
    elif d == 2:
        out.append(_theory.polygon(K).numpy())
    elif K <= 2 * d:
        out.append(_theory.cross_polytope(K, d, seed=seed).numpy())
    return out


# ------------------------------------------------------------------------ public
_S_FACTORS = (1.0, 0.3, 0.1, 0.03, 0.01)
# stall rule of the polish: stop when the certified value rose by less than
# max(_STALL_FACTOR * tol, _STALL_MIN) over the last _STALL_ITERS LP iterations
_STALL_ITERS, _STALL_FACTOR, _STALL_MIN = 5, 100.0, 1e-8
# largest LP (variables 2K(d-1)+1) that is solved for every polished start
_LP_EACH_VARS = 600
# above this many LP variables the LP polish is skipped (e.g. d=512, K=10,000)
_LP_MAX_VARS = 20_000


def softmax_code(
    d,
    K,
    *,
    restarts: int = 32,
    max_iter: int = 2000,
    batch: int = 16,
    polish_top: int = 2,
    polish_iter: int = 500,
    device=None,
    seed: Optional[int] = None,
    progress: Optional[bool] = None,
    tol: float = 1e-12,
    rattler_tol: float = 1e-7,
    use_constructions: bool = True,
    time_limit: Optional[float] = None,
    continuation: Optional[bool] = None,
    init=None,
) -> SoftmaxCodeResult:
    """Maximise rho_one-vs-rest over K unit vectors in R^d (a Softmax Code, Def. 2.1).

    See the module docstring for the algorithm: batched smoothed max-min over (W, H)
    with annealing from ``restarts`` random starts (``batch`` at a time, ``max_iter``
    iterations each), then a trust-region LP polish of the ``polish_top`` best of each
    batch on the active constraints ``<w_k - w_j, h_k> >= t``, every step accepted on
    the certified value of :func:`gnc_ext.one_vs_rest_distance`.

    Args:
        d: dimension, integer >= 1.  K: number of codewords, integer >= 2.
        restarts: random starts (>= 1; 0 with ``init`` polishes only the given codes).
        max_iter: smoothed iterations per start (>= 1).
        batch: starts optimised together in one (batch, K, d) tensor.
        polish_top: best starts per batch that are polished (>= 1).
        polish_iter: LP iterations per polish (>= 0; the LP is skipped when it would
            have more than 20,000 variables, 2K(d-1)+1).
        device: torch device of the smoothed phase and the continuation (default CPU);
            the LP polish and the certification run on the CPU.
        seed: integer seed (None: nondeterministic).
        progress: tqdm bar over the restarts: None (default) when stderr is a terminal,
            True always, False never.
        tol: stationarity tolerance of the polish and of the early stop against the
            Thm 3.3 optimum (in rho units).
        rattler_tol: a class is reported as a rattler when its certified lower bound
            exceeds ``rho + rattler_tol``.
        use_constructions: also try the Thm 3.3 closed-form codes where they apply
            (set False to test the optimiser alone).
        time_limit: optional wall-clock budget (seconds), checked after every step of
            the smoothed phase (cut short, it returns its current iterate: every batch
            of restarts makes at least one step), after each batch of restarts, in the
            continuation and in the polish (a polish cut by it returns its best iterate
            so far; every polish gets at least one LP step). The final certification
            (one_vs_rest_distance) comes on top of it.
        continuation: run the L-BFGS smoothing continuation (module docstring, step 2)
            on each polished start before the LP polish. None (default): only where
            the polish LP is large (2K(d-1)+1 > 600 variables, e.g. d=10, K=100); there
            only the final best start is LP-polished. Small LPs converge fast without it.
        init: optional starting code(s) to polish as well: a (K, d) tensor/array or a
            list of them (rows are normalised here), e.g. a Tammes code or a code from
            an earlier run. Each goes through the continuation (when on) and the LP
            polish before the random restarts; ``source`` is ``"init"`` when one wins.

    Early stop: where :func:`gnc_ext.theory.rho_closed_form` gives the optimum and the
    best certified ``rho_lower`` reaches it within ``max(tol, 1e-11)``.

    Returns:
        :class:`SoftmaxCodeResult`.

    Raises:
        TypeError / ValueError naming the argument (non-integer or out-of-range sizes,
        counts, tolerances; bad device); ImportError without scipy.

    Complexity: smoothed phase O(restarts * max_iter * K^2 d) time, folded over row
    blocks of the (batch, K, K) matrix (about 16M floats at a time: memory O(batch·K·d)
    beyond a block; d = 512, K = 10,000, batch 2: 162 MiB where the full matrix took
    4.7 GB); each polish iteration is one LP with 2K(d-1)+1 variables and one rows per
    near-active pair (about K(d+1) at a rigid optimum) plus one certified
    one-vs-rest evaluation. Meant for K up to about a thousand.
    """
    t0 = time.perf_counter()
    a = _driver.check_args(d, K, restarts=restarts, max_iter=max_iter, batch=batch, polish_top=polish_top,
                           polish_iter=polish_iter, tol=tol, time_limit=time_limit, seed=seed,
                           progress=progress, device=device, init=init)
    d, K, restarts, batch, tol, dev, inits = a.d, a.K, a.restarts, a.batch, a.tol, a.device, a.inits
    resources.ensure_fits(min(batch, max(restarts, 1)) * 2 * K * d * 8, what=f"softmax_code(d={d}, K={K}) codes and features", device=dev)
    polish_iter = a.polish_iter
    rattler_tol = _validate.positive_float(rattler_tol, "rattler_tol", allow_zero=True)
    _validate.boolean(use_constructions, "use_constructions")
    if continuation is None:
        continuation = 2 * K * (d - 1) + 1 > _LP_EACH_VARS
    _validate.boolean(continuation, "continuation")
    scale = _expected_rho(d, K)
    if d > LR_DIM_REF + 1:
        # in high dimension random codes are already well spread (nearly orthogonal),
        # far above the packing estimate: take the spacing of a random code if larger
        scale = max(scale, _random_spacing(d, K, a.seed, dev))

    rho_opt = _theory.rho_closed_form(d, K)
    stop_tol = max(tol, 1e-11)
    # the search maximises the certified rho_lower; it may stop at the Thm 3.3 optimum
    search = _driver.Search(t0, a.time_limit, target=None if rho_opt is None else rho_opt - stop_tol)
    search.set(-math.inf, W=None, r=None, it=0, src="restart", status="none")
    state = search.best
    restart_values: List[float] = []

    # the LP polish of every candidate is cheap for small LPs; above _LP_EACH_VARS
    # variables only the final best restart is LP-polished (after the continuation)
    lp_vars = 2 * K * (d - 1) + 1
    lp_each = lp_vars <= _LP_EACH_VARS or not continuation
    if lp_vars > _LP_MAX_VARS:
        polish_iter = 0  # an LP of this size is out of reach for HiGHS: documented

    def report(phase: str, value: float) -> None:  # progress of the long phases on the bar
        best = max(value, search.value)
        search.note(f"{phase}, rho={best:.10f}" if best > -math.inf else phase)

    def lp(Wc: np.ndarray, r, delta0):
        stall = None if lp_each else (_STALL_ITERS, max(_STALL_FACTOR * tol, _STALL_MIN))
        return _polish(Wc, max_iter=polish_iter, tol=tol, target=rho_opt, deadline=search.deadline, delta0=delta0,
                       r=r, stall=stall, report=report)

    def offer(Wc: np.ndarray, src: str, polish: bool) -> None:
        its, status, r, delta0 = 0, "none", None, None
        if polish and continuation and src in ("restart", "init") and d >= 2:
            Wc, r = _continuation(Wc, _S_FACTORS[-1] * scale, deadline=search.deadline, device=dev, report=report)
            delta0 = 1e-3 * math.sqrt(max(r.rho_lower, 1e-6))  # already close: small first steps
        if polish and polish_iter > 0 and d >= 2 and (lp_each or src != "restart"):
            Wc, r, its, status = lp(Wc, r, delta0)
        elif r is None:
            r = _ovr(Wc)
        if src == "restart":
            restart_values.append(r.rho)
        search.offer(r.rho_lower, W=Wc, r=r, it=its, src=src, status=status)
        search.record()

    if d == 1:  # S^0: alternate +-1 (K = 2 optimal with rho 2; K >= 3 gives rho 0)
        W = np.zeros((K, 1))
        W[0::2, 0] = 1.0
        W[1::2, 0] = -1.0
        offer(W, "construction", False)
    elif use_constructions:
        for Wc in _constructions(d, K, a.seed):
            offer(Wc, "construction", True)
    for Wc in inits:
        if not search.reached():
            offer(Wc, "init", d >= 2)

    gen = _driver.generator(a.seed)
    if d >= 2 and not search.reached():
        search.open_bar(a.progress, restarts, f"softmax_code d={d} K={K}")
    done = 0
    with search:
        while d >= 2 and done < restarts and not search.reached():
            nb = min(batch, restarts - done)
            X = _sphere.random_points(nb, K, d, generator=gen, device=dev)
            X = _smoothed(X, a.max_iter, scale, _S_FACTORS, deadline=search.deadline, report=report)
            Xc = X.detach().cpu().to(torch.float64)
            # rank the batch by the smoothed run's own objective (min_kj M at H = W is
            # cheap but poor); use the exact certified rho instead: K small here
            vals = []
            for i in range(nb):
                Wi = (Xc[i] / Xc[i].norm(dim=1, keepdim=True)).numpy()
                vals.append(_ovr(Wi).rho_lower)
            for i in np.argsort(vals)[::-1][:a.polish_top]:
                Wi = (Xc[i] / Xc[i].norm(dim=1, keepdim=True)).numpy()
                offer(Wi, "restart", True)
                if search.reached():
                    break
            done += nb
            search.advance(nb, rho=f"{search.value:.10f}")
            if search.out_of_time():
                break
        if (not lp_each and polish_iter > 0 and state["src"] == "restart" and state["status"] == "none"
                and not search.reached()):
            Wb, rb, its, status = lp(state["W"], state["r"], 1e-3 * math.sqrt(max(search.value, 1e-6)))
            if rb.rho_lower >= search.value:
                search.set(rb.rho_lower, W=Wb, r=rb, it=its, status=status)
                search.record()
    history = search.history

    Wb = state["W"]
    cert = certify_code(torch.from_numpy(Wb), rattler_tol=rattler_tol)
    optimal = None if rho_opt is None else bool(cert["rho_lower"] >= rho_opt - max(stop_tol, 1e-9))
    return SoftmaxCodeResult(
        W=cert["W"], rho=cert["rho"], rho_lower=cert["rho_lower"], max_gap=cert["max_gap"],
        distance=cert["distance"], lower=cert["lower"], feature=cert["feature"], rattlers=cert["rattlers"],
        max_cosine=cert["max_cosine"], min_distance=cert["min_distance"], rho_optimum=rho_opt,
        optimal=optimal, source=state["src"], restarts=done, restart_values=restart_values, history=history,
        polish_iters=state["it"], polish_status=state["status"], time_s=time.perf_counter() - t0,
    )
