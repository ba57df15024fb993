// [hull] CUDA twins of cpu/hull.h: same names and contracts, plus the stream handle.
// hull_solve additionally takes a caller-allocated fp64 workspace (see hull.cu:
// hull_solve_workspace_doubles) because kernels do not allocate.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx, std::uintptr_t stream);

void hull_price_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                       const TensorView& thresh, const TensorView& best_val,
                       const TensorView& best_idx, const TensorView& viol_val,
                       const TensorView& viol_idx, std::uintptr_t stream);

// workspace: (B * hull_solve_workspace_doubles(n, d)) fp64 on the device.
void hull_solve(const TensorView& W, const TensorView& classes, const TensorView& cand,
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status, const TensorView& workspace, std::uintptr_t stream);

}  // namespace cuda
}  // namespace gnc
