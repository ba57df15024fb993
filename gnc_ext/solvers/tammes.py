"""The Tammes problem: K unit vectors in R^d maximising the minimum pairwise distance.

``max_W min_{k != k'} ||w_k - w_k'||`` (Eq. 11 of the paper; the one-vs-one distance).
Equivalently: minimise the largest pairwise cosine ``c_max``; the minimal chord is
``sqrt(2 - 2 c_max)``.

Algorithm (restarts in batches):

1. **Smoothed global phase** (torch, batched over restarts, any device): from uniform
   random starts, minimise the soft-max of ``-log ||w_i - w_j||`` at inverse temperature
   ``s`` — ``f_s = (1/s) log sum_{i != j} exp(-s log r_ij)``, i.e. the log of the Riesz
   s-energy — with an annealed schedule (energy continuation; large s approaches
   ``-log min r``): s = 32 -> 2048 for three quarters of the starts (diverse basins),
   s = 2 -> 2048 for the rest (low s is smooth with few minima, so those starts follow
   a few well-determined continuation paths). Riemannian steps:
   the ambient gradient ``G = S W`` with ``S_ij = p_ij / r_ij^2`` (p the soft-max
   weights) is projected to the tangent spaces, scaled by Adam moments, and retracted by
   row normalisation. Step sizes scale with the typical spacing of K points on S^{d-1}.
2. **Active-set polish** (float64, CPU, scipy HiGHS): sequential linear programming with
   a trust region. At the current W, the pairs whose cosine is within reach of
   ``c_max`` are linearised in tangent coordinates ``u_k`` (``w_k + B_k u_k``, B_k an
   orthonormal tangent basis): ``c_ij + <w_j, B_i u_i> + <w_i, B_j u_j> <= t``; the LP
   minimises t over ``|u|_inf <= Delta``. The step is retracted and accepted when the
   true ``c_max`` decreases (ratio test adjusts Delta). Only the near-active pairs move
   the solution; rattlers stay free. At a rigid optimum this converges fast (the
   optimum is a vertex of the linearised problem) to ~1e-12 in cosine; where the
   optimum is not isolated (e.g. cosine 0 with d+1 < K < 2d, where the optimal set is
   a manifold) it converges only linearly: d = 16, K = 24 can take ~200 LPs (~20 s).
   Stops when the LP predicts a decrease below ``tol`` within the trust region (at a
   first-order stationary point of the minimax problem it predicts none), when Delta
   underflows, or when a known optimum is reached.
3. **Basin hopping** (optional, ``hops``): perturb the best configuration, short
   smoothed phase, polish; keep improvements.

The best polished restart is returned. There is no optimality certificate for general
(d, K); where :func:`gnc_ext.theory.one_vs_one_closed_form` knows the proven optimum the
result says whether it was reached (``optimal``) and the restarts stop early when it is.

Sizes: the global phase holds a few (restarts_per_batch, K, K) float64 matrices, the
polish a (K, K) matrix and an LP with K(d-1)+1 variables, so this solver is meant for
K up to a few hundred (benchmarked up to K = 130 at d = 3; larger K is untimed). A
large-K path (K >> 1000)
needs pairwise minima without the K x K matrix: use ``gnc_ext.one_vs_one_distance``
(issue 3, chunked similarity-reduce) for evaluation and a neighbour-list version of the
polish; that is not implemented here yet.
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
from . import _driver, _sphere


@dataclasses.dataclass
class TammesResult:
    """Result of :func:`tammes`.

    Attributes:
        W: (K, d) float64 CPU tensor, unit rows — the best configuration found.
        min_distance: its minimal pairwise chord ``min ||w_i - w_j||``.
        max_cosine: its largest pairwise cosine (cosine of the minimal angle);
            ``min_distance = sqrt(2 - 2 max_cosine)``.
        min_angle_deg: the minimal angle in degrees.
        contacts: number of pairs within ``contact_tol`` of the minimal distance.
        rattlers: 1-D int64 tensor of the points with no pair at the minimal distance.
        proven_optimum: the proven optimal minimal chord where known (else None).
        optimal: True/False when ``proven_optimum`` is known (reached within tol in
            cosine), else None.
        restarts: how many random starts were run (fewer than asked when stopped early).
        restart_values: min distance of every restart after the global phase.
        history: best min distance so far after each batch of restarts.
        polish_iters: LP iterations spent in the polish of the returned configuration.
        time_s: wall time in seconds.
    """

    W: torch.Tensor
    min_distance: float
    max_cosine: float
    min_angle_deg: float
    contacts: int
    rattlers: torch.Tensor
    proven_optimum: Optional[float]
    optimal: Optional[bool]
    restarts: int
    restart_values: List[float]
    history: List[float]
    polish_iters: int
    time_s: float


# ------------------------------------------------------------------ global phase
def _spacing(d: int, K: int) -> float:
    """Typical nearest-neighbour distance of K points on S^{d-1} (cap-area estimate)."""
    if d == 1:
        return 2.0
    log_area = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(d / 2.0)
    return min(2.0, math.exp((log_area - math.log(K)) / (d - 1)))


def _anneal(X: torch.Tensor, iters: int, h: float, s_values) -> torch.Tensor:
    """Energy continuation on a batch X (R, K, d); returns the final unit rows."""
    R, K, d = X.shape
    eye = torch.eye(K, dtype=torch.bool, device=X.device)
    per_stage = max(1, iters // len(s_values))
    beta1, beta2, eps = 0.9, 0.999, 1e-12
    for si, s in enumerate(s_values):
        m = torch.zeros_like(X)
        v = torch.zeros_like(X)
        lr_hi = 0.05 * h * (0.5 ** si)
        lr_lo = lr_hi * 1e-2
        for it in range(per_stage):
            C = X @ X.transpose(1, 2)
            r2 = (2.0 - 2.0 * C).clamp_min(1e-30)
            E = (-0.5 * s) * torch.log(r2)
            E = E.masked_fill(eye, -math.inf)
            P = torch.softmax(E.reshape(R, -1), dim=1).reshape(R, K, K)
            S = P / r2
            # ambient gradient of f_s (up to a factor 2): d f_s / d C_ij = p_ij / r_ij^2
            grad = _sphere.tangent(X, S @ X)
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            t = it + 1
            mhat = m / (1 - beta1 ** t)
            vhat = v / (1 - beta2 ** t)
            frac = it / max(1, per_stage - 1)
            lr = lr_lo + 0.5 * (lr_hi - lr_lo) * (1 + math.cos(math.pi * frac))
            step = mhat / (vhat.sqrt() + eps)
            X = _sphere.retract(X, -lr * _sphere.tangent(X, step))
    return X


# ------------------------------------------------------------------------ polish
def _polish(W: np.ndarray, *, max_iter: int, tol: float, stop_at: float = -math.inf):
    """Trust-region sequential LP on the near-active pairs; returns (W, iterations)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    K, d = W.shape
    dm1 = d - 1
    n = K * dm1
    C = W @ W.T
    np.fill_diagonal(C, -2.0)
    cmax = C.max()
    delta = 0.05 * max(math.sqrt(max(2.0 - 2.0 * cmax, 0.0)), 1e-3)
    it_done = 0
    # Primal simplex: these LPs are highly degenerate (many box-bound variables); HiGHS's
    # default dual simplex needs many more pivots on them (benchmarks/RESULTS.md).
    opts = {"simplex_strategy": 4}
    for it in range(max_iter):
        if cmax <= stop_at:
            break  # a known optimum has been reached
        it_done = it + 1
        B = _sphere.tangent_bases(W)  # (K, d, d-1)
        reach = 4.0 * delta * math.sqrt(dm1) + 8.0 * delta * delta * dm1
        I, J = _sphere.pairs_above(C, cmax - reach)
        P = I.size
        gi = np.einsum("pdk,pd->pk", B[I], W[J])  # d c_ij / d u_i
        gj = np.einsum("pdk,pd->pk", B[J], W[I])  # d c_ij / d u_j
        # scaled variables: u = delta * z, |z| <= 1; maximise tau with
        #   gi.z_i + gj.z_j + tau <= (cmax - c_ij)/delta
        rows = np.repeat(np.arange(P), 2 * dm1 + 1)
        cols = np.concatenate(
            [I[:, None] * dm1 + np.arange(dm1)[None, :], J[:, None] * dm1 + np.arange(dm1)[None, :],
             np.full((P, 1), n)], axis=1).ravel()
        vals = np.concatenate([gi, gj, np.ones((P, 1))], axis=1).ravel()
        A = coo_matrix((vals, (rows, cols)), shape=(P, n + 1)).tocsr()
        b = (cmax - C[I, J]) / delta
        c = np.zeros(n + 1)
        c[n] = -1.0
        bounds = [(-1.0, 1.0)] * n + [(None, None)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'simplex_strategy' is passed to HiGHS verbatim
            res = linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs-ds", options=opts)
        if res.status != 0 or res.x is None:
            res = linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs-ipm")
        if res.status != 0 or res.x is None:
            delta *= 0.25
            if delta < 1e-15:
                break
            continue
        pred = delta * res.x[n]
        if pred <= tol:
            break  # linearised problem: no decrease possible -> stationary
        U = (delta * res.x[:n]).reshape(K, dm1)
        W_new = W + np.einsum("kdj,kj->kd", B, U)
        W_new /= np.linalg.norm(W_new, axis=1, keepdims=True)
        C_new = W_new @ W_new.T
        np.fill_diagonal(C_new, -2.0)
        cmax_new = C_new.max()
        actual = cmax - cmax_new
        if actual > 0:
            W, C, cmax = W_new, C_new, cmax_new
            ratio = actual / pred
            if ratio > 0.75 and np.abs(res.x[:n]).max() > 0.99:
                delta *= 2.0
            elif ratio < 0.25:
                delta *= 0.25
        else:
            delta *= 0.25
        if delta < 1e-15:
            break
    return W, it_done


def _stats(W: np.ndarray, contact_tol: float):
    C = W @ W.T
    np.fill_diagonal(C, -2.0)
    cmax = float(C.max())
    near = C >= cmax - contact_tol
    contacts = int(np.triu(near, 1).sum())
    rattlers = torch.from_numpy(np.nonzero(~near.any(axis=1))[0].astype(np.int64))
    return cmax, contacts, rattlers


def _chord(cmax: float) -> float:
    return math.sqrt(max(2.0 - 2.0 * cmax, 0.0))


# ------------------------------------------------------------------------ public
_S_GLOBAL = (32.0, 128.0, 512.0, 2048.0)
_S_LOW = (2.0, 8.0, 32.0, 128.0, 512.0, 2048.0)
_S_HOP = (128.0, 1024.0)


def tammes(
    d,
    K,
    *,
    restarts: int = 128,
    max_iter: int = 400,
    batch: int = 64,
    polish_top: int = 4,
    hops: int = 8,
    polish_iter: int = 300,
    device=None,
    seed: Optional[int] = None,
    progress: Optional[bool] = None,
    tol: float = 1e-12,
    contact_tol: float = 1e-8,
    time_limit: Optional[float] = None,
    init=None,
) -> TammesResult:
    """Maximise the minimal pairwise distance of K unit vectors in R^d (Tammes problem).

    Search: ``restarts`` uniform random starts, ``batch`` at a time, run through the
    smoothed global phase (``max_iter`` iterations, s = 32 .. 2048); the ``polish_top``
    best of each batch are polished by the LP active-set method. Then ``hops`` rounds of
    monotonic basin hopping: ``batch`` random perturbations of the best configuration
    (noise up to half the typical spacing), a short smoothed phase, the 2 best
    polished, the best kept if it improves. Starting the continuation at s = 32 rather
    than s ~ 1 matters: low-s energies have so few minima that all starts follow the
    same continuation path into the same (often non-optimal) Tammes configuration.

    Args:
        d: dimension, integer >= 1.
        K: number of points, integer >= 2.
        restarts: number of random starts (>= 1; 0 with ``init`` polishes only the given codes).
        max_iter: iterations of the smoothed phase per start (>= 1).
        batch: starts (and perturbations per hop) optimised together in one tensor.
        polish_top: best starts per batch that get the LP polish (>= 1).
        hops: basin-hopping rounds after the random starts (>= 0).
        polish_iter: LP iterations per polish (>= 0; 0 disables the polish).
        device: torch device of the smoothed phase (default CPU); the polish is CPU.
        seed: integer seed (None: nondeterministic).
        progress: a tqdm bar over starts and hops: None (default) when stderr is a
            terminal, True always, False never.
        tol: stationarity tolerance of the polish (predicted decrease of the largest
            cosine) and of the early stop against a proven optimum.
        contact_tol: cosine tolerance defining contacts and rattlers in the result.
        time_limit: optional wall-clock budget in seconds; the search stops after the
            batch/hop during which it is exceeded (the result is still polished).
        init: optional starting configuration(s): a (K, d) tensor/array or a list of
            them (rows normalised here), each LP-polished before the random starts
            (e.g. a Softmax Code, to test Thm 3.8 / the Sec. 3.2 conjecture). Ignored
            for d = 1.

    Early stop: when :func:`gnc_ext.theory.one_vs_one_closed_form` knows the proven
    optimum and the best configuration reaches it within ``max(tol, 1e-10)`` in cosine,
    the search stops (``optimal=True`` in the result). Otherwise the full budget runs:
    there is no general optimality certificate for the Tammes problem.

    Returns:
        :class:`TammesResult`.

    Raises:
        TypeError / ValueError naming the argument for non-integer or out-of-range
        sizes, counts and tolerances; ImportError without scipy.

    Threads: on the CPU, while ``batch*K*K < 2^22``, torch runs single-threaded during
    the call (restored afterwards): these tensors are too small for intra-op
    parallelism, which made the solver 4x slower on a loaded 2-core machine.

    Complexity: O((restarts + hops*batch) * max_iter * K^2 d) flops in the smoothed
    phase with a few (batch, K, K) float64 buffers (batch=64, K=500: ~130 MB each);
    each polish iteration is one LP with K(d-1)+1 variables and O(contacts) rows.
    Meant for K up to a few hundred; see the module docstring for large K.
    """
    t0 = time.perf_counter()
    a = _driver.check_args(d, K, restarts=restarts, max_iter=max_iter, batch=batch, polish_top=polish_top,
                           polish_iter=polish_iter, tol=tol, time_limit=time_limit, seed=seed,
                           progress=progress, device=device, init=init)
    d, K, restarts, batch, tol, dev, inits = a.d, a.K, a.restarts, a.batch, a.tol, a.device, a.inits
    resources.ensure_fits(min(batch, max(restarts, 1)) * K * K * 8 if d > 1 else K * 8, what=f"tammes(d={d}, K={K}) (batch, K, K) buffers", device=dev)
    hops = _validate.integer(hops, "hops", minimum=0)
    contact_tol = _validate.positive_float(contact_tol, "contact_tol", allow_zero=True)

    proven = _theory.one_vs_one_closed_form(d, K)
    proven_cos = None if proven is None else 1.0 - proven * proven / 2.0

    if d == 1:  # S^0 = {-1, +1}: alternate the two points
        W = torch.zeros(K, 1, dtype=torch.float64)
        W[0::2, 0] = 1.0
        W[1::2, 0] = -1.0
        cmax, contacts, ratt = _stats(W.numpy(), contact_tol)
        md = _chord(cmax)
        return TammesResult(W, md, cmax, math.degrees(math.acos(max(-1.0, min(1.0, cmax)))), contacts, ratt,
                            proven, abs(md - proven) <= 1e-12, 0, [], [md], 0, time.perf_counter() - t0)

    gen = _driver.generator(a.seed)
    h = _spacing(d, K)
    # the search maximises minus the largest cosine; it may stop at the proven optimum
    stop_at = -math.inf if proven_cos is None else proven_cos + max(tol, 1e-10)
    search = _driver.Search(t0, a.time_limit, target=None if proven_cos is None else -stop_at, margin=1e-15)
    search.set(-math.inf, W=None, it=0)
    search.open_bar(a.progress, restarts + hops, f"tammes d={d} K={K}")
    restart_values: List[float] = []

    def consider(X: torch.Tensor, top: int) -> None:
        cm = _sphere.max_cos(X).cpu()
        order = torch.argsort(cm)[:top].tolist()
        Xc = X.detach().cpu().to(torch.float64).numpy()
        for idx in order:
            Wc = Xc[idx] / np.linalg.norm(Xc[idx], axis=1, keepdims=True)
            its = 0
            if a.polish_iter > 0:
                Wc, its = _polish(Wc, max_iter=a.polish_iter, tol=tol, stop_at=stop_at)
            C = Wc @ Wc.T
            np.fill_diagonal(C, -2.0)
            search.offer(-float(C.max()), W=Wc, it=its)
            if search.reached():
                break

    def step_done(n: int) -> None:
        search.record(_chord(-search.value))
        search.advance(n, min_dist=f"{search.history[-1]:.10f}")

    done = 0
    hops_done = 0
    with _sphere.small_problem_threads(dev, batch * K * K), search:
        if inits:  # user-given starting codes: every one is polished
            consider(torch.from_numpy(np.stack(inits)), len(inits))
        while done < restarts and not search.reached():
            nb = min(batch, restarts - done)
            X = _sphere.random_points(nb, K, d, generator=gen, device=dev)
            # a quarter of the starts follow the full continuation from s = 2 (few,
            # well-determined paths), the rest start at s = 32 (diverse basins)
            n_low = nb // 4
            parts = []
            if n_low > 0:
                parts.append(_anneal(X[:n_low], a.max_iter, h, _S_LOW))
            parts.append(_anneal(X[n_low:], a.max_iter, h, _S_GLOBAL))
            X = torch.cat(parts, dim=0)
            restart_values += [_chord(float(c)) for c in _sphere.max_cos(X).cpu()]
            consider(X, a.polish_top)
            done += nb
            step_done(nb)
            if search.out_of_time():
                break
        while hops_done < hops and not search.reached() and not search.out_of_time():
            base = torch.from_numpy(search.best["W"]).to(dev)
            sig = torch.rand(batch, 1, 1, generator=gen, dtype=torch.float64).to(dev) * (0.5 * h)
            noise = torch.randn(batch, K, d, generator=gen, dtype=torch.float64).to(dev)
            Y = _sphere.normalize(base[None] + sig * noise)
            Y = _anneal(Y, max(1, a.max_iter // 2), 0.3 * h, _S_HOP)
            consider(Y, 2)
            hops_done += 1
            step_done(1)
    history = search.history
    state = search.best

    best_W = state["W"]
    cmax, contacts, ratt = _stats(best_W, contact_tol)
    md = _chord(cmax)
    optimal = None if proven_cos is None else bool(cmax <= proven_cos + max(tol, 1e-9))
    return TammesResult(
        W=torch.from_numpy(np.ascontiguousarray(best_W)),
        min_distance=md,
        max_cosine=cmax,
        min_angle_deg=math.degrees(math.acos(max(-1.0, min(1.0, cmax)))),
        contacts=contacts,
        rattlers=ratt,
        proven_optimum=proven,
        optimal=optimal,
        restarts=done,
        restart_values=restart_values,
        history=history,
        polish_iters=state["it"],
        time_s=time.perf_counter() - t0,
    )
