// Host-side argument checks of the stored-exponent epilogues, shared by CPU and CUDA.
#pragma once
#include <string>

#include "common/tensor_view.h"
#include "common/tile_checks.h"

namespace gnc {

// Launch geometry of the CUDA sce_stored_exp (cuda/loss_stored.cu), kept here so that the
// binding can tell Python the size of the workspace it allocates with torch: one partial
// row state (3 float64: non-target sum, cosine sum, max) per row and column block, for at
// most kStoredMaxRowsPerLaunch rows at a time (grid.y limit; larger tiles are launched in
// row slices that reuse the workspace in stream order).
constexpr int64_t kStoredColsPerBlock = 4096;
constexpr int64_t kStoredMaxRowsPerLaunch = 65535;
constexpr int64_t kStoredPartialDoubles = 3;

inline int64_t stored_exp_workspace_doubles(int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) fail("sce_stored_exp_workspace_doubles: rows and cols must be >= 0");
  const int64_t r = rows < kStoredMaxRowsPerLaunch ? rows : kStoredMaxRowsPerLaunch;
  return kStoredPartialDoubles * r * ((cols + kStoredColsPerBlock - 1) / kStoredColsPerBlock);
}

inline void check_sce_stored_exp_args(const TensorView& tile, const TensorView& inv_n, const TensorView& y,
                                      const TensorView& shift, const TensorView& E, const TensorView& state,
                                      double tau) {
  check_tile(tile, y, "sce_stored_exp");
  const int64_t R = tile.size(0), c = tile.size(1);
  check_shape(inv_n, {c}, "inv_n");
  check_dtype(inv_n, tile.dtype, "inv_n");
  if (c > 1 && inv_n.stride(0) != 1) fail("inv_n: must be contiguous");
  check_shape(shift, {R}, "shift");
  check_dtype(shift, DType::F64, "shift");
  check_dim(E, 2, "E");
  check_shape(E, {R, c}, "E");
  if (c > 1 && E.stride(1) != 1) fail("E: rows must be contiguous (column stride 1)");
  if (tile.dtype == DType::F64 ? E.dtype != DType::F64 : (E.dtype != DType::F32 && E.dtype != DType::BF16))
    fail(std::string("E: expected float64 for a float64 tile, bfloat16 or float32 for a float32 tile, got ") +
         dtype_name(E.dtype));
  check_shape(state, {R, 4}, "state");
  check_dtype(state, DType::F64, "state");
  if (!state.is_contiguous()) fail("state: must be contiguous");
  if (!(tau > 0)) fail("tau: must be > 0");
  for (const TensorView* t : {&inv_n, &y, &shift, &E, &state})
    if (t->device != tile.device) fail("sce_stored_exp: every tensor must be on the tile's device");
  struct Named {
    const TensorView* t;
    const char* name;
  };
  for (const Named& in : {Named{&tile, "tile"}, Named{&inv_n, "inv_n"}, Named{&y, "y"}, Named{&shift, "shift"}}) {
    check_no_overlap(E, *in.t, "E", in.name);
    check_no_overlap(state, *in.t, "state", in.name);
  }
  check_no_overlap(E, state, "E", "state");
}

inline void check_sce_stored_dw_args(const TensorView& X, const TensorView& W, const TensorView& inv_n,
                                     const TensorView& v, const TensorView& dW, double eps) {
  check_dim(X, 2, "X");
  if (X.dtype != DType::F32 && X.dtype != DType::F64) fail("X: expected float32 or float64");
  const int64_t c = X.size(0), d = X.size(1);
  if (d > 1 && X.stride(1) != 1) fail("X: rows must be contiguous");
  check_shape(W, {c, d}, "W");
  if (!is_floating(W.dtype)) fail("W: expected a floating dtype");
  if (X.dtype == DType::F64 && W.dtype != DType::F64) fail("W: expected float64 for a float64 X");
  if (X.dtype == DType::F32 && W.dtype == DType::F64)
    fail("W: expected float32, bfloat16 or float16 for a float32 X, got float64");
  if (d > 1 && W.stride(1) != 1) fail("W: rows must be contiguous");
  check_shape(dW, {c, d}, "dW");
  check_dtype(dW, W.dtype, "dW");
  if (d > 1 && dW.stride(1) != 1) fail("dW: rows must be contiguous");
  check_shape(inv_n, {c}, "inv_n");
  check_dtype(inv_n, X.dtype, "inv_n");
  if (c > 1 && inv_n.stride(0) != 1) fail("inv_n: must be contiguous");
  check_shape(v, {d}, "v");
  check_dtype(v, X.dtype, "v");
  if (d > 1 && v.stride(0) != 1) fail("v: must be contiguous");
  if (!(eps > 0)) fail("eps: must be > 0");
  check_no_overlap(dW, X, "dW", "X");
  check_no_overlap(dW, W, "dW", "W");
  check_no_overlap(dW, inv_n, "dW", "inv_n");
  check_no_overlap(dW, v, "dW", "v");
  for (const TensorView* t : {&W, &inv_n, &v, &dW})
    if (t->device != X.device) fail("sce_stored_dw: every tensor must be on X's device");
}

}  // namespace gnc
