"""The similarity-reduce engine's chunked driver (docs/ARCHITECTURE.md).

Every large-K computation is S = A·Bᵀ reduced along K. Where a fused native kernel
does not exist for a device yet, ops stream B in blocks of classes: one GEMM per block
through torch (BLAS on CPU, cuBLAS on CUDA), then a native epilogue that folds the
(rows × block) tile into O(rows) running state. Only one tile exists at a time.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import torch

# Default memory budget for one similarity tile (bytes). Tiles are fp32.
TILE_BUDGET_BYTES = 64 * 2**20


def chunk_size(rows: int, total: int, *, budget_bytes: Optional[int] = None, multiple: int = 64) -> int:
    """Columns per tile so that a (rows × cols) fp32 tile fits in ``budget_bytes``."""
    budget = TILE_BUDGET_BYTES if budget_bytes is None else budget_bytes
    cols = max(multiple, (budget // (4 * max(rows, 1))) // multiple * multiple)
    return int(min(cols, max(total, 1)))


def similarity_chunks(
    A: torch.Tensor, B: torch.Tensor, *, chunk: Optional[int] = None, out_dtype: torch.dtype = torch.float32
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(start, A @ B[start:start+c].T)`` tiles (``out_dtype``) over the rows of B.

    ``A`` is (N, d), ``B`` is (K, d), same device. fp16/bf16 inputs use the tensor-core
    GEMM and are upcast per tile; fp64 stays fp64 when ``out_dtype`` is float64.
    """
    K = B.shape[0]
    c = chunk or chunk_size(A.shape[0], K)
    for s in range(0, K, c):
        tile = A @ B[s : s + c].T
        yield s, tile if tile.dtype == out_dtype else tile.to(out_dtype)


# ---------------------------------------------------------------------------------------
# Certified TF32 screening (argmax / masked max with exact answers).
#
# A TF32 tensor-core GEMM is ~7x faster than plain fp32 on Hopper but rounds its inputs
# to 10 mantissa bits. For an argmax that is enough to *screen*: with a bound
# eps_i >= |s~_ik - s_ik| on every entry of row i, the true argmax k* satisfies
# s~_k* >= s* - eps >= max_j s~_j - 2 eps. The native epilogue
# (``certified_argmax_fold``) keeps the running approximate max m~_i and re-scores in
# float64, from the fp32 inputs, every column with s~ >= m~_i - 2 eps_i; m~ only grows
# while tiles are folded, so k* is always re-scored and the result is the exact
# (float64-evaluated) argmax. Ties go to the lowest class index.
#
# Error bound used (per row, a = the row, B = the class rows, u = 2^-10 the TF32 unit
# roundoff allowing truncation rather than rounding, d terms accumulated in fp32):
#   |s~ - s| <= ((2u + u^2) + (d + 2) 2^-22) ||a|| max_k ||b_k|| + 2^-23 (|s| + |bias|),
# doubled for safety. The (d + 2) 2^-22 term covers any fp32 summation order (split-K
# included) with 4x headroom over the classical d 2^-24.
TF32_UNIT = 2.0 ** -10
# The screened paths need many rows: the epilogue runs one warp per row, and with few
# rows it cannot keep the GPU's memory system busy (measured on an H200: HardMax,
# B = 512, K = 1M, fp32: 30.8 ms screened vs 22.1 ms with plain fp32 tiles). Below this
# many rows the callers keep their fp32 path; NCC row blocks (8192) are above it.
SCREEN_MIN_ROWS = 4096
class tf32_on:
    """Context manager: TF32 tensor-core GEMMs on for fp32 CUDA matmuls, restored after.
    The flag is process-global: other threads issuing fp32 CUDA matmuls meanwhile see it."""

    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev
        return False


def tf32_tile(A: torch.Tensor, Bc: torch.Tensor, bias_c: Optional[torch.Tensor]) -> torch.Tensor:
    """The approximate fp32 tile ``A·Bcᵀ (+ bias_c)`` with TF32 tensor cores (callers hold
    :class:`tf32_on`). Tests patch this function to emulate TF32 rounding on the CPU."""
    if bias_c is None:
        return A @ Bc.T
    return torch.addmm(bias_c, A, Bc.T)


def class_bounds(B: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[float, float]:
    """``(max_k ||b_k||, max_k |bias_k|)`` over finite biases, rounded up: computed in the
    input precision (no float64 copy of B) and inflated by 1e-4 relative, far above the
    float32 error of a norm (d·2^-24 ≈ 3e-5 at d = 512 in the worst case)."""
    nb = float(torch.linalg.vector_norm(B, dim=1).max()) * (1 + 1e-4) if B.shape[0] else 0.0
    fin = bias[torch.isfinite(bias)] if bias is not None else None  # -inf marks excluded classes
    bmax = float(fin.abs().max()) * (1 + 1e-4) if fin is not None and fin.numel() else 0.0
    return nb, bmax


def tf32_row_bounds(A: torch.Tensor, B: torch.Tensor, bias: Optional[torch.Tensor],
                    bounds: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """Per-row bound eps_i on |s~_ik - s_ik| for :func:`tf32_tile` (see the note above), float64.
    ``bounds``: :func:`class_bounds` of (B, bias) when the caller has them already."""
    d = A.shape[1]
    na = A.double().norm(dim=1)
    nb, bmax = bounds if bounds is not None else class_bounds(B, bias)
    u = TF32_UNIT
    prod = (2 * u + u * u + (d + 2) * 2.0 ** -22) * na * nb
    return 2.0 * (prod + 2.0 ** -23 * (na * nb + bmax))


def certified_argmax(A: torch.Tensor, B: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     y: Optional[torch.Tensor] = None, *, chunk: Optional[int] = None,
                     bounds: Optional[Tuple[float, float]] = None, normalize_b: bool = False,
                     on_block_norms: Optional[Callable[[torch.Tensor], None]] = None):
    """Exact ``argmax_k (⟨a_i, b_k⟩ + bias_k)`` over k ≠ y_i, screened with TF32 GEMMs.

    Args:
        A: (R, d) float32, row-contiguous. B: (K, d) float32, row-contiguous, same device.
        bias: (K,) float32 or None. y: (R,) int64 masked class per row (values outside
            [0, K) mask nothing) or None.
        chunk: classes per tile (default: a 64 MiB fp32 tile, as :func:`chunk_size`).
        bounds: :func:`class_bounds` of (B, bias), to compute them once across calls.
        normalize_b: score against the rows of B divided by ``max(‖b_k‖, 1e-12)`` (then B
            may have any floating dtype; the unit rows are cast to float32): each block of
            ``chunk`` classes is normalised (native ``normalize_rows``) when its tile is
            formed and re-scored from that block, so no K × d copy exists.
        on_block_norms: with ``normalize_b``, called with each block's (rows,) norms
            (e.g. to check them for NaN/Inf).

    Returns:
        ``(best_val, best_idx, checked)``: (R,) float64 exact best scores (-inf where
        every class is masked), (R,) int64 classes (-1 there), and the (R,) int64 number
        of float64 re-scorings per row (the screening's cost; ~1 per tile for random data).
    """
    from ._native import native, stream_of, view

    R, K = A.shape[0], B.shape[0]
    dev = A.device
    best_val = torch.full((R,), -math.inf, dtype=torch.float64, device=dev)
    best_idx = torch.full((R,), -1, dtype=torch.int64, device=dev)
    approx = torch.full((R,), -math.inf, dtype=torch.float64, device=dev)
    checked = torch.zeros(R, dtype=torch.int64, device=dev)
    if R == 0 or K == 0:
        return best_val, best_idx, checked
    if normalize_b and bounds is None:  # unit rows (zero rows stay zero): norms <= 1 up to rounding
        bounds = (1.0 + 1e-4, class_bounds(B[:0], bias)[1])
    eps = tf32_row_bounds(A, B, bias, bounds)
    empty_f = A.new_empty(0)
    yv = y if y is not None else torch.empty(0, dtype=torch.int64, device=dev)
    c = chunk or chunk_size(R, K)
    st = stream_of(A)
    with tf32_on():
        for s in range(0, K, c):
            bias_c = None if bias is None else bias[s:s + c]
            if not normalize_b:
                tile = tf32_tile(A, B[s:s + c], bias_c)
                native.certified_argmax_fold(view(tile), view(A), view(B), view(bias if bias is not None else empty_f),
                                             view(yv), s, view(eps), view(approx), view(best_val), view(best_idx),
                                             view(checked), st)
                continue
            # one block of unit rows, folded as classes [0, c) of its own (the running approx
            # max carries over: one eps bound holds for every block), then merged: a later
            # block wins only with a strictly larger value (ties keep the lower class index)
            Bc = B[s:s + c]
            Bn = torch.empty(Bc.shape, dtype=Bc.dtype, device=dev)
            n_c = torch.empty(Bc.shape[0], dtype=torch.float64 if Bc.dtype == torch.float64 else torch.float32,
                              device=dev)
            native.normalize_rows_forward(view(Bc), view(Bn), view(n_c), 1e-12, st)
            Bn = Bn.to(A.dtype)  # no copy when B is float32
            if on_block_norms is not None:
                on_block_norms(n_c)
            bv = torch.full((R,), -math.inf, dtype=torch.float64, device=dev)
            bi = torch.full((R,), -1, dtype=torch.int64, device=dev)
            yb = yv - s if y is not None else yv
            tile = tf32_tile(A, Bn, bias_c)
            native.certified_argmax_fold(view(tile), view(A), view(Bn), view(bias_c if bias_c is not None else empty_f),
                                         view(yb), 0, view(eps), view(approx), view(bv), view(bi), view(checked), st)
            upd = bv > best_val
            best_val = torch.where(upd, bv, best_val)
            best_idx = torch.where(upd, bi + s, best_idx)
            tile = Bn = None
    return best_val, best_idx, checked
