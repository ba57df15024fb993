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

// Twin of cpu::certified_argmax_fold. One warp per row; the fp64 dot product is summed
// lane-strided then by a shuffle tree, so v can differ from the CPU twin in the last
// bits (exact ties such as duplicate rows of B still tie). eps values (finite, >= 0)
// are the caller's contract: they are NOT checked here (that would need a sync).
void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
