// Host-side checks of a similarity tile and its labels, shared by the CPU and CUDA
// loss epilogues (each re-checks what the Python layer already validated).
#pragma once
#include <string>

#include "common/tensor_view.h"

namespace gnc {

inline void check_tile(const TensorView& tile, const TensorView& y, const char* fn) {
  check_dim(tile, 2, "tile");
  if (tile.dtype != DType::F32 && tile.dtype != DType::F64)
    fail(std::string(fn) + ": tile must be float32 or float64");
  if (tile.size(1) > 1 && tile.stride(1) != 1) fail(std::string(fn) + ": tile rows must be contiguous");
  check_shape(y, {tile.size(0)}, "y");
  check_dtype(y, DType::I64, "y");
}

// Arguments of the online log-sum-exp fold (sce_fold), CPU and CUDA alike.
inline void check_sce_fold_args(const TensorView& tile, const TensorView& y, const TensorView& state, double tau) {
  check_tile(tile, y, "sce_fold");
  check_shape(state, {tile.size(0), 4}, "state");
  check_dtype(state, DType::F64, "state");
  if (!state.is_contiguous()) fail("state: must be contiguous");
  if (!(tau > 0)) fail("tau: must be > 0");
}

// Arguments of the masked max/argmax fold, CPU and CUDA alike.
inline void check_masked_argmax_args(const TensorView& tile, const TensorView& y, const TensorView& best,
                                     const TensorView& arg, const TensorView& tgt) {
  check_tile(tile, y, "masked_argmax_fold");
  check_shape(best, {tile.size(0)}, "best");
  check_shape(arg, {tile.size(0)}, "arg");
  check_shape(tgt, {tile.size(0)}, "tgt");
  check_dtype(best, DType::F64, "best");
  check_dtype(tgt, DType::F64, "tgt");
  check_dtype(arg, DType::I64, "arg");
  if (best.size(0) > 0 && (best.stride(0) != 1 || arg.stride(0) != 1 || tgt.stride(0) != 1))
    fail("best/arg/tgt: must be contiguous");
}

// Arguments of the softmax-gradient epilogue (sce_grad), CPU and CUDA alike.
inline void check_sce_grad_args(const TensorView& tile, const TensorView& y, const TensorView& lse,
                                const TensorView& q, const TensorView& scale, double tau, int64_t num_classes) {
  check_tile(tile, y, "sce_grad");
  check_shape(lse, {tile.size(0)}, "lse");
  check_shape(q, {tile.size(0)}, "q");
  check_dtype(q, DType::F64, "q");
  check_shape(scale, {tile.size(0)}, "scale");
  check_dtype(lse, DType::F64, "lse");
  check_dtype(scale, DType::F64, "scale");
  if (!(tau > 0)) fail("tau: must be > 0");
  if (num_classes < 1) fail("num_classes: must be >= 1");
}

}  // namespace gnc
