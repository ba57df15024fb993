// dtype dispatch: calls fn(T{}) with the C++ element type matching a DType.
#pragma once
#include "common/half.h"
#include "common/tensor_view.h"

namespace gnc {

template <typename F>
auto dispatch_float(DType t, const char* name, F&& fn) {
  switch (t) {
    case DType::F32: return fn(float{});
    case DType::F64: return fn(double{});
    case DType::F16: return fn(f16_t{});
    case DType::BF16: return fn(bf16_t{});
    default: break;
  }
  fail(std::string(name) + ": expected a floating dtype (float32/float64/float16/bfloat16), got " +
       dtype_name(t));
}

}  // namespace gnc
