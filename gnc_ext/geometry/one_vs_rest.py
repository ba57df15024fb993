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
import os
import time
import warnings
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .. import _progress, _validate
from .. import resources as _resources
from .._engine import chunk_size
from ..ops import hull as _hull_ops
from ..ops.normalize import normalize_rows_named
from .. import distributed as _dist_helpers
from . import _checkpoint

__all__ = ["OneVsRestResult", "one_vs_rest_distance", "check_unit_rows", "validate_weights", "normalized",
           "one_vs_rest_bytes", "block_size"]

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


def _candidates(Wc: Tensor, m: int, progress: Optional[bool], first: int = 0, stop: Optional[int] = None) -> Tensor:
    """(stop − first, m) int64 indices of the m largest <w_k, w_j>, j ≠ k, for the classes
    k in [first, stop) (fp32 tiles, native top-m)."""
    K = Wc.shape[0]
    stop = K if stop is None else stop
    n = stop - first
    vals = torch.full((n, m), -math.inf, dtype=Wc.dtype, device=Wc.device)
    idx = torch.full((n, m), -1, dtype=torch.int64, device=Wc.device)
    R = min(n, 4096)
    bar = _bar(progress, n, "hull candidates")
    for r0 in range(0, n, R):
        r1 = min(n, r0 + R)
        rows = torch.arange(first + r0, first + r1, device=Wc.device)
        A = Wc[first + r0 : first + r1]
        c = chunk_size(r1 - r0, K, budget_bytes=_TILE_BYTES)
        for c0 in range(0, K, c):
            tile = (A @ Wc[c0 : c0 + c].T).contiguous()
            _hull_ops.topm_update(tile, rows, c0, vals[r0:r1], idx[r0:r1])
        if bar is not None:
            bar.update(r1 - r0)
    if bar is not None:
        bar.close()
    return idx


def _bar(progress: Optional[bool], total: int, desc: str):
    return _progress.bar(progress, total, desc)


def _merge(cand: Tensor, new: Tensor) -> Tensor:
    """Union of two (B, ·) int64 index lists per row; duplicates and padding become -1."""
    x = torch.cat([cand, new], dim=1).sort(dim=1).values
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[:, 1:] = x[:, 1:] == x[:, :-1]
    x = torch.where(dup, torch.full_like(x, -1), x)
    return x


def _solve_block(W64: Tensor, Wc: Tensor, first: int, stop: int, *, tol: float, m: int, max_add: int,
                 max_rounds: int, max_iter: Optional[int], progress: Optional[bool]) -> Dict[str, Any]:
    """Column generation for the classes [first, stop) against all of W (W64: the fp64
    upcast, Wc: fp32 copy for the candidate pass). Every class's rounds depend only on its
    own candidates, violators and corral, so the result of a class does not depend on
    which other classes share its block. Returns fp64 tensors of the block's classes."""
    t0 = time.perf_counter()
    K, d = W64.shape
    Kb = stop - first
    dev = W64.device
    cand = _candidates(Wc, m, progress, first, stop)
    t_cand = time.perf_counter() - t0

    dist = torch.zeros(Kb, dtype=torch.float64, device=dev)
    lower = torch.zeros(Kb, dtype=torch.float64, device=dev)
    proj = torch.empty(Kb, d, dtype=torch.float64, device=dev)
    support = torch.full((Kb, 1), -1, dtype=torch.int64, device=dev)
    weights = torch.zeros(Kb, 1, dtype=torch.float64, device=dev)
    status_all = torch.zeros(Kb, dtype=torch.int64, device=dev)
    iters_all = torch.zeros(Kb, dtype=torch.int64, device=dev)
    active = torch.arange(first, stop, device=dev)
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
        # cap from the longest list any class can have in this round (not this batch's), so
        # that it does not depend on which classes share the batch
        mi = max_iter if max_iter is not None else 50 * (min(m + (rounds - 1) * q, d + 1) + 10)
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
            loc = cls - first
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
                                support[loc].contiguous(), weights[loc].contiguous())
            else:
                _hull_ops.solve(W64, cls, cb, tol, mi, p, dd, sp, wt, it, st)
            used = int((sp >= 0).sum(1).max().item()) if nb else 1
            used = max(used, 1)
            if used > support.shape[1]:
                pad = used - support.shape[1]
                support = torch.cat([support, support.new_full((Kb, pad), -1)], 1)
                weights = torch.cat([weights, weights.new_zeros((Kb, pad))], 1)
            support[loc] = -1
            weights[loc] = 0
            support[loc, :used] = sp[:, :used]
            weights[loc, :used] = wt[:, :used]
            proj[loc] = p
            dist[loc] = dd
            status_all[loc] = st
            iters_all[loc] += it
            if bar is not None:
                bar.update(nb)
        if bar is not None:
            bar.close()
        t_solve += time.perf_counter() - ts
        # ---- pricing + certificate: one similarity-reduce pass of residuals vs all W --
        tp = time.perf_counter()
        aloc = active - first
        dA = dist[aloc]
        zero = dA <= 0
        R = active.shape[0]
        U = (W64[active] - proj[aloc]) / torch.where(zero, torch.ones_like(dA), dA).unsqueeze(1)
        U[zero] = 0
        c_self = (W64[active] * U).sum(1)          # <w_k, u_k>
        pu = (proj[aloc] * U).sum(1)               # <p_k, u_k>
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
        lower[aloc] = torch.minimum(lo.clamp_min(0.0), dist[aloc])
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
    stats = {"rounds": rounds, "classes_solved_per_round": resolved, "violators_added": added_total,
             "converged": converged, "time_candidates_s": t_cand, "time_solve_s": t_solve,
             "time_pricing_s": t_price}
    return {"distance": dist, "lower": lower, "projection": proj, "support": support, "weights": weights,
            "status": status_all, "iterations": iters_all, "stats": stats}


def one_vs_rest_bytes(K: int, d: int, m: int) -> int:
    """Lower bound of the bytes :func:`one_vs_rest_distance` allocates: the fp64 and fp32
    copies of W, the fp64 projections and features (K·d·28), the candidate lists (K·m·8)
    and one similarity tile."""
    return K * d * 28 + K * m * 8 + _TILE_BYTES


def block_size(K: int) -> int:
    """Classes per block in a distributed or checkpointed run: ``min(4096, max(512, ⌈K/64⌉))``.
    A function of K only, so a checkpoint resumes under any world size."""
    return min(4096, max(512, -(-K // 64)))


def _assemble(blocks: Dict[int, Dict[str, Any]], K: int, d: int, dev: torch.device) -> Dict[str, Any]:
    """Stack the blocks (start → block result) in class order; merge their counters."""
    starts = sorted(blocks)
    parts = [blocks[s] for s in starts]
    n = sum(int(p["distance"].shape[0]) for p in parts)
    if n != K or (starts and starts[0] != 0):  # pragma: no cover - guarded by the drivers
        raise RuntimeError(f"one_vs_rest_distance: internal error, blocks cover {n} of {K} classes")
    width = max(int(p["support"].shape[1]) for p in parts)

    def padded(t: Tensor, fill) -> Tensor:
        t = t.to(dev)
        if t.shape[1] == width:
            return t
        return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], 1)

    out = {
        "distance": torch.cat([p["distance"].to(dev) for p in parts]),
        "lower": torch.cat([p["lower"].to(dev) for p in parts]),
        "projection": torch.cat([p["projection"].to(dev) for p in parts]),
        "support": torch.cat([padded(p["support"], -1) for p in parts]),
        "weights": torch.cat([padded(p["weights"], 0.0) for p in parts]),
    }
    status = torch.cat([p["status"].to(dev) for p in parts])
    iters = torch.cat([p["iterations"].to(dev) for p in parts])
    width = max(1, int((out["support"] >= 0).sum(1).max().item()))
    out["support"] = out["support"][:, :width].contiguous()
    out["weights"] = out["weights"][:, :width].contiguous()
    rounds = max(p["stats"]["rounds"] for p in parts)
    per_round = [sum(p["stats"]["classes_solved_per_round"][r] for p in parts
                     if r < len(p["stats"]["classes_solved_per_round"])) for r in range(rounds)]
    counts = torch.bincount(status, minlength=len(_hull_ops.SOLVE_STATUS)).tolist()
    out["stats"] = {
        "rounds": rounds, "classes_solved_per_round": per_round,
        "violators_added": sum(p["stats"]["violators_added"] for p in parts),
        "converged": all(p["stats"]["converged"] for p in parts),
        "solver_status": dict(zip(_hull_ops.SOLVE_STATUS, counts)),
        "wolfe_iterations_max": int(iters.max().item()),
        "max_support": int((out["support"] >= 0).sum(1).max().item()),
        "time_candidates_s": sum(p["stats"]["time_candidates_s"] for p in parts),
        "time_solve_s": sum(p["stats"]["time_solve_s"] for p in parts),
        "time_pricing_s": sum(p["stats"]["time_pricing_s"] for p in parts),
    }
    return out


def _split_by_rate(sizes, rates) -> list:
    """Contiguous split of blocks (class counts ``sizes``) over ranks so that each rank's share
    of classes is proportional to its measured rate (classes per second); deterministic in
    its inputs, so every rank computes the same split."""
    world = len(rates)
    known = [r for r in rates if r is not None and r > 0]
    fill = sum(known) / len(known) if known else 1.0
    rr = [r if (r is not None and r > 0) else fill for r in rates]
    total = float(sum(sizes))
    bounds, acc = [], 0.0
    for r in rr[:-1]:
        acc += r
        bounds.append(total * acc / sum(rr))
    out = [[] for _ in range(world)]
    pos = 0.0
    rank = 0
    for i, sz in enumerate(sizes):
        mid = pos + sz / 2.0
        while rank < world - 1 and mid > bounds[rank]:
            rank += 1
        out[rank].append(i)
        pos += sz
    return out


def _problem_fields(W: Tensor, *, normalize, tol, m, max_add, max_rounds, max_iter) -> Dict[str, Any]:
    """What identifies a one-vs-rest problem (a checkpoint's key; compared across ranks)."""
    K, d = W.shape
    return {"K": K, "d": d, "dtype": str(W.dtype).replace("torch.", ""),
            "W": f"{_dist_helpers.digest(W):016x}", "normalize": normalize, "tol": tol, "candidates": m,
            "max_add": max_add, "max_rounds": max_rounds, "max_iter": max_iter, "block": block_size(K)}


def _solve_blocks(Wd: Tensor, problem: Dict[str, Any], *, group, checkpoint, checkpoint_every: float,
                  progress: Optional[bool], agree_extra: Dict[str, Any], **opts) -> Dict[str, Any]:
    """Blocked driver: the classes in blocks of :func:`block_size`, over the ranks of
    ``group`` (balanced by each rank's measured rate) and/or resumed from and saved to
    ``checkpoint``. Returns what :func:`_solve_block` returns, for all K classes."""
    t0 = time.perf_counter()
    K, d = Wd.shape
    dev = Wd.device
    bs = block_size(K)
    starts = list(range(0, K, bs))
    rank, world = (0, 1) if group is None else _dist_helpers.check_group(group)
    ck, loaded, local_err = None, {}, None
    if checkpoint is not None:
        ck = _checkpoint.HullCheckpoint(checkpoint, problem, writer=(rank == 0))
        try:
            loaded = ck.open()
        except (ValueError, OSError) as e:
            if group is None:
                raise
            local_err = e
    if group is not None:
        fields = dict(agree_extra)
        fields["checkpoint blocks"] = (f"error {type(local_err).__name__}" if local_err is not None
                                       else sorted(loaded))
        try:
            _dist_helpers.agree(fields, group, "one_vs_rest_distance")
        except ValueError:
            if local_err is not None:
                raise local_err from None
            raise
        if local_err is not None:
            raise local_err
    done: Dict[int, Dict[str, Any]] = {int(s): v for s, v in loaded.items()}
    resumed = sum(int(v["distance"].shape[0]) for v in done.values())
    todo = [s for s in starts if s not in done]
    W64 = Wd.to(torch.float64).contiguous()
    Wc = Wd.to(torch.float32).contiguous()

    def solve(s: int) -> Dict[str, Any]:
        r = _solve_block(W64, Wc, s, min(K, s + bs), progress=False, **opts)
        return r

    last_save = time.monotonic()
    writes, write_s = 0, 0.0

    def maybe_save(final: bool = False) -> None:
        nonlocal last_save, writes, write_s
        if ck is None or rank != 0:
            return
        if final or time.monotonic() - last_save >= checkpoint_every:
            tw = time.perf_counter()
            if ck.save(done):
                writes += 1
            write_s += time.perf_counter() - tw
            last_save = time.monotonic()

    bar = _bar(progress if rank == 0 else False, K, "hull classes")
    if bar is not None:
        bar.update(resumed)
    busy = [0.0] * world
    n_cls = [0] * world
    steps = 0
    try:
        if group is None:
            for s in todo:
                tb = time.perf_counter()
                done[s] = solve(s)
                busy[0] += time.perf_counter() - tb
                n_cls[0] += int(done[s]["distance"].shape[0])
                if bar is not None:
                    bar.update(int(done[s]["distance"].shape[0]))
                maybe_save()
        else:
            pos = 0
            while pos < len(todo):
                left = len(todo) - pos
                take = min(left, world) if steps == 0 else min(left, max(world, -(-left // 2)))
                step_blocks = todo[pos : pos + take]
                pos += take
                rates = [n_cls[r] / busy[r] if busy[r] > 0 else None for r in range(world)]
                sizes = [min(K, s + bs) - s for s in step_blocks]
                mine = [step_blocks[i] for i in _split_by_rate(sizes, rates)[rank]]
                tb = time.perf_counter()
                res = {s: solve(s) for s in mine}
                dt = time.perf_counter() - tb
                payload = ({s: {f: (v.cpu() if isinstance(v, Tensor) else v) for f, v in r.items()}
                            for s, r in res.items()}, dt)
                got = _dist_helpers.all_gather_objects(payload, group, "one_vs_rest_distance", rank=rank)
                for r, (blocks_r, dt_r) in enumerate(got):
                    busy[r] += dt_r
                    for s, v in blocks_r.items():
                        done[s] = res[s] if s in res else v
                        n_cls[r] += int(v["distance"].shape[0])
                steps += 1
                if bar is not None:
                    bar.update(sum(sizes))
                maybe_save()
        maybe_save(final=True)
    finally:
        if bar is not None:
            bar.close()
    out = _assemble(done, K, d, dev)
    out["stats"].update({
        "block_size": bs, "blocks": len(starts), "resumed_classes": resumed, "world_size": world,
        "rank_busy_s": busy, "rank_classes": n_cls, "steps": steps,
        "checkpoint_writes": writes, "checkpoint_write_s": write_s,
        "time_wall_s": time.perf_counter() - t0,
    })
    return out


def one_vs_rest_distance(W: Tensor, *, normalize: bool = False, tol: Optional[float] = None,
                         return_projection: bool = True, candidates: Optional[int] = None, max_add: int = 32,
                         max_rounds: int = 100, max_iter: Optional[int] = None,
                         progress: Optional[bool] = None, rattler_tol: Optional[float] = None,
                         group=None, checkpoint=None, checkpoint_every: float = 60.0) -> OneVsRestResult:
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
        max_iter: cap on Wolfe iterations per class (default 50·(min(n_r, d+1) + 10) in
            round r, with n_r = candidates + (r − 1)·max_add the longest list a class can
            have then).
        progress: show tqdm bars. None (default): when stderr is a terminal, once a
            pass has run for a second (so every long run shows one, whatever K);
            True: always; False: never.
        rattler_tol: a class is reported as a rattler when its certified lower bound
            exceeds ``rho + rattler_tol``. Default ``tol``: provably above the minimum for
            these exact numbers. Data known only to a few digits (published tables,
            fp32/bf16 weights) should pass a larger value, e.g. 1e-6, or classes that are
            tied in exact arithmetic show up as rattlers through rounding.
        group: a ``torch.distributed`` process group (gloo on CPU, NCCL on GPUs) or None.
            Every rank passes the same ``W`` and options (checked first by digest: a
            mismatch raises ``ValueError`` on every rank, naming what differs); the classes
            are solved in blocks (:func:`block_size`) shared out by each rank's measured
            rate; every rank returns the whole result, the one a single process gives
            (docs/SCALING.md). A failed collective raises
            :class:`gnc_ext.distributed.CollectiveError`.
        checkpoint: a directory (str or os.PathLike) that makes the run resumable: solved
            blocks are written there atomically, and a rerun with the same ``W`` and
            options reads them instead of solving again; a directory written for another
            problem is refused with ``ValueError`` naming what differs. With ``group``,
            rank 0 writes and every rank reads (use a shared file system across nodes).
        checkpoint_every: at most one checkpoint write per this many seconds (default 60;
            0: after every block); a last write when the run completes.

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
        ``normalize=True``; or an option is out of range; or (``group``) the ranks hold
        different inputs, or (``checkpoint``) the directory belongs to another problem.
        RuntimeError: ``group`` given but torch.distributed is not initialised.
        :class:`gnc_ext.resources.InsufficientMemoryError` (a MemoryError): the arrays
        of :func:`one_vs_rest_bytes` cannot fit on W's device.
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
    if group is not None:
        _dist_helpers.check_group(group, "group")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a path (str or os.PathLike) or None, got {type(checkpoint).__name__}")
    checkpoint_every = _validate.positive_float(checkpoint_every, "checkpoint_every", allow_zero=True)
    _resources.ensure_fits(one_vs_rest_bytes(K, d, m), what=f"one_vs_rest_distance(K={K}, d={d})",
                           device=W.device)
    Wn = normalized(W, "W") if normalize else W
    if not normalize:
        check_unit_rows(W, "W")
    opts = dict(tol=tol, m=m, max_add=max_add, max_rounds=max_rounds, max_iter=max_iter)
    t0 = time.perf_counter()
    with torch.no_grad():
        if group is None and checkpoint is None:
            Wd = Wn.detach()
            core = _assemble({0: _solve_block(Wd.to(torch.float64).contiguous(), Wd.to(torch.float32).contiguous(),
                                              0, K, progress=progress, **opts)}, K, d, W.device)
        else:
            problem = _problem_fields(W, normalize=normalize, **opts)
            extra = dict(problem, return_projection=return_projection, rattler_tol=rattler_tol,
                         checkpoint=checkpoint is not None, checkpoint_every=checkpoint_every,
                         device=W.device.type)
            core = _solve_blocks(Wn.detach(), problem, group=group, checkpoint=checkpoint,
                                 checkpoint_every=checkpoint_every, progress=progress, agree_extra=extra,
                                 **opts)
    core["stats"].update({"candidates": m, "max_add": max(1, min(max_add, K - 1)), "tol": tol,
                          "time_total_s": time.perf_counter() - t0})
    if not core["stats"]["converged"]:
        warnings.warn(
            f"one_vs_rest_distance: stopped before every certified gap was <= tol={tol:g} "
            f"(rounds={core['stats']['rounds']}, solver status {core['stats']['solver_status']}); the bounds "
            "returned are still valid, see result.max_gap", RuntimeWarning, stacklevel=2)
    dist, lower, proj = core["distance"], core["lower"], core["projection"]
    support, weights = core["support"], core["weights"]
    W64 = Wn.detach().to(torch.float64)
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
