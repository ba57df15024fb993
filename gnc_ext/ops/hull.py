"""[hull] custom ops and native hand-offs for the one-vs-rest / one-vs-one geometry.

* ``gnc_ext::hull_envelope`` — a ``torch.library.custom_op`` that carries the exact
  one-vs-rest distances computed by the solver into the autograd graph. Its forward
  returns the (already computed) distances; its backward applies the envelope theorem:
  with the unit feature ``u_k = (w_k − p_k)/‖w_k − p_k‖`` and the convex weights
  ``v_kj`` of the projection ``p_k = Σ_j v_kj w_j``,
  ``∂dist_k/∂w_k = u_k`` and ``∂dist_k/∂w_j = −v_kj·u_k``. This is the gradient of
  ``dist_k`` wherever the optimal support is unique and stable (the generic case), and a
  valid element of the (Clarke) generalized gradient otherwise. Classes at distance 0
  get a zero gradient. The backward runs in O(K·(d + m·d)) time and streams over blocks
  of classes, so its extra memory is bounded by one (block × m × d) buffer.
* thin wrappers around the native epilogues / solver (``topm_update``, ``price_update``,
  ``solve``) that allocate nothing and pass the CUDA stream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._native import native, stream_of, view

_BACKWARD_BLOCK_BYTES = 64 * 2**20


@torch.library.custom_op("gnc_ext::hull_envelope", mutates_args=(), device_types=("cpu", "cuda"))
def _hull_envelope_op(W: Tensor, distance: Tensor, feature: Tensor, support: Tensor, weights: Tensor) -> Tensor:
    return distance.clone()


@_hull_envelope_op.register_fake
def _(W, distance, feature, support, weights):
    return torch.empty_like(distance)


def _setup_context(ctx, inputs, output):
    W, distance, feature, support, weights = inputs
    ctx.save_for_backward(feature, support, weights)
    ctx.w_dtype = W.dtype
    ctx.w_shape = W.shape


def envelope_grad(grad: Tensor, feature: Tensor, support: Tensor, weights: Tensor, w_dtype, w_shape) -> Tensor:
    """dW from the envelope theorem (see module docstring); computed in fp64/fp32 of ``feature``."""
    K, d = w_shape
    g = grad.to(feature.dtype)
    dW = g.unsqueeze(1) * feature
    m = support.shape[1]
    if m > 0:
        block = max(1, _BACKWARD_BLOCK_BYTES // max(1, m * d * feature.element_size()))
        for s in range(0, K, block):
            sup = support[s : s + block]
            valid = sup >= 0  # padding contributes 0 (to row 0): no data-dependent shapes
            wt = torch.where(valid, weights[s : s + block].to(feature.dtype), 0) * g[s : s + block].unsqueeze(1)
            contrib = -(wt.unsqueeze(2) * feature[s : s + block].unsqueeze(1))
            dW.index_add_(0, sup.clamp_min(0).reshape(-1), contrib.reshape(-1, d))
    return dW.to(w_dtype)


def _backward(ctx, grad):
    feature, support, weights = ctx.saved_tensors
    dW = None
    if ctx.needs_input_grad[0]:
        dW = envelope_grad(grad, feature, support, weights, ctx.w_dtype, ctx.w_shape)
    return dW, None, None, None, None


torch.library.register_autograd("gnc_ext::hull_envelope", _backward, setup_context=_setup_context)


def topm_update(tile: Tensor, row_ids: Tensor, col0: int, vals: Tensor, idx: Tensor) -> None:
    """Fold a similarity tile into per-row running top-m (min-heaps), skipping self pairs."""
    native.hull_topm_update(view(tile), view(row_ids), int(col0), view(vals), view(idx), stream_of(tile))


def price_update(tile: Tensor, row_ids: Tensor, col0: int, thresh: Tensor, best_val: Tensor,
                 best_idx: Tensor, viol_val: Tensor, viol_idx: Tensor) -> None:
    """Fold an fp64 tile <u_k, w_j> into max/argmax (certificate) and top-q violators."""
    native.hull_price_update(view(tile), view(row_ids), int(col0), view(thresh), view(best_val),
                             view(best_idx), view(viol_val), view(viol_idx), stream_of(tile))


def solve_workspace_doubles(n: int, d: int) -> int:
    """fp64 words of CUDA workspace per class for ``solve`` (must match cuda/hull.cu)."""
    s = min(n, d + 1)
    ld = s + 1
    return d + 2 * n + 2 * ld * ld + 4 * ld + 8


def candidate_gram(W: Tensor, classes: Tensor, cand: Tensor) -> Tensor:
    """(B, n, n) fp64 Gram matrices <w_ci − w_k, w_cj − w_k> by one batched GEMM (torch:
    BLAS on CPU, cuBLAS on CUDA). Padding (-1) positions hold garbage the solver ignores."""
    W64 = W if W.dtype == torch.float64 else W.to(torch.float64)
    Y = W64[cand.clamp_min(0)] - W64[classes].unsqueeze(1)
    return torch.bmm(Y, Y.transpose(1, 2)).contiguous()


# Meaning of the solver's `status` output, by value (csrc/common/wolfe.h: wolfe::Status).
SOLVE_STATUS = ("converged", "iteration_cap", "degenerate_stop")


def solve(W: Tensor, classes: Tensor, cand: Tensor, gap_tol: float, max_iter: int, proj: Tensor,
          dist: Tensor, support: Tensor, weights: Tensor, iters: Tensor, status: Tensor,
          init_support: Tensor = None, init_weights: Tensor = None) -> None:
    """Batched exact min-norm-point (Wolfe, fp64) for ``classes`` over candidate lists ``cand``,
    optionally warm-started from a previous corral (``init_support``/``init_weights``)."""
    # CUDA: Gram matrices by one cuBLAS batched GEMM; CPU: formed per class natively
    # (cache-resident, no (B, n, d) gather), signalled by an empty tensor.
    if W.device.type == "cuda":
        gram = candidate_gram(W, classes, cand)
    else:
        gram = torch.empty(0, 0, 0, dtype=torch.float64)
    if init_support is None:
        init_support = torch.empty(0, 0, dtype=torch.int64, device=W.device)
        init_weights = torch.empty(0, 0, dtype=torch.float64, device=W.device)
    if W.device.type == "cuda":
        n = cand.shape[1]
        ws = torch.empty(max(1, classes.shape[0] * solve_workspace_doubles(n, W.shape[1])),
                         dtype=torch.float64, device=W.device)
    else:
        ws = torch.empty(0, dtype=torch.float64)
    native.hull_solve(view(W), view(classes), view(cand), view(gram), view(init_support), view(init_weights), float(gap_tol), int(max_iter), view(proj), view(dist),
                      view(support), view(weights), view(iters), view(status), view(ws), stream_of(W))
