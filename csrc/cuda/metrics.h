// [metrics] CUDA twins of cpu/metrics.h (same names and contracts, plus a stream).
// Differences from the CPU twin: labels out of range and non-finite rows must be
// rejected by the caller beforehand (the kernels skip out-of-range labels for memory
// safety but cannot raise); `first` is a caller-owned (K,) int64 scratch that must hold
// INT64_MAX on entry and is restored to INT64_MAX on exit; per-class sums use fp64
// atomics, so the last bits can depend on scheduling.
#pragma once
#include <cstdint>
#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void metrics_update_batch(const TensorView& features, const TensorView& labels,
                          const TensorView& shift, const TensorView& dsum, const TensorView& sqsum,
                          const TensorView& counts, const TensorView& Z, const TensorView& first,
                          bool normalize, double eps, std::uintptr_t stream);

void ncc_argmax_update(const TensorView& tile, const TensorView& bias, int64_t col0,
                       const TensorView& best_val, const TensorView& best_idx,
                       std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
