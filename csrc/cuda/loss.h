// CUDA twins of cpu/loss.h (same names and contracts; launched on `stream`). These are
// the epilogues of the CHUNKED CUDA path (cuBLAS GEMM per block of classes through
// torch, then these kernels). Run on an H200 (2026-11-30): the CUDA tests pass.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream);
void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index, std::uintptr_t stream);
void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& best,
                        const TensorView& arg, const TensorView& tgt, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc

namespace gnc {
namespace cuda {

// FUSED forward of the spherical CE (unit-norm inputs Hn (B, d), Wn (K, d), same dtype,
// contiguous rows): one kernel computes 64 x 64 cosine tiles (bf16/fp16: WMMA tensor
// cores, fp32 accumulation; fp32: plain fp32 FMA, i.e. full fp32 accuracy, no TF32) and
// folds each tile into per-row online log-sum-exp state while it is in shared memory;
// blocks split K and write partial states, a second kernel merges them in a fixed order
// (deterministic, no atomics). Writes `state` (B x 4, float64) with the layout of
// sce_fold: [max z, sum exp(z - max) over the non-target classes, target cosine, sum z].
// Tests pass on an H200; opt-in (slower than the chunked path).
void sce_fused_forward(const TensorView& Hn, const TensorView& Wn, const TensorView& y,
                       const TensorView& state, double tau, int margin_type, double margin,
                       int64_t ignore_index, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc

namespace gnc {
namespace cuda {

// FUSED backward of the spherical CE, recompute strategy (twin of the chunked path:
// per tile sce_grad then dH += g.Wn, dW = g^T.Hn). Unit-norm Hn (B, d), Wn (K, d) of one
// dtype (float32/bfloat16/float16) with contiguous rows; y (B,) int64; lse, q, scale (B,)
// float64 (q: non-target mass 1 - p_y, see cpu/loss.h sce_grad; scale: upstream gradient
// per row, incl. 1/N for mean). Writes
// dH (B, d) and dW (K, d) (Hn's dtype, contiguous rows); an empty dH/dW (numel 0) is
// skipped. num_classes: the K of the label-smoothing term. Cosine tiles are recomputed
// and turned into g in shared memory only; two deterministic kernels (dH: blocks over
// row tiles x class splits, merged in split order; dW: blocks over class tiles), no
// atomics. Workspaces (fp32, contiguous, allocated by the caller so that torch's allocator
// accounts for them; zeroed here): ws_h (splits, Bpad, dpad) when dH is wanted (splits =
// how many class ranges the dH kernel splits K into; 1 <= splits <= 65535), ws_w
// (Kpad, dpad) when dW is wanted; Bpad, Kpad, dpad = B, K, d rounded up to 64. Tests
// pass on an H200; opt-in (slower than the chunked path).
void sce_fused_backward(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& lse,
                        const TensorView& q, const TensorView& scale, const TensorView& dH, const TensorView& dW, const TensorView& ws_h,
                        const TensorView& ws_w, int64_t num_classes,
                        double tau, int margin_type, double margin, double label_smoothing, int64_t ignore_index,
                        std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
