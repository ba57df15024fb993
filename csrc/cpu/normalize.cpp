#include <algorithm>
#include <cmath>
#include <limits>

#include "common/dispatch.h"
#include "cpu/ops.h"

#ifdef GNC_WITH_OPENMP
#include <omp.h>
#endif

namespace gnc {
namespace cpu {

int num_threads() {
#ifdef GNC_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

template <typename T>
void fwd_impl(const TensorView& x, const TensorView& y, const TensorView& norm, double eps) {
  using A = typename Acc<T>::type;
  const int64_t rows = x.size(0), cols = x.size(1);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
  A* np = norm.data<A>();
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
  for (int64_t i = 0; i < rows; ++i) {
    const T* xr = xp + i * xs0;
    double ss = 0.0;  // accumulate the square sum in fp64: exact enough for any d
    if (xs1 == 1) {
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < cols; ++j) {
        double v = static_cast<double>(load_f(xr, j));
        ss += v * v;
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        double v = static_cast<double>(load_f(xr, j * xs1));
        ss += v * v;
      }
    }
    // A non-finite element makes the fp64 square sum non-finite; report the row's norm
    // as NaN so the caller can raise (the Python wrapper checks norm, O(rows)).
    const double n = std::isfinite(ss) ? std::sqrt(ss) : std::numeric_limits<double>::quiet_NaN();
    const A inv = static_cast<A>(1.0 / std::max(n, eps));
    np[i] = static_cast<A>(n);
    T* yr = yp + i * ys0;
    if (xs1 == 1 && ys1 == 1) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) store_f(yr, j, static_cast<A>(load_f(xr, j)) * inv);
    } else {
      for (int64_t j = 0; j < cols; ++j) store_f(yr, j * ys1, static_cast<A>(load_f(xr, j * xs1)) * inv);
    }
  }
}

template <typename T>
void bwd_impl(const TensorView& x, const TensorView& norm, const TensorView& dy,
              const TensorView& dx, double eps) {
  using A = typename Acc<T>::type;
  const int64_t rows = x.size(0), cols = x.size(1);
  const T* xp = x.data<T>();
  const T* gp = dy.data<T>();
  T* dp = dx.data<T>();
  const A* np = norm.data<A>();
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
  for (int64_t i = 0; i < rows; ++i) {
    const T* xr = xp + i * x.stride(0);
    const T* gr = gp + i * dy.stride(0);
    T* dr = dp + i * dx.stride(0);
    const double n = static_cast<double>(np[i]);
    if (n > eps) {
      // y = x / n; dx = (dy - y <y, dy>) / n
      double dot = 0.0;
      const int64_t xs1 = x.stride(1), gs1 = dy.stride(1);
      if (xs1 == 1 && gs1 == 1) {
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < cols; ++j)
          dot += static_cast<double>(load_f(xr, j)) * static_cast<double>(load_f(gr, j));
      } else {
        for (int64_t j = 0; j < cols; ++j)
          dot += static_cast<double>(load_f(xr, j * xs1)) * static_cast<double>(load_f(gr, j * gs1));
      }
      // dx = (dy - x k) / n with k = <y, dy> / n = <x, dy> / n^2, so that no factor
      // overflows the accumulation type where dx itself does not (<x, dy> / n^3 would for
      // fp32 rows with norm below ~1e-13)
      const A inv = static_cast<A>(1.0 / n);
      const A k = static_cast<A>(dot / (n * n));
      for (int64_t j = 0; j < cols; ++j) {
        A xv = load_f(xr, j * x.stride(1));
        A gv = load_f(gr, j * dy.stride(1));
        store_f(dr, j * dx.stride(1), (gv - xv * k) * inv);
      }
    } else {
      const A inv = static_cast<A>(1.0 / eps);
      for (int64_t j = 0; j < cols; ++j) store_f(dr, j * dx.stride(1), load_f(gr, j * dy.stride(1)) * inv);
    }
  }
}

}  // namespace

void normalize_rows_forward(const TensorView& x, const TensorView& y, const TensorView& norm,
                            double eps) {
  dispatch_float(x.dtype, "x", [&](auto tag) {
    using T = decltype(tag);
    fwd_impl<T>(x, y, norm, eps);
    return 0;
  });
}

void normalize_rows_backward(const TensorView& x, const TensorView& norm, const TensorView& dy,
                             const TensorView& dx, double eps) {
  dispatch_float(x.dtype, "x", [&](auto tag) {
    using T = decltype(tag);
    bwd_impl<T>(x, norm, dy, dx, eps);
    return 0;
  });
}

}  // namespace cpu
}  // namespace gnc
