// CPU epilogues for the spherical CE / HardMax losses (see cpu/loss.h for contracts).
// Rows are independent: OpenMP over rows; the inner loops over a tile row vectorise
// (exp_nonpos is branch-free). State is kept in float64.
// Floating-point exceptions are not used: letting GCC assume no traps allows it to
// if-convert (and so vectorise) the branch-free exp and the selects in the inner loops.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "cpu/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/tile_checks.h"
#include "common/dispatch.h"
#include "cpu/cpu_features.h"
#include "cpu/loss_math.h"

namespace gnc {
namespace cpu {

namespace {

using loss_math::exp_nonpos;

}  // namespace

namespace base {
using loss_math::exp_nonpos;
#include "cpu/loss_kernels.inc"
}  // namespace base

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define GNC_LOSS_AVX512 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
namespace avx512 {
using loss_math::exp_nonpos;
#include "cpu/loss_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

namespace {
bool use_avx512() { return cpu_has_avx512(); }
#ifdef GNC_LOSS_AVX512
#define GNC_LOSS_CALL(fn, ...) (use_avx512() ? avx512::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define GNC_LOSS_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif
}  // namespace

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, double filter_threshold) {
  check_sce_fold_args(tile, y, state, tau);
  const auto mg = loss_math::make_margin(margin_type, margin, filter_threshold);
  if (tile.dtype == DType::F32)
    GNC_LOSS_CALL(fold_impl<float>, tile, y, col0, state, tau, mg, ignore_index);
  else
    GNC_LOSS_CALL(fold_impl<double>, tile, y, col0, state, tau, mg, ignore_index);
}

void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index, double filter_threshold) {
  check_sce_grad_args(tile, y, lse, q, scale, tau, num_classes);
  const auto mg = loss_math::make_margin(margin_type, margin, filter_threshold);
  if (tile.dtype == DType::F32)
    GNC_LOSS_CALL(grad_impl<float>, tile, y, col0, num_classes, lse, q, scale, tau, mg, label_smoothing, ignore_index);
  else
    GNC_LOSS_CALL(grad_impl<double>, tile, y, col0, num_classes, lse, q, scale, tau, mg, label_smoothing, ignore_index);
}

void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0,
                        const TensorView& best, const TensorView& arg, const TensorView& tgt) {
  check_masked_argmax_args(tile, y, best, arg, tgt);
  if (tile.dtype == DType::F32)
    GNC_LOSS_CALL(argmax_impl<float>, tile, y, col0, best, arg, tgt);
  else
    GNC_LOSS_CALL(argmax_impl<double>, tile, y, col0, best, arg, tgt);
}

}  // namespace cpu
}  // namespace gnc
