"""The metrics family's kernels: how ``gnc_ext.metrics`` reaches native code.

- :func:`update_batch` — the accumulator's per-batch native pass (normalise, group by
  class, fp64 deviation sums).
- :func:`argmax_rows` — ``argmax_k (⟨a_i, b_k⟩ + bias_k)`` streamed over tiles of classes
  (a GEMM per tile and the native argmax epilogue, or the certified TF32 screening of
  ``_engine.certified_argmax``): never a (rows × K) matrix.
- :func:`pairwise_class_stats` — the truly pairwise statistics of K unit vectors (row
  maxima of the cosines, CDNV, kernel mean and variance), streamed over fp64 tiles of
  the K × K Gram matrix formed block by block and reduced at once: memory O(K + one
  tile). Device-agnostic torch (CPU BLAS, cuBLAS on CUDA).

No autograd: these are measurements, run under ``torch.no_grad``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _engine
from .. import distributed as _dist_helpers
from .._native import native, stream_of, view

__all__ = ["update_batch", "argmax_rows", "screen_bounds", "pairwise_class_stats", "PairStats",
           "pair_block", "KERNELS"]

KERNELS = ("log", "riesz", "distance")
# Pairs whose cosine exceeds 1 − CLOSE_COS get their squared chord from the difference of
# the rows instead of 2 − 2⟨x_i, x_j⟩ (relative error ≤ ~4·eps/CLOSE_COS otherwise).
CLOSE_COS = 1e-3


def update_batch(features: Tensor, labels: Tensor, shift: Tensor, dsum: Tensor, sqsum: Tensor, counts: Tensor,
                 Z: Tensor, first: Tensor, normalize: bool, eps: float) -> None:
    """One batch into the accumulator state (all tensors on one device, checked by the
    caller): writes the fp64 deviations ``h_i − c_{y_i}`` into ``Z`` (B × d) and adds to
    ``dsum``, ``sqsum`` and ``counts``; a class seen for the first time gets its first
    sample as reference point ``shift``. ``first`` is a (K,) int64 workspace."""
    native.metrics_update_batch(view(features), view(labels), view(shift), view(dsum), view(sqsum), view(counts),
                                view(Z), view(first), bool(normalize), float(eps), stream_of(features))


def screen_bounds(B: Tensor, bias: Optional[Tensor]) -> Tuple[float, float]:
    """``(max_k ‖b_k‖, max_k |bias_k|)`` for :func:`argmax_rows` with ``screen=True``
    (computed once, reused across row blocks)."""
    return _engine.class_bounds(B, bias)


def argmax_rows(A: Tensor, B: Tensor, bias: Tensor, *, screen: bool = False,
                bounds: Optional[Tuple[float, float]] = None, out: Optional[Tensor] = None) -> Tensor:
    """``argmax_k (⟨a_i, b_k⟩ + bias_k)`` for every row of A, ties to the lowest k.

    Args:
        A: (R, d) float32 or float64. B: (K, d) and bias: (K,) of A's dtype and device,
            contiguous; ``bias_k = -inf`` excludes class k.
        screen: float32 only: TF32 tensor-core tiles screened and re-scored exactly in
            float64 (``_engine.certified_argmax``), else plain tiles in A's dtype.
        bounds: :func:`screen_bounds` of (B, bias) (screening only).
        out: optional (R,) int64 output.

    Returns:
        (R,) int64 indices (-1 only where every bias is -inf).
    """
    R, K = A.shape[0], B.shape[0]
    if out is None:
        out = torch.empty(R, dtype=torch.int64, device=A.device)
    if R == 0:
        return out
    c = _engine.chunk_size(R, K)
    if screen:
        _, idx, _ = _engine.certified_argmax(A.contiguous(), B, bias, None, chunk=c, bounds=bounds)
        out.copy_(idx)
        return out
    best_val = torch.full((R,), -math.inf, dtype=A.dtype, device=A.device)
    out.fill_(-1)
    for s, tile in _engine.similarity_chunks(A, B, chunk=c, out_dtype=A.dtype):
        native.ncc_argmax_update(view(tile), view(bias), s, view(best_val), view(out), stream_of(tile))
    return out


# ----------------------------------------------------------------------------- pairwise
def pair_block(budget_bytes: Optional[int] = None) -> int:
    """Rows per block of the pairwise tiles: a (b × b) fp64 tile and the ~7 temporaries
    of the same size its reduction needs fit in ``budget_bytes`` (default
    ``_engine.TILE_BUDGET_BYTES``, 64 MiB → b = 1024)."""
    budget = _engine.TILE_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(64, math.isqrt(max(budget, 1) // 64) // 64 * 64)


@dataclasses.dataclass
class PairStats:
    """What :func:`pairwise_class_stats` returns (0-dim tensors stay on the device).

    Attributes:
        max_cos: (K,) max_{j≠k} ⟨x_k, x_j⟩.
        pairs: K(K−1)/2.
        cdnv_mean: mean over pairs i<j of (σ_i² + σ_j²)/(2‖μ_i − μ_j‖^(2p)) (None
            without ``radii``/``spreads``).
        kernel_mean, kernel_var: mean and population variance over pairs of the kernel
            (None without ``kernel``).
        min_dist2: the smallest squared chord ‖x_i − x_j‖² over pairs.
    """

    max_cos: Tensor
    pairs: int
    cdnv_mean: Optional[Tensor] = None
    kernel_mean: Optional[Tensor] = None
    kernel_var: Optional[Tensor] = None
    min_dist2: Optional[Tensor] = None


def _gram_tiles(X: Tensor, b: int, part=(0, 1)):
    """Yield ``(i0, i1, j0, j1, X[i0:i1] @ X[j0:j1].T)`` over the upper block triangle
    (j0 ≥ i0) of the K × K Gram, one fp64 tile at a time. ``part = (rank, world)``: only
    the tiles ``t ≡ rank (mod world)`` in that order (the tiles cost about the same, so
    this spreads the work evenly)."""
    K = X.shape[0]
    rank, world = part
    t = -1
    for i0 in range(0, K, b):
        i1 = min(i0 + b, K)
        Xi = X[i0:i1]
        for j0 in range(i0, K, b):
            t += 1
            if t % world != rank:
                continue
            j1 = min(j0 + b, K)
            yield i0, i1, j0, j1, Xi @ X[j0:j1].T


def _group_part(group):
    if group is None:
        return (0, 1)
    return _dist_helpers.check_group(group, "group")


def _kernel_of(e2: Tensor, kernel: str, dim: int) -> Tensor:
    """The kernel of the squared chord ``e2 = ‖x_i − x_j‖²`` (in place on e2)."""
    if kernel == "log":  # log(1/‖x_i − x_j‖)
        return e2.log_().mul_(-0.5)
    if kernel == "riesz":  # ‖x_i − x_j‖^−(d−2)
        return e2.pow_(-(dim - 2) / 2.0)
    return e2.sqrt_()  # distance


def pairwise_class_stats(X: Tensor, *, radii: Optional[Tensor] = None, spreads: Optional[Tensor] = None,
                         cdnv_exponent: float = 1.0, kernel: Optional[str] = None,
                         block: Optional[int] = None, impl: str = "auto", group=None) -> PairStats:
    """Pairwise statistics of K ≥ 2 unit vectors over the pairs i < j, streamed.

    The K × K Gram ``XXᵀ`` is formed in fp64 tiles of ``block`` × ``block`` (upper
    block triangle only) and each tile is reduced at once: row/column maxima of the
    cosines (diagonal excluded), and, per tile, the sum of CDNV terms and the (count,
    mean, M2) of the kernel values, merged across tiles by Chan's formula (no
    E[v²] − E[v]² cancellation). With ``x_k = μ̃_k/r_k`` the squared chord is
    ``e2 = 2 − 2⟨x_i, x_j⟩`` (``‖x_i − x_j‖²`` from the rows for nearly parallel pairs,
    cosine above ``1 − CLOSE_COS``) and the squared mean distance
    ``‖μ̃_i − μ̃_j‖² = (r_i − r_j)² + r_i r_j e2``.

    Args:
        X: (K, d) float64 rows of unit norm (a zero row gives cosine 0 with every other).
        radii, spreads: (K,) float64 r_k = ‖μ̃_k‖ and σ_k²: both or neither (CDNV).
        cdnv_exponent: p > 0 in ‖μ_i − μ_j‖^(2p).
        kernel: None or one of :data:`KERNELS` ("riesz" uses s = d − 2 with d = X's width).
        block: rows per tile block (default :func:`pair_block`).
        impl: "native" (CPU: the fused ``pair_stats_fold`` epilogue, one pass over each
            tile, OpenMP), "torch" (device-agnostic torch ops on each tile, per-tile
            Chan merge of the kernel moments; the CUDA path) or "auto" (native on CPU).
        group: a ``torch.distributed`` process group: every rank passes the same X (and
            radii/spreads), forms every world-th tile, and the partial results are combined
            (maxima, minimum and sums all-reduced, kernel moments merged in rank order), so
            every rank returns the whole result.

    The native epilogue sums the kernel values about a fixed shift (the kernel at the
    mean cosine, from the closed form), so its variance E[(v − s)²] − E[v − s]² does not
    cancel; the torch path merges exact per-tile (count, mean, M2).

    Memory: O(K) state and one tile with its temporaries.
    """
    if impl not in ("auto", "native", "torch"):
        raise ValueError(f"impl: expected 'auto', 'native' or 'torch', got {impl!r}")
    part = _group_part(group)
    if impl == "native" or (impl == "auto" and X.device.type == "cpu"):
        return _pairwise_native(X, radii, spreads, cdnv_exponent, kernel, block or pair_block(), group, part)
    K, d = X.shape
    dev = X.device
    b = block or pair_block()
    f64 = dict(dtype=torch.float64, device=dev)
    max_cos = torch.full((K,), -math.inf, **f64)
    cd = radii is not None
    cd_sum = torch.zeros((), **f64)
    k_n, k_mean, k_m2 = 0, torch.zeros((), **f64), torch.zeros((), **f64)
    min_e2 = torch.full((), math.inf, **f64)
    upper = None
    for i0, i1, j0, j1, C in _gram_tiles(X, b, part):
        diag = j0 == i0
        if diag:
            C.diagonal().fill_(-math.inf)
            torch.maximum(max_cos[i0:i1], C.amax(1), out=max_cos[i0:i1])
            if upper is None or upper[0].numel() != (i1 - i0) * (i1 - i0 - 1) // 2:
                upper = torch.triu_indices(i1 - i0, i1 - i0, offset=1, device=dev)
            c = C[upper[0], upper[1]]
            ri = radii[i0:i1][upper[0]] if cd else None
            rj = radii[j0:j1][upper[1]] if cd else None
            si = spreads[i0:i1][upper[0]] if cd else None
            sj = spreads[j0:j1][upper[1]] if cd else None
        else:
            torch.maximum(max_cos[i0:i1], C.amax(1), out=max_cos[i0:i1])
            torch.maximum(max_cos[j0:j1], C.amax(0), out=max_cos[j0:j1])
            c = C
            ri = radii[i0:i1, None] if cd else None
            rj = radii[None, j0:j1] if cd else None
            si = spreads[i0:i1, None] if cd else None
            sj = spreads[None, j0:j1] if cd else None
        if not (cd or kernel is not None):
            continue
        e2 = c.mul(-2.0).add_(2.0).clamp_(min=0.0)  # ‖x_i − x_j‖²
        close = c > 1.0 - CLOSE_COS
        if bool(close.any()):  # nearly parallel: 2 − 2c loses digits, take differences
            if diag:
                ii, jj = i0 + upper[0][close], j0 + upper[1][close]
            else:
                nzc = close.nonzero()
                ii, jj = i0 + nzc[:, 0], j0 + nzc[:, 1]
            e2[close] = (X[ii] - X[jj]).square_().sum(1)
        torch.minimum(min_e2, e2.min(), out=min_e2)
        if cd:
            D = (ri - rj).square_().add_(e2 * (ri * rj))  # ‖μ_i − μ_j‖²
            if cdnv_exponent != 1.0:
                D.pow_(cdnv_exponent)
            cd_sum += ((si + sj) / D.mul_(2.0)).sum()
            del D
        if kernel is not None:
            v = _kernel_of(e2, kernel, d)
            n_t = v.numel()
            m_t = v.mean()
            m2_t = (v - m_t).square_().sum()
            n = k_n + n_t
            delta = m_t - k_mean
            k_mean = k_mean + delta * (n_t / n)
            k_m2 = k_m2 + m2_t + delta * delta * (k_n * n_t / n)
            k_n = n
        del e2, c, C
    if group is not None:
        import torch.distributed as dist

        cdev = _dist_helpers.comm_device(group)
        mx = max_cos.to(cdev)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
        mn = min_e2.to(cdev)
        dist.all_reduce(mn, op=dist.ReduceOp.MIN, group=group)
        cs = cd_sum.to(cdev)
        dist.all_reduce(cs, group=group)
        max_cos, min_e2, cd_sum = mx.to(dev), mn.to(dev), cs.to(dev)
        if kernel is not None:  # Chan merge of the ranks' (count, mean, M2), in rank order
            mine = torch.stack([torch.tensor(float(k_n), **f64), k_mean, k_m2]).to(cdev)
            allm = [torch.empty_like(mine) for _ in range(part[1])]
            dist.all_gather(allm, mine, group=group)
            k_n, k_mean, k_m2 = 0, torch.zeros((), **f64), torch.zeros((), **f64)
            for t in allm:
                n_t = int(t[0].item())
                if n_t == 0:
                    continue
                m_t, m2_t = t[1].to(dev), t[2].to(dev)
                n = k_n + n_t
                delta = m_t - k_mean
                k_mean = k_mean + delta * (n_t / n)
                k_m2 = k_m2 + m2_t + delta * delta * (k_n * n_t / n)
                k_n = n
    pairs = K * (K - 1) // 2
    out = PairStats(max_cos=max_cos, pairs=pairs)
    if cd or kernel is not None:
        out.min_dist2 = min_e2
    if cd:
        out.cdnv_mean = cd_sum / pairs
    if kernel is not None:
        out.kernel_mean = k_mean
        out.kernel_var = k_m2 / pairs
    return out


def _pairwise_native(X: Tensor, radii: Optional[Tensor], spreads: Optional[Tensor], cdnv_exponent: float,
                     kernel: Optional[str], b: int, group=None, part=(0, 1)) -> PairStats:
    """:func:`pairwise_class_stats` with the fused CPU epilogue (``pair_stats_fold``)."""
    K, d = X.shape
    f64 = dict(dtype=torch.float64, device=X.device)
    X = X.contiguous()
    cd = radii is not None
    if cd:
        radii, spreads = radii.contiguous(), spreads.contiguous()
    none = torch.empty(0, **f64)
    max_cos = torch.full((K,), -math.inf, **f64)
    acc = torch.tensor([0.0, 0.0, 0.0, math.inf], **f64)
    code = -1 if kernel is None else KERNELS.index(kernel)
    shift = 0.0
    if kernel is not None:  # the kernel at the mean cosine (closed form): near the kernel's mean
        s = X.sum(0)
        mean_c = float((s @ s - (X * X).sum()) / (K * (K - 1)))
        e2m = max(2.0 - 2.0 * mean_c, 1e-300)
        shift = float(_kernel_of(torch.tensor(e2m, dtype=torch.float64), kernel, d))
    for i0, i1, j0, j1, C in _gram_tiles(X, b, part):
        native.pair_stats_fold(view(C), view(X[i0:i1]), view(X[j0:j1]),
                               view(radii[i0:i1] if cd else none), view(radii[j0:j1] if cd else none),
                               view(spreads[i0:i1] if cd else none), view(spreads[j0:j1] if cd else none),
                               j0 == i0, code, float(d - 2), float(cdnv_exponent), CLOSE_COS, shift,
                               view(max_cos[i0:i1]), view(max_cos[j0:j1]), view(acc))
    if group is not None:  # the shift is the same on every rank, so the sums add up
        import torch.distributed as dist

        mx, sums, mn = max_cos.clone(), acc[:3].clone(), acc[3:].clone()
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(sums, group=group)
        dist.all_reduce(mn, op=dist.ReduceOp.MIN, group=group)
        max_cos, acc = mx, torch.cat([sums, mn])
    pairs = K * (K - 1) // 2
    out = PairStats(max_cos=max_cos, pairs=pairs)
    if cd or kernel is not None:
        out.min_dist2 = acc[3]
    if cd:
        out.cdnv_mean = acc[0] / pairs
    if kernel is not None:
        m = acc[1] / pairs
        out.kernel_mean = shift + m
        out.kernel_var = (acc[2] / pairs - m * m).clamp(min=0.0)
    return out
