"""Assignment of classes to code vectors (Sec. 4 of the paper).

Given class means (e.g. of features of a pretrained model) and a code (a Softmax Code, a
Tammes code, a simplex ETF, ...), find the one-to-one matching of classes to code
vectors that maximises the total cosine similarity — a linear assignment problem,
solved exactly by the Hungarian method (``scipy.optimize.linear_sum_assignment``,
a shortest-augmenting-path variant) on the cosine-similarity matrix.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import _validate
from ..ops.normalize import unit_rows_f64


@dataclasses.dataclass
class AssignmentResult:
    """Result of :func:`assign_classes`.

    Attributes:
        permutation: (K,) int64 CPU tensor; class k is assigned code vector
            ``permutation[k]`` (distinct entries; a permutation when the code has K rows).
        assigned_code: ``code[permutation]`` normalised: row k is class k's code vector
            (float64, on the code's device).
        cosines: (K,) float64 CPU tensor, cosine between class mean k and its vector.
        total_cosine: the maximised objective, ``cosines.sum()``.
        mean_cosine, min_cosine: summaries of the achieved alignment.
    """

    permutation: torch.Tensor
    assigned_code: torch.Tensor
    cosines: torch.Tensor
    total_cosine: float
    mean_cosine: float
    min_cosine: float


def assign_classes(class_means: torch.Tensor, code: torch.Tensor) -> AssignmentResult:
    """Optimal one-to-one matching of K classes to code vectors by cosine similarity.

    Solves ``max_pi sum_k cos(class_means[k], code[pi(k)])`` over injective maps pi
    (permutations when the code has exactly K rows) with the Hungarian method.

    Args:
        class_means: (K, d) float tensor (any float dtype, CPU or CUDA); rows need not
            be normalised (cosines are used) but must be non-zero and finite.
        code: (M, d) float tensor with M >= K unit or non-zero rows, same d.

    Returns:
        :class:`AssignmentResult`.

    Raises:
        TypeError for non-tensors / non-float dtypes; ValueError for non-2-D inputs,
        mismatched d, M < K, zero rows or non-finite values.

    Numerics and cost: cosines in float64 on the CPU; memory K*M*8 bytes for the
    similarity matrix; time O(K^2 M) worst case (K = 2000 takes about a second, K =
    10k minutes), so this is for code assignment at the K of the solvers, not 1M.
    """
    class_means = _validate.tensor(class_means, "class_means", ndim=2)
    code = _validate.tensor(code, "code", ndim=2)
    K, d = class_means.shape
    M, dc = code.shape
    if dc != d:
        raise ValueError(f"code: expected {d} columns (the feature dimension of class_means), got shape {tuple(code.shape)}")
    if M < K:
        raise ValueError(f"code: expected at least K={K} rows (one code vector per class), got {M}")
    _validate.finite(class_means, "class_means")
    _validate.finite(code, "code")
    A = unit_rows_f64(class_means.cpu(), "class_means")  # robust to huge/tiny rows
    B = unit_rows_f64(code.cpu(), "code")
    S = A @ B.T  # (K, M) cosines
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover
        raise ImportError("gnc_ext.solvers.assign_classes needs scipy (pip install scipy)") from e
    rows, cols = linear_sum_assignment(S.numpy(), maximize=True)
    perm = torch.empty(K, dtype=torch.int64)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols).to(torch.int64)
    cos = S[torch.arange(K), perm]
    assigned = B[perm].to(code.device)
    return AssignmentResult(
        permutation=perm,
        assigned_code=assigned,
        cosines=cos,
        total_cosine=float(cos.sum()),
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
    )
