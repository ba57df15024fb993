// CUDA implementations: same names and contracts as cpu/ops.h. Every function takes
// the CUDA stream (as an integer handle from torch.cuda.current_stream()) and
// launches on the tensors' device.
#pragma once
#include <cstdint>
#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

void normalize_rows_forward(const TensorView& x, const TensorView& y, const TensorView& norm,
                            double eps, std::uintptr_t stream);
void normalize_rows_backward(const TensorView& x, const TensorView& norm, const TensorView& dy,
                             const TensorView& dx, double eps, std::uintptr_t stream);

int device_count();  // 0 when no driver or no GPU

}  // namespace cuda
}  // namespace gnc
