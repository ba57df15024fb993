// [metrics] CPU kernels for the GNC accumulator and nearest-class-centre (NCC).
// The CUDA twins in cuda/metrics.h have the same names and contracts.
#pragma once
#include "common/tensor_view.h"

namespace gnc {
namespace cpu {

// Per-batch class statistics of the streaming GNC accumulator (shifted-data form).
//
// State (all caller-owned, updated in place): shift (K, d) fp32 — a fixed reference
// point per class, set to the first (normalised) sample seen for that class;
// dsum (K, d) fp64 — per-class sum of (h - shift_k); sqsum (K,) fp64 — per-class sum
// of ||h - shift_k||^2; counts (K,) int64.
// Inputs: features (B, d) any float dtype and strides, labels (B,) int64 in [0, K).
// Output: Z (B, d) fp64 contiguous, Z[i] = h_i - shift_{y_i} (h normalised when
// `normalize`: h / max(||h||, eps), norm in fp64). The caller accumulates ZᵀZ (d×d)
// with a GEMM. Throws std::invalid_argument (state untouched) when a label is out of
// range or a feature row is non-finite.
void metrics_update_batch(const TensorView& features, const TensorView& labels,
                          const TensorView& shift, const TensorView& dsum, const TensorView& sqsum,
                          const TensorView& counts, const TensorView& Z, bool normalize, double eps);

// NCC similarity-reduce epilogue for one tile of classes [col0, col0 + c):
// v = tile[i, j] + bias[col0 + j]; best_val[i], best_idx[i] keep the running maximum
// (strictly greater replaces, so ties keep the lowest class index across tiles in
// order). tile (B, c) fp32/fp64 with unit column stride; bias (K,), best_val (B,) of
// the tile's dtype; best_idx (B,) int64.
void ncc_argmax_update(const TensorView& tile, const TensorView& bias, int64_t col0,
                       const TensorView& best_val, const TensorView& best_idx);

// Certified-argmax epilogue: fold one tile of APPROXIMATE scores and re-score exactly
// (fp64) only the columns that can still be the row's best.
//
// tile (R, c) fp32, unit column stride: s~[i, j] ~ <A_i, B_k> + bias_k for k = col0 + j,
// with |s~[i, j] - s[i, j]| <= eps[i] (the caller's error bound). A (R, d) and B (K, d)
// fp32 or fp64 (same dtype), unit column stride, any row stride; bias (K,) of A's dtype
// or empty (numel 0: no bias); y (R,) int64 masked class per row or empty (no mask; a
// y outside [0, K) masks nothing). eps (R,) fp64, finite and >= 0 (checked here, before
// any state is written). State, updated in place: approx_max (R,) fp64 running max of
// s~ over unmasked columns (init -inf); best_val (R,) fp64 (init -inf) and best_idx (R,)
// int64 (init -1) the exact best; checked (R,) int64 += number of exact re-scorings,
// or empty to skip.
// Per row: m = max(approx_max, max of unmasked non-NaN s~); approx_max = m; if
// m > -inf, every unmasked j with double(s~[i, j]) >= m - 2 eps[i] is re-scored as
// v = sum_t double(A[i,t]) double(B[k,t]) (+ double(bias[k])) in a fixed serial order
// and replaces the best when v > best_val or (v == best_val and k < best_idx).
// Cost O(R c + R q d) for q re-scored columns per row; no allocation.
void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked);

// Pairwise-statistics epilogue for one (bi × bj) fp64 tile C = X_i X_jᵀ of unit rows
// (nc_metrics; CPU only — other devices use the device-agnostic torch path).
//
// Xi (bi, d), Xj (bj, d) fp64 row-contiguous (the tile's rows; read only for nearly
// parallel pairs). ri/rj, si/sj (bi)/(bj) fp64: radii ‖μ̃‖ and spreads σ² for the CDNV,
// or all four empty (no CDNV). diag: the tile is a diagonal block (Xi = Xj): pairs are
// j > i only and the diagonal is excluded from the maxima.
// Per pair: e2 = 2 − 2c, or Σ_t (Xi[i,t] − Xj[j,t])² when c > 1 − close_cos;
// CDNV term (si + sj) / (2 D^p) with D = (ri − rj)² + ri rj e2; kernel value v
// (kernel 0 = −log(e2)/2, 1 = e2^(−riesz_s/2), 2 = √e2, −1 = none) minus kshift.
// State, updated in place: rowmax (bi) and colmax (bj) fp64 running max of c over
// j ≠ i (colmax untouched when diag: the block is symmetric); acc (4,) fp64 +=
// [Σ CDNV terms, Σ (v − kshift), Σ (v − kshift)², —] and acc[3] = min(acc[3], min e2).
// Sums are per row, then per thread, then into acc: no allocation beyond a bj-long
// column-max buffer per thread.
void pair_stats_fold(const TensorView& C, const TensorView& Xi, const TensorView& Xj, const TensorView& ri,
                     const TensorView& rj, const TensorView& si, const TensorView& sj, bool diag, int64_t kernel,
                     double riesz_s, double cdnv_p, double close_cos, double kshift, const TensorView& rowmax,
                     const TensorView& colmax, const TensorView& acc);

}  // namespace cpu
}  // namespace gnc
