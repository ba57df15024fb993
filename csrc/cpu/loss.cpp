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

#include "common/dispatch.h"
#include "cpu/loss_math.h"

namespace gnc {
namespace cpu {

namespace {

using loss_math::exp_nonpos;

void check_tile(const TensorView& tile, const TensorView& y, const char* fn) {
  check_dim(tile, 2, "tile");
  if (tile.dtype != DType::F32 && tile.dtype != DType::F64)
    fail(std::string(fn) + ": tile must be float32 or float64");
  if (tile.size(1) > 1 && tile.stride(1) != 1) fail(std::string(fn) + ": tile rows must be contiguous");
  check_shape(y, {tile.size(0)}, "y");
  check_dtype(y, DType::I64, "y");
}

template <typename A>
void fold_impl(const TensorView& tile, const TensorView& yv, int64_t col0, const TensorView& st,
               double tau, const loss_math::Margin& mg, int64_t ignore_index) {
  const int64_t R = tile.size(0), C = tile.size(1), ld = tile.stride(0);
  const A* tp = tile.data<A>();
  const int64_t* y = yv.data<int64_t>();
  double* s = st.data<double>();
  const A inv_tau = A(1.0 / tau);
  const A m = A(mg.m), cm = A(mg.cos_m), sm = A(mg.sin_m), th = A(mg.th), mmv = A(mg.mm);
#pragma omp parallel for schedule(static) if (R * C > 65536)
  for (int64_t i = 0; i < R; ++i) {
    const int64_t yi = y[i * yv.stride(0)];
    if (yi == ignore_index) continue;
    const A* row = tp + i * ld;
    const int64_t t = yi - col0;
    const bool has_t = t >= 0 && t < C;
    A zt = A(0);
    if (has_t) zt = loss_math::phi<A>(row[t], mg.type, m, cm, sm, th, mmv) * inv_tau;
    // the target column (if here) is excluded from the plain loops and added exactly,
    // so a margin never causes cancellation in the sum
    const int64_t a_end = has_t ? t : C, b_beg = has_t ? t + 1 : C;
    A mx = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t k = 0; k < a_end; ++k) mx = std::max(mx, row[k]);
#pragma omp simd reduction(max : mx)
    for (int64_t k = b_beg; k < C; ++k) mx = std::max(mx, row[k]);
    mx *= inv_tau;
    if (has_t) mx = std::max(mx, zt);
    double* si = s + 4 * i;
    const double M = std::max(si[0], static_cast<double>(mx));
    const A Ma = static_cast<A>(M);
    A acc = A(0), zsum = A(0);
#pragma omp simd reduction(+ : acc, zsum)
    for (int64_t k = 0; k < a_end; ++k) {
      const A z = row[k] * inv_tau;
      acc += exp_nonpos(z - Ma);
      zsum += z;
    }
#pragma omp simd reduction(+ : acc, zsum)
    for (int64_t k = b_beg; k < C; ++k) {
      const A z = row[k] * inv_tau;
      acc += exp_nonpos(z - Ma);
      zsum += z;
    }
    if (has_t) {
      acc += exp_nonpos(zt - Ma);
      zsum += zt;
      si[2] = static_cast<double>(row[t]);
    }
    const double old = si[0] == -std::numeric_limits<double>::infinity() ? 0.0 : si[1] * std::exp(si[0] - M);
    si[1] = old + static_cast<double>(acc);
    si[0] = M;
    si[3] += static_cast<double>(zsum);
  }
}

template <typename A>
void grad_impl(const TensorView& tile, const TensorView& yv, int64_t col0, int64_t K,
               const TensorView& lsev, const TensorView& scv, double tau, const loss_math::Margin& mg,
               double eps_ls, int64_t ignore_index) {
  const int64_t R = tile.size(0), C = tile.size(1), ld = tile.stride(0);
  A* tp = tile.data<A>();
  const int64_t* y = yv.data<int64_t>();
  const double* lse = lsev.data<double>();
  const double* sc = scv.data<double>();
  const A inv_tau = A(1.0 / tau);
  const A m = A(mg.m), cm = A(mg.cos_m), sm = A(mg.sin_m), th = A(mg.th), mmv = A(mg.mm);
  const A uni = A(eps_ls / static_cast<double>(K));
#pragma omp parallel for schedule(static) if (R * C > 65536)
  for (int64_t i = 0; i < R; ++i) {
    A* row = tp + i * ld;
    const int64_t yi = y[i * yv.stride(0)];
    const double scale = sc[i * scv.stride(0)];
    if (yi == ignore_index || scale == 0.0) {
      std::fill(row, row + C, A(0));
      continue;
    }
    const A L = static_cast<A>(lse[i * lsev.stride(0)]);
    const A u = static_cast<A>(scale / tau);
    const int64_t t = yi - col0;
    const bool has_t = t >= 0 && t < C;
    A ct = A(0);
    if (has_t) ct = row[t];
#pragma omp simd
    for (int64_t k = 0; k < C; ++k) row[k] = u * (exp_nonpos(row[k] * inv_tau - L) - uni);
    if (has_t) {
      const A zt = loss_math::phi<A>(ct, mg.type, m, cm, sm, th, mmv) * inv_tau;
      const A pt = exp_nonpos(zt - L);
      row[t] = u * (pt - uni - A(1.0 - eps_ls)) * loss_math::dphi<A>(ct, mg.type, cm, sm, th);
    }
  }
}

template <typename A>
void argmax_impl(const TensorView& tile, const TensorView& yv, int64_t col0, const TensorView& bv,
                 const TensorView& av, const TensorView& tv) {
  const int64_t R = tile.size(0), C = tile.size(1), ld = tile.stride(0);
  const A* tp = tile.data<A>();
  const int64_t* y = yv.data<int64_t>();
  double* best = bv.data<double>();
  int64_t* arg = av.data<int64_t>();
  double* tgt = tv.data<double>();
#pragma omp parallel for schedule(static) if (R * C > 65536)
  for (int64_t i = 0; i < R; ++i) {
    const A* row = tp + i * ld;
    const int64_t t = y[i * yv.stride(0)] - col0;
    const bool has_t = t >= 0 && t < C;
    // vectorisable max over the row with the target masked out, then the first index
    A mx = -std::numeric_limits<A>::infinity();
    if (has_t) {
      for (int64_t k = 0; k < t; ++k) mx = std::max(mx, row[k]);
      for (int64_t k = t + 1; k < C; ++k) mx = std::max(mx, row[k]);
      tgt[i] = static_cast<double>(row[t]);
    } else {
#pragma omp simd reduction(max : mx)
      for (int64_t k = 0; k < C; ++k) mx = std::max(mx, row[k]);
    }
    if (C == 0 || (has_t && C == 1)) continue;
    if (static_cast<double>(mx) > best[i]) {  // strict: earlier tiles win ties
      int64_t k = 0;
      while (k < C && (k == t || row[k] != mx)) ++k;
      best[i] = static_cast<double>(mx);
      arg[i] = col0 + k;
    }
  }
}

}  // namespace

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index) {
  check_tile(tile, y, "sce_fold");
  check_shape(state, {tile.size(0), 4}, "state");
  check_dtype(state, DType::F64, "state");
  if (!state.is_contiguous()) fail("state: must be contiguous");
  if (!(tau > 0)) fail("tau: must be > 0");
  const auto mg = loss_math::make_margin(margin_type, margin);
  if (tile.dtype == DType::F32)
    fold_impl<float>(tile, y, col0, state, tau, mg, ignore_index);
  else
    fold_impl<double>(tile, y, col0, state, tau, mg, ignore_index);
}

void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index) {
  check_tile(tile, y, "sce_grad");
  check_shape(lse, {tile.size(0)}, "lse");
  check_shape(scale, {tile.size(0)}, "scale");
  check_dtype(lse, DType::F64, "lse");
  check_dtype(scale, DType::F64, "scale");
  if (!(tau > 0)) fail("tau: must be > 0");
  if (num_classes < 1) fail("num_classes: must be >= 1");
  const auto mg = loss_math::make_margin(margin_type, margin);
  if (tile.dtype == DType::F32)
    grad_impl<float>(tile, y, col0, num_classes, lse, scale, tau, mg, label_smoothing, ignore_index);
  else
    grad_impl<double>(tile, y, col0, num_classes, lse, scale, tau, mg, label_smoothing, ignore_index);
}

void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0,
                        const TensorView& best, const TensorView& arg, const TensorView& tgt) {
  check_tile(tile, y, "masked_argmax_fold");
  check_shape(best, {tile.size(0)}, "best");
  check_shape(arg, {tile.size(0)}, "arg");
  check_shape(tgt, {tile.size(0)}, "tgt");
  check_dtype(best, DType::F64, "best");
  check_dtype(tgt, DType::F64, "tgt");
  check_dtype(arg, DType::I64, "arg");
  if (best.size(0) > 0 && (best.stride(0) != 1 || arg.stride(0) != 1 || tgt.stride(0) != 1))
    fail("best/arg/tgt: must be contiguous");
  if (tile.dtype == DType::F32)
    argmax_impl<float>(tile, y, col0, best, arg, tgt);
  else
    argmax_impl<double>(tile, y, col0, best, arg, tgt);
}

}  // namespace cpu
}  // namespace gnc
