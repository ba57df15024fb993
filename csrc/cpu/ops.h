// CPU implementations (C++17 + OpenMP). The CUDA twins in cuda/ops.h have the same
// names and contracts; this file is the executable specification.
#pragma once
#include "common/tensor_view.h"

namespace gnc {
namespace cpu {

// y[i,:] = x[i,:] / max(||x[i,:]||, eps); norm[i] = ||x[i,:]|| (fp32, fp64 for fp64 x),
// NaN for a row holding a NaN/Inf (or, on CUDA, whose fp32 square sum overflows).
void normalize_rows_forward(const TensorView& x, const TensorView& y, const TensorView& norm,
                            double eps);
// dx = (dy - y <y, dy>) / n where n = ||x|| > eps, else dy / eps.
void normalize_rows_backward(const TensorView& x, const TensorView& norm, const TensorView& dy,
                             const TensorView& dx, double eps);

int num_threads();

}  // namespace cpu
}  // namespace gnc
