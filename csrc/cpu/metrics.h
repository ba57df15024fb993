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

}  // namespace cpu
}  // namespace gnc
