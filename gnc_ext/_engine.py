"""The similarity-reduce engine's chunked driver (DESIGN.md).

Every large-K computation is S = A·Bᵀ reduced along K. Where a fused native kernel
does not exist for a device yet, ops stream B in blocks of classes: one GEMM per block
through torch (BLAS on CPU, cuBLAS on CUDA), then a native epilogue that folds the
(rows × block) tile into O(rows) running state. Only one tile exists at a time.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

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
