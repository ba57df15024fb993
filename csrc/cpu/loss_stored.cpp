// CPU epilogues of the stored-exponent strategy (contracts: cpu/loss_stored.h). Rows are
// independent: OpenMP over rows, each row summed in a fixed order (deterministic).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "cpu/loss_stored.h"

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "common/dispatch.h"
#include "common/half.h"
#include "common/tile_checks.h"
#include "cpu/cpu_features.h"
#include "cpu/loss_math.h"
#include "cpu/loss_stored_checks.h"

namespace gnc {
namespace cpu {

namespace base {
inline float exp_shifted(float x) { return loss_math::exp_nonpos(x); }
inline double exp_shifted(double x) { return std::exp(x); }
#include "cpu/loss_stored_kernels.inc"
}  // namespace base

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define GNC_STORED_AVX512 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
namespace avx512 {
inline float exp_shifted(float x) { return loss_math::exp_nonpos(x); }
inline double exp_shifted(double x) { return std::exp(x); }
#include "cpu/loss_stored_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

namespace {
bool use_avx512() { return cpu_has_avx512(); }
}  // namespace

void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index) {
  check_sce_stored_exp_args(tile, inv_n, y, shift, E, state, tau);
  const bool wide = use_avx512();
#ifdef GNC_STORED_AVX512
#define GNC_STORED_EXP(A, S)                                                                   \
  (wide ? avx512::exp_impl<A, S>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index)   \
        : base::exp_impl<A, S>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index))
#else
#define GNC_STORED_EXP(A, S) ((void)wide, base::exp_impl<A, S>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index))
#endif
  if (tile.dtype == DType::F32) {
    if (E.dtype == DType::BF16)
      GNC_STORED_EXP(float, bf16_t);
    else
      GNC_STORED_EXP(float, float);
  } else {
    GNC_STORED_EXP(double, double);
  }
#undef GNC_STORED_EXP
}

void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project) {
  check_sce_stored_dw_args(X, W, inv_n, v, dW, eps);
  if (X.dtype == DType::F64) {
    base::dw_impl<double, double>(X, W, inv_n, v, dW, eps, project);
    return;
  }
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same<T, double>::value) base::dw_impl<float, T>(X, W, inv_n, v, dW, eps, project);
    return 0;
  });
}

}  // namespace cpu
}  // namespace gnc
