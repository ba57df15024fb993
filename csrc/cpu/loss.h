// Epilogues of the similarity-reduce engine for the spherical cross-entropy and HardMax
// losses (CPU, C++17 + OpenMP). The CUDA twins in cuda/loss.h have the same names and
// contracts. A "tile" is an (R x c) block of cosines s_ik = <h_i, w_{col0+k}> (fp32, or
// fp64 for fp64 inputs), rows contiguous, produced by one GEMM; the epilogue folds it
// into O(R) running state (forward) or turns it into dL/ds in place (backward).
//
// Logits: z_ik = s_ik / tau for k != y_i; the target logit is z_iy = phi(s_iy) / tau with
//   margin_type 0: phi(c) = c
//   margin_type 1 (CosFace): phi(c) = c - m
//   margin_type 2 (ArcFace): with sin = sqrt(max(1 - c^2, 1e-12)),
//       phi(c) = c cos m - sin sin m          if c > cos(pi - m)   (= cos(theta + m))
//       phi(c) = c - m sin m                  otherwise            (theta + m > pi)
//   and phi'(c) is the exact derivative of that piecewise function
//   (cos m + sin m * c / sin where 1 - c^2 > 1e-12, cos m in the clamped region; 1 in
//   the fallback branch).
//   margin_type 3 (ArcFace, straight-through, InsightFace's convention):
//       phi(c) = cos(arccos(clamp(c, -1, 1)) + m) for every c (no fallback), phi'(c) = 1.
// filter_threshold t (interclass filtering; 0 = off): in rows with a label, every
//   non-target cosine s_ik > t is replaced by 0 before the softmax and gets no gradient.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cpu {

// Folds one tile into the per-row state (R x 4, float64, row-major):
//   [0] running max of z over all classes (the target's z included), [1] running sum of
//   exp(z - max) over the NON-target classes only, [2] target cosine s_iy (if the target
//   column lies in this tile), [3] running sum of z over all classes (for label
//   smoothing). Rows with y == ignore_index are skipped. col0: first class of the tile.
//   The target's term exp(z_iy - max) is left out on purpose: the Python finish adds it
//   in float64, so the loss log(1 + sum_{k!=y} exp(z_k - z_y)) and the non-target mass
//   q = 1 - p_y stay accurate when p_y rounds to 1 (small tau; a loss of 1e-30 is kept).
void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, double filter_threshold = 0.0);

// Turns a tile of cosines into g_ik = scale_i * dloss_i/ds_ik in place:
//   g_ik = scale_i / tau * (p_ik - eps/K)                  for k != y_i,
//   g_iy = scale_i / tau * (eps - eps/K - q_i) * phi'(s_iy)  (p_iy - 1 = -q_i),
// with p_ik = exp(z_ik - lse_i) and q_i = 1 - p_iy the non-target mass (computed without
// cancellation from the fold state). lse, q, scale: (R,) float64. Rows with
// y == ignore_index or scale == 0 become exactly 0.
void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau,
              int margin_type, double margin, double label_smoothing, int64_t ignore_index,
              double filter_threshold = 0.0);

// Masked max/argmax fold: for every row, over the tile's columns k with col0 + k != y_i:
// best_i = max s_ik, arg_i = its class (the lowest index among ties, given tiles are
// folded in increasing col0); tgt_i = s_iy when y_i lies in the tile. best/tgt: (R,)
// float64, arg: (R,) int64 (initialise best to -inf and arg to -1). A y_i outside
// [0, K) excludes nothing, which makes this a plain argmax (used by predict()).
void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0,
                        const TensorView& best, const TensorView& arg, const TensorView& tgt);

}  // namespace cpu
}  // namespace gnc
