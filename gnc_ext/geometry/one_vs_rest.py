"""Exact, certified one-vs-rest distances (REFERENCE.md: Def. 2.1, Lemma C.4, Thm 3.5).

``dist_k = min_{v ∈ simplex} ‖w_k − Σ_{j≠k} v_j w_j‖`` is the distance from class weight
``w_k`` to the convex hull of the other classes' weights. It is computed by column
generation around an exact small solver:

1. **Candidates.** One similarity-reduce pass (``W·Wᵀ`` in fp32 tiles of one block of
   rows × one block of columns, torch GEMM, then the native top-m epilogue) gives each
   class its ``m`` nearest neighbours by inner product (self excluded).
2. **Exact small problems.** For each class, Wolfe's min-norm-point algorithm on
   ``{w_j − w_k : j ∈ candidates}`` in fp64 on the candidates' Gram matrix (formed per
   class natively on CPU, by one batched cuBLAS GEMM on CUDA), with an incremental
   Cholesky factorisation of the corral matrix ``[⟨y_i, y_j⟩ + 1]`` (new pivots of thin
   simplices recomputed from explicit residuals, removals by Givens downdates);
   batched over classes natively (OpenMP on CPU, one warp per class on CUDA). Round
   r > 1 warm-starts each class from its previous corral.
3. **Pricing.** One similarity-reduce pass of the unit residuals
   ``u_k = (w_k − p_k)/‖w_k − p_k‖`` against all weights (fp64 tiles, native
   max/argmax + top-q epilogue) finds violators ``j`` with ``⟨w_j − p_k, u_k⟩ > tol``;
   they join the candidate list of class ``k`` and only those classes are re-solved.
   Repeat until no violator remains.
4. **Certificate.** The same pass gives ``lower_k = min_{j≠k} ⟨w_k − w_j, u_k⟩``
   (Lemma C.4); ``distance_k − lower_k = max_j ⟨w_j − p_k, u_k⟩ ≤ tol`` on exit.

On CUDA the GEMMs are torch's (cuBLAS) per block of classes, followed by the native
epilogue kernels of ``csrc/cuda/hull.cu`` (the chunked engine, docs/ARCHITECTURE.md); the small
problems run in fp64, one warp per class.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .. import _progress, _validate
from .._engine import chunk_size
from ..ops import hull as _hull_ops
from ..ops.normalize import normalize_rows_named

__all__ = ["OneVsRestResult", "one_vs_rest_distance", "check_unit_rows", "validate_weights", "normalized"]

# |‖w_k‖ − 1| allowed without normalize=True, by input dtype (about 2**-mantissa·√d slack).
UNIT_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}
DEFAULT_TOL = {torch.float64: 1e-10}
DEFAULT_TOL_LOW = 1e-7  # float32/float16/bfloat16 input
_TILE_BYTES = 64 * 2**20


@dataclasses.dataclass
class OneVsRestResult:
    """Result of :func:`one_vs_rest_distance` (all tensors on ``W``'s device).

    Attributes:
        distance: (K,) float64, ``‖w_k − p_k‖`` for the returned feasible hull point
            ``p_k`` — an upper bound on the exact distance, and equal to it within
            ``max_gap``. Differentiable w.r.t. ``W`` (envelope theorem).
        lower: (K,) float64 certified lower bound ``max(0, min_{j≠k}⟨w_k − w_j, u_k⟩)``
            (Lemma C.4), clipped to ``distance`` against rounding.
        rho, rho_lower: ``min_k distance`` and ``min_k lower`` (floats): the exact
            ρ_one-vs-rest lies in ``[rho_lower, rho]`` (an interval no wider than ``max_gap``).
        max_gap: the per-class worst certificate gap ``max_k (distance_k − lower_k)``
            (float): every class's exact distance is known to within it (``gap`` is its
            former name, deprecated).
        projection: (K, d) ``p_k`` (float64 for float64 ``W``, else float32) or None.
        feature: (K, d) optimal feature ``h_k = (w_k − p_k)/‖w_k − p_k‖`` (Thm 3.5), same
            dtype as ``projection``; a zero row where ``distance_k == 0``. None if
            ``return_projection=False``.
        support: (K, m) int64 class indices of the convex combination giving ``p_k``,
            padded with −1 (m = the largest support found, ≤ d + 1).
        weights: (K, m) float64 convex weights (non-negative, rows sum to 1), 0 at padding.
        rattlers: 1-D int64 class indices whose certified lower bound exceeds
            ``rho + rattler_tol`` (Def. 3.4): provably not attaining the minimum.
        iterations: number of column-generation rounds (solve + pricing passes).
        stats: timings and counters (candidates m, violators added, solver status counts,
            Wolfe iterations, max support, tolerance used, converged flag).
    """

    distance: Tensor
    lower: Tensor
    rho: float
    rho_lower: float
    max_gap: float
    projection: Optional[Tensor]
    feature: Optional[Tensor]
    support: Tensor
    weights: Tensor
    rattlers: Tensor
    iterations: int = 0
    stats: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Deprecated: the former name of :attr:`max_gap`."""
        warnings.warn("OneVsRestResult.gap is deprecated; use max_gap (the same number)",
                      DeprecationWarning, stacklevel=2)
        return self.max_gap


def validate_weights(W, name: str = "W") -> Tensor:
    """Checks shared by the hull functions: a finite floating (K, d) tensor, K ≥ 2, d ≥ 1."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (K, d), got {W.dim()}-D with shape {tuple(W.shape)}")
    if not W.is_floating_point() or W.dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32/float64/float16/bfloat16, got "
                        f"{str(W.dtype).replace('torch.', '')}")
    K, d = W.shape
    if K < 2:
        raise ValueError(f"{name}: need at least K = 2 classes (rows), got shape {tuple(W.shape)}")
    if d < 1:
        raise ValueError(f"{name}: need feature dimension d >= 1 (columns), got shape {tuple(W.shape)}")
    _validate.tensor(W, name, ndim=2)
    _validate.finite(W, name)
    return W


def check_unit_rows(W: Tensor, name: str = "W") -> None:
    """Raise ValueError unless every row has unit L2 norm within ``UNIT_TOL[W.dtype]``."""
    norms = torch.linalg.vector_norm(W.detach().double(), dim=1)
    dev = (norms - 1).abs().max().item()
    if not dev <= UNIT_TOL[W.dtype]:
        k = int((norms - 1).abs().argmax())
        raise ValueError(
            f"{name}: rows must have unit L2 norm (row {k} has norm {norms[k].item():.6g}, max deviation "
            f"{dev:.3g} > {UNIT_TOL[W.dtype]:g} for {str(W.dtype).replace('torch.', '')}); pass normalize=True "
            "to normalise them first"
        )


def normalized(W: Tensor, name: str = "W") -> Tensor:
    """``normalize_rows(W)`` after refusing all-zero rows (they have no direction)."""
    zero = torch.linalg.vector_norm(W.detach().double(), dim=1) == 0
    if bool(zero.any()):
        raise ValueError(f"{name}: row {int(zero.nonzero()[0])} is all zeros and cannot be normalised")
    return normalize_rows_named(W, name)


def _candidates(Wc: Tensor, m: int, progress: bool) -> Tensor:
    """(K, m) int64 indices of the m largest <w_k, w_j>, j ≠ k (fp32 tiles, native top-m)."""
    K = Wc.shape[0]
    vals = torch.full((K, m), -math.inf, dtype=Wc.dtype, device=Wc.device)
    idx = torch.full((K, m), -1, dtype=torch.int64, device=Wc.device)
    R = min(K, 4096)
    bar = _bar(progress, K, "hull candidates")
    for r0 in range(0, K, R):
        r1 = min(K, r0 + R)
        rows = torch.arange(r0, r1, device=Wc.device)
        A = Wc[r0:r1]
        c = chunk_size(r1 - r0, K, budget_bytes=_TILE_BYTES)
        for c0 in range(0, K, c):
            tile = (A @ Wc[c0 : c0 + c].T).contiguous()
            _hull_ops.topm_update(tile, rows, c0, vals[r0:r1], idx[r0:r1])
        if bar is not None:
            bar.update(r1 - r0)
    if bar is not None:
        bar.close()
    return idx


def _bar(progress: bool, total: int, desc: str):
    return _progress.bar(progress, total, desc)


def _merge(cand: Tensor, new: Tensor) -> Tensor:
    """Union of two (B, ·) int64 index lists per row; duplicates and padding become -1."""
    x = torch.cat([cand, new], dim=1).sort(dim=1).values
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[:, 1:] = x[:, 1:] == x[:, :-1]
    x = torch.where(dup, torch.full_like(x, -1), x)
    return x


def _solve_core(W: Tensor, *, tol: float, m: int, max_add: int, max_rounds: int, max_iter: Optional[int],
                progress: Optional[bool]) -> Dict[str, Any]:
    """Column generation on unit-norm W (detached). Returns fp64 tensors on W's device."""
    t0 = time.perf_counter()
    K, d = W.shape
    dev = W.device
    W64 = W.to(torch.float64).contiguous()
    Wc = W.to(torch.float32).contiguous()
    cand = _candidates(Wc, m, progress)
    del Wc
    t_cand = time.perf_counter() - t0

    dist = torch.zeros(K, dtype=torch.float64, device=dev)
    lower = torch.zeros(K, dtype=torch.float64, device=dev)
    proj = torch.empty(K, d, dtype=torch.float64, device=dev)
    support = torch.full((K, 1), -1, dtype=torch.int64, device=dev)
    weights = torch.zeros(K, 1, dtype=torch.float64, device=dev)
    status_all = torch.zeros(K, dtype=torch.int64, device=dev)
    iters_all = torch.zeros(K, dtype=torch.int64, device=dev)
    active = torch.arange(K, device=dev)
    q = max(1, min(max_add, K - 1))
    rounds = 0
    added_total = 0
    resolved = []
    converged = False
    t_solve = t_price = 0.0
    while True:
        rounds += 1
        B = active.shape[0]
        resolved.append(B)
        n = cand.shape[1]
        mi = max_iter if max_iter is not None else 50 * (min(n, d + 1) + 10)
        # ---- exact small problems, in batches bounding the (batch x d) buffers ------
        ts = time.perf_counter()
        s_cap = max(1, min(n, d + 1))
        per = d + 2 * s_cap + (n * d + n * n if dev.type == "cuda" else 0)
        bs = max(1, min(B, (2 * _TILE_BYTES) // (8 * per)))
        if dev.type == "cuda":
            bs = max(1, min(bs, (256 * 2**20) // (8 * _hull_ops.solve_workspace_doubles(n, d))))
        if _progress.enabled(progress) and bs > 2048:  # a bar may show: update it every 2048 classes
            bs = 2048
        bar = _bar(progress, B, f"hull solve (round {rounds})")
        for b0 in range(0, B, bs):
            cls = active[b0 : b0 + bs].contiguous()
            cb = cand[b0 : b0 + bs].contiguous()
            nb = cls.shape[0]
            p = torch.empty(nb, d, dtype=torch.float64, device=dev)
            dd = torch.empty(nb, dtype=torch.float64, device=dev)
            sp = torch.empty(nb, s_cap, dtype=torch.int64, device=dev)
            wt = torch.empty(nb, s_cap, dtype=torch.float64, device=dev)
            it = torch.empty(nb, dtype=torch.int64, device=dev)
            st = torch.empty(nb, dtype=torch.int64, device=dev)
            if rounds > 1:  # warm start from the previous corral
                _hull_ops.solve(W64, cls, cb, tol, mi, p, dd, sp, wt, it, st,
                                support[cls].contiguous(), weights[cls].contiguous())
            else:
                _hull_ops.solve(W64, cls, cb, tol, mi, p, dd, sp, wt, it, st)
            used = int((sp >= 0).sum(1).max().item()) if nb else 1
            used = max(used, 1)
            if used > support.shape[1]:
                pad = used - support.shape[1]
                support = torch.cat([support, support.new_full((K, pad), -1)], 1)
                weights = torch.cat([weights, weights.new_zeros((K, pad))], 1)
            support[cls] = -1
            weights[cls] = 0
            support[cls, :used] = sp[:, :used]
            weights[cls, :used] = wt[:, :used]
            proj[cls] = p
            dist[cls] = dd
            status_all[cls] = st
            iters_all[cls] += it
            if bar is not None:
                bar.update(nb)
        if bar is not None:
            bar.close()
        t_solve += time.perf_counter() - ts
        # ---- pricing + certificate: one similarity-reduce pass of residuals vs all W --
        tp = time.perf_counter()
        dA = dist[active]
        zero = dA <= 0
        R = active.shape[0]
        U = (W64[active] - proj[active]) / torch.where(zero, torch.ones_like(dA), dA).unsqueeze(1)
        U[zero] = 0
        c_self = (W64[active] * U).sum(1)          # <w_k, u_k>
        pu = (proj[active] * U).sum(1)             # <p_k, u_k>
        thresh = torch.where(zero, torch.full_like(pu, math.inf), pu + tol)
        best_val = torch.full((R,), -math.inf, dtype=torch.float64, device=dev)
        best_idx = torch.full((R,), -1, dtype=torch.int64, device=dev)
        viol_val = torch.full((R, q), -math.inf, dtype=torch.float64, device=dev)
        viol_idx = torch.full((R, q), -1, dtype=torch.int64, device=dev)
        RB = min(R, 4096)
        bar = _bar(progress, R, f"hull pricing (round {rounds})")
        for r0 in range(0, R, RB):
            r1 = min(R, r0 + RB)
            A = U[r0:r1]
            rows = active[r0:r1].contiguous()
            c = chunk_size(r1 - r0, K, budget_bytes=_TILE_BYTES // 2)
            for c0 in range(0, K, c):
                tile = (A @ W64[c0 : c0 + c].T).contiguous()
                _hull_ops.price_update(tile, rows, c0, thresh[r0:r1], best_val[r0:r1], best_idx[r0:r1],
                                       viol_val[r0:r1], viol_idx[r0:r1])
            if bar is not None:
                bar.update(r1 - r0)
        if bar is not None:
            bar.close()
        lo = torch.where(zero, torch.zeros_like(c_self), c_self - best_val)
        lower[active] = torch.minimum(lo.clamp_min(0.0), dist[active])
        t_price += time.perf_counter() - tp
        has = viol_idx[:, :].max(dim=1).values >= 0
        if not bool(has.any()):
            converged = True
            break
        if rounds >= max_rounds:
            break
        old = cand[has]
        merged = _merge(old, viol_idx[has])
        grew = (merged >= 0).sum(1) > (old >= 0).sum(1)
        added_total += int(((merged >= 0).sum(1) - (old >= 0).sum(1)).sum().item())
        keep = grew
        if not bool(keep.any()):  # violators already candidates: rounding floor reached
            break
        active = active[has][keep].contiguous()
        merged = merged[keep]
        # drop all-padding columns to keep the lists tight
        width = int((merged >= 0).sum(1).max().item())
        cand = merged.sort(dim=1, descending=True).values[:, :width].contiguous()

    width = max(1, int((support >= 0).sum(1).max().item()))  # entries are packed to the left
    support, weights = support[:, :width].contiguous(), weights[:, :width].contiguous()
    counts = torch.bincount(status_all, minlength=len(_hull_ops.SOLVE_STATUS)).tolist()
    stats = {
        "candidates": m, "max_add": q, "tol": tol, "rounds": rounds, "classes_solved_per_round": resolved,
        "violators_added": added_total, "converged": converged,
        "solver_status": dict(zip(_hull_ops.SOLVE_STATUS, counts)),
        "wolfe_iterations_max": int(iters_all.max().item()), "max_support": int((support >= 0).sum(1).max().item()),
        "time_candidates_s": t_cand, "time_solve_s": t_solve, "time_pricing_s": t_price,
        "time_total_s": time.perf_counter() - t0,
    }
    return {"distance": dist, "lower": lower, "projection": proj, "support": support, "weights": weights,
            "W64": W64, "stats": stats}


def one_vs_rest_distance(W: Tensor, *, normalize: bool = False, tol: Optional[float] = None,
                         return_projection: bool = True, candidates: Optional[int] = None, max_add: int = 32,
                         max_rounds: int = 100, max_iter: Optional[int] = None,
                         progress: Optional[bool] = None, rattler_tol: Optional[float] = None) -> OneVsRestResult:
    """Exact one-vs-rest distances ``dist_k = dist(w_k, conv{w_j : j ≠ k})`` with a certificate.

    Solves every class's minimum-norm-point problem exactly (Wolfe's algorithm in fp64 on
    a candidate set grown by column generation) and proves the answer with the duality
    certificate of Lemma C.4: for the unit direction ``u_k`` of ``w_k − p_k``,
    ``lower_k = min_{j≠k}⟨w_k − w_j, u_k⟩ ≤ dist_k ≤ ‖w_k − p_k‖ = distance_k``.

    Args:
        W: (K, d) class weights, float32/float64/float16/bfloat16, CPU or CUDA, K ≥ 2,
            d ≥ 1. Rows must have unit norm within ``UNIT_TOL[dtype]`` (1e-6 fp64, 1e-4
            fp32, 4e-3 fp16, 2e-2 bf16) unless ``normalize=True``. The exact problem is
            solved for the given numbers upcast to fp64 (any deviation from unit norm is
            kept: the hull geometry does not need unit rows).
        normalize: divide rows by their norms first (differentiably, via
            :func:`gnc_ext.normalize_rows`).
        tol: absolute target for the certified gap ``distance_k − lower_k`` (in distance
            units, for every k). Default 1e-10 for float64 input, 1e-7 otherwise (the
            internal arithmetic is fp64 in every case; a looser default for low-precision
            inputs just saves pricing rounds). On exit ``gap ≤ tol`` unless
            ``stats["converged"]`` is False (``max_rounds`` reached, or ``tol`` below the
            fp64 rounding floor of about ``16·√d·2⁻⁵²``, where the gap stays at that floor).
        return_projection: also return ``projection`` and ``feature`` ((K, d) each).
        candidates: initial candidates per class (top-m neighbours by inner product).
            Default ``min(K − 1, clamp(2·d, 8, 64))``. Only speed depends on it.
        max_add: violators added per class per pricing round (default 32).
        max_rounds: cap on column-generation rounds (default 100).
        max_iter: cap on Wolfe iterations per class (default 50·(min(n, d+1) + 10)).
        progress: show tqdm bars. None (default): when stderr is a terminal, once a
            pass has run for a second (so every long run shows one, whatever K);
            True: always; False: never.
        rattler_tol: a class is reported as a rattler when its certified lower bound
            exceeds ``rho + rattler_tol``. Default ``tol``: provably above the minimum for
            these exact numbers. Data known only to a few digits (published tables,
            fp32/bf16 weights) should pass a larger value, e.g. 1e-6, or classes that are
            tied in exact arithmetic show up as rattlers through rounding.

    Returns:
        :class:`OneVsRestResult`.

    Distance 0: happens when ``w_k`` lies in the convex hull of the others. For unit
    rows this means ``w_k`` duplicates another class (the sphere is strictly convex).
    Then ``distance_k = 0``, ``lower_k = 0`` (trivially certified), ``feature_k = 0`` and
    the gradient is 0: no feature separates class k from the rest — for every unit
    ``h`` some other class scores at least ``⟨w_k, h⟩`` (a HardMax margin ≤ 0).

    Numerics: candidates use fp32 GEMM tiles (only which neighbours are tried depends on
    them); the small problems, the residuals, the pricing GEMM and the certificate are
    fp64, so ``distance``/``lower`` are exact for the fp64 upcast of ``W`` up to
    fp64 rounding (~1e-15 relative) whatever the input dtype.

    Complexity: one fp32 K×K×d GEMM pass for candidates, plus one fp64 pass per pricing
    round over only the classes still changing (usually 1–3 rounds); the small problems
    cost O(iterations·n·d) per class with n ≈ m + added violators. Memory: O(K·(d + m))
    plus one 64 MiB similarity tile; never a K×K matrix.

    Raises:
        TypeError: ``W`` is not a floating tensor; ValueError: ``W`` is not 2-D, has
        K < 2 or d < 1, is empty, has NaN/Inf, or non-unit rows without
        ``normalize=True``; or an option is out of range.
    """
    validate_weights(W, "W")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    if not isinstance(return_projection, bool):
        raise TypeError(f"return_projection: expected a bool, got {type(return_projection).__name__}")
    K, d = W.shape
    if tol is None:
        tol = DEFAULT_TOL.get(W.dtype, DEFAULT_TOL_LOW)
    else:
        tol = _validate.positive_float(tol, "tol", allow_zero=True)
    if candidates is None:
        m = min(K - 1, max(8, min(64, 2 * d)))
    else:
        m = min(K - 1, _validate.integer(candidates, "candidates", minimum=1))
    max_add = _validate.integer(max_add, "max_add", minimum=1)
    max_rounds = _validate.integer(max_rounds, "max_rounds", minimum=1)
    if max_iter is not None:
        max_iter = _validate.integer(max_iter, "max_iter", minimum=1)
    if rattler_tol is not None:  # checked before the solve, not after it
        rattler_tol = _validate.positive_float(rattler_tol, "rattler_tol", allow_zero=True)
    progress = None if progress is None else _progress.enabled(progress)
    Wn = normalized(W, "W") if normalize else W
    if not normalize:
        check_unit_rows(W, "W")
    with torch.no_grad():
        core = _solve_core(Wn.detach(), tol=tol, m=m, max_add=max_add, max_rounds=max_rounds,
                           max_iter=max_iter, progress=progress)
    if not core["stats"]["converged"]:
        warnings.warn(
            f"one_vs_rest_distance: stopped before every certified gap was <= tol={tol:g} "
            f"(rounds={core['stats']['rounds']}, solver status {core['stats']['solver_status']}); the bounds "
            "returned are still valid, see result.max_gap", RuntimeWarning, stacklevel=2)
    dist, lower, proj = core["distance"], core["lower"], core["projection"]
    support, weights = core["support"], core["weights"]
    W64 = core["W64"]
    zero = dist <= 0
    feat64 = (W64 - proj) / torch.where(zero, torch.ones_like(dist), dist).unsqueeze(1)
    feat64[zero] = 0
    if Wn.requires_grad:
        distance = torch.ops.gnc_ext.hull_envelope(Wn, dist, feat64, support, weights)
    else:
        distance = dist
    rho = float(dist.min().item())
    rho_lower = float(lower.min().item())
    max_gap = float((dist - lower).max().item())
    if rattler_tol is None:
        rattler_tol = tol
    rattlers = torch.nonzero(lower > rho + float(rattler_tol)).flatten()
    out_dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    return OneVsRestResult(
        distance=distance, lower=lower, rho=rho, rho_lower=rho_lower, max_gap=max_gap,
        projection=proj.to(out_dtype) if return_projection else None,
        feature=feat64.to(out_dtype) if return_projection else None,
        support=support, weights=weights, rattlers=rattlers, iterations=core["stats"]["rounds"],
        stats=core["stats"],
    )
