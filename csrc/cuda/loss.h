// CUDA twins of cpu/loss.h (same names and contracts; launched on `stream`). These are
// the epilogues of the CHUNKED CUDA path (cuBLAS GEMM per block of classes through
// torch, then these kernels). Run on an H200 (2026-11-30): the CUDA tests pass.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream,
              double filter_threshold = 0.0);
void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index, std::uintptr_t stream,
              double filter_threshold = 0.0);
void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& best,
                        const TensorView& arg, const TensorView& tgt, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
