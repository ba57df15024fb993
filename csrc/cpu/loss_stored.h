// Epilogues of the exponent-storage ("stored") strategy of the spherical cross-entropy
// (CPU, C++17 + OpenMP). The CUDA twins in cuda/loss_stored.h have the same names and
// contracts. Every logit is a (margin-adjusted) cosine over tau, so none exceeds 1/tau and
// the softmax is shifted by that constant instead of a running max:
//   E_ik = exp((s_ik - 1)/tau - shift_i)  in (0, 1]  (shift_i = 0 except for rows whose
//   sums would underflow, which the caller recomputes with shift_i = their row max).
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cpu {

// One (R x c) tile of products t_ik = <h_i, w_{col0+k}> (float32, or float64 for float64
// inputs; rows contiguous) of unit rows h_i and RAW class weights w_k; inv_n (c,) (tile
// dtype) holds 1/max(|w_k|, eps), so s_ik = t_ik * inv_n_k is the cosine. Writes
//   E[i, k] = exp((s_ik - 1)/tau - shift_i) * inv_n_k   (0 at the target column k = y_i,
//   0 on rows with y_i == ignore_index)
// into E (R x c; bfloat16, float32 or float64; column stride 1, any row stride: a slice of
// the B x K store), and adds to the per-row state (R x 4, float64, contiguous):
//   [0] sum over the non-target columns of exp((s - 1)/tau - shift),
//   [1] sum over the non-target columns of s (for label smoothing),
//   [2] s_iy when the target column lies in this tile,
//   [3] max over the non-target columns of (s - 1)/tau (unshifted; starts at -inf).
// shift (R,) float64. Ignored rows are left untouched in state.
void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index);

// The radial part of the class-weight normalisation backward, one row-wise pass over a
// block of classes: with X (c x d, float32/float64, contiguous) = inv_n * dW^ (the
// stored exponentials' products E^T (a H^), i.e. the gradient w.r.t. the unit rows divided
// by the norms) and v (d,) (X's dtype) the rank-one term of label smoothing,
//   X'_k = X_k - inv_n_k * v,
//   dW_k = X'_k - w_k * inv_n_k^2 * <w_k, X'_k>   where project and inv_n_k < 1/eps,
//   dW_k = X'_k                                   otherwise (|w_k| <= eps, or project false),
// written to dW (c x d, W's dtype, contiguous rows). W (c x d) the raw weights (any
// floating dtype, contiguous rows), inv_n (c,) in X's dtype, v contiguous.
void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project);

}  // namespace cpu
}  // namespace gnc
