// CUDA twins of cpu/loss_stored.h (same names, contracts and results up to the rounding
// of the sums). Compiled for sm_90; see cuda/loss_stored.cu for the layout.
// sce_stored_exp takes a float64 workspace of at least
// stored_exp_workspace_doubles(rows, cols) values (cpu/loss_stored_checks.h) on the tile's
// device, allocated by the caller (torch's caching allocator).
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index, const TensorView& workspace, std::uintptr_t stream);

void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
