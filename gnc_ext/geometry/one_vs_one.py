"""One-vs-one distances (REFERENCE.md Eq. 11, the Tammes objective)."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .. import _validate
from .._engine import chunk_size
from ..ops import hull as _hull_ops
from .one_vs_rest import _TILE_BYTES, check_unit_rows, normalized, validate_weights

__all__ = ["OneVsOneResult", "one_vs_one_distance"]


@dataclasses.dataclass
class OneVsOneResult:
    """Result of :func:`one_vs_one_distance` (tensors on ``W``'s device).

    Attributes:
        distance: (K,) float64 ``min_{j≠k} ‖w_k − w_j‖``, differentiable w.r.t. ``W``.
        neighbor: (K,) int64 the nearest other class ``j``.
        min: float, ``min_k distance_k`` (the Tammes objective).
        argmin: int, a class ``k`` attaining ``min`` (its pair is ``neighbor[k]``).
    """

    distance: Tensor
    neighbor: Tensor
    min: float
    argmin: int


def one_vs_one_distance(W: Tensor, *, normalize: bool = False, shortlist: int = 8) -> OneVsOneResult:
    """Per-class nearest-neighbour distance ``min_{j≠k}‖w_k − w_j‖`` and its minimum.

    One similarity-reduce pass (fp32 GEMM tiles through torch, native top-``shortlist``
    epilogue, never a K×K matrix) finds each class's ``shortlist`` largest inner
    products; the Euclidean distances to those are then recomputed exactly in fp64 as
    ``‖w_k − w_j‖`` (no ``√(2 − 2cos)`` cancellation) and the smallest is kept. For unit
    rows the largest inner product is the nearest point, so the result is exact unless
    more than ``shortlist`` neighbours tie within fp32 rounding (~1e-7) of the best, in
    which case the distance is still within that rounding of the exact one.

    Args:
        W: (K, d) float tensor, CPU or CUDA, K ≥ 2, d ≥ 1, unit rows (within the
            tolerance of :func:`one_vs_rest_distance`) unless ``normalize=True``.
        normalize: normalise rows first (differentiably).
        shortlist: neighbours kept per class by the fp32 pass (default 8).

    Returns:
        :class:`OneVsOneResult`. ``distance`` is float64 and differentiable (gradient of
        ``‖w_k − w_{neighbor_k}‖`` with the neighbour fixed).

    Complexity: O(K²·d) flops in one GEMM pass, O(K·(d + shortlist)) memory plus one
    64 MiB tile.

    Raises:
        TypeError/ValueError as :func:`one_vs_rest_distance` (naming ``W``).
    """
    validate_weights(W, "W")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    shortlist = _validate.integer(shortlist, "shortlist", minimum=1)
    Wn = normalized(W, "W") if normalize else W
    if not normalize:
        check_unit_rows(W, "W")
    K, d = Wn.shape
    q = min(shortlist, K - 1)
    with torch.no_grad():
        Wc = Wn.detach().to(torch.float32).contiguous()
        vals = torch.full((K, q), -math.inf, dtype=torch.float32, device=W.device)
        idx = torch.full((K, q), -1, dtype=torch.int64, device=W.device)
        R = min(K, 4096)
        for r0 in range(0, K, R):
            r1 = min(K, r0 + R)
            rows = torch.arange(r0, r1, device=W.device)
            c = chunk_size(r1 - r0, K, budget_bytes=_TILE_BYTES)
            for c0 in range(0, K, c):
                tile = (Wc[r0:r1] @ Wc[c0 : c0 + c].T).contiguous()
                _hull_ops.topm_update(tile, rows, c0, vals[r0:r1], idx[r0:r1])
        W64 = Wn.detach().to(torch.float64)
        best = torch.empty(K, dtype=torch.float64, device=W.device)
        nb = torch.empty(K, dtype=torch.int64, device=W.device)
        blk = max(1, _TILE_BYTES // (8 * q * d))
        for s in range(0, K, blk):
            ii = idx[s : s + blk]
            dd = torch.linalg.vector_norm(W64[s : s + blk].unsqueeze(1) - W64[ii], dim=2)
            m, a = dd.min(dim=1)
            best[s : s + blk] = m
            nb[s : s + blk] = ii.gather(1, a.unsqueeze(1)).squeeze(1)
    if Wn.requires_grad:
        Wd = Wn.to(torch.float64)
        distance = torch.linalg.vector_norm(Wd - Wd[nb], dim=1)
    else:
        distance = best
    k = int(best.argmin().item())
    return OneVsOneResult(distance=distance, neighbor=nb, min=float(best[k].item()), argmin=k)
