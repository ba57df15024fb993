// CPU epilogues of the stored-exponent strategy (contracts: cpu/loss_stored.h). Rows are
// independent: OpenMP over rows, each row summed in a fixed order (deterministic).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "cpu/loss_stored.h"

#include <cmath>
#include <limits>
#include <string>

#include "common/dispatch.h"
#include "common/half.h"
#include "common/tile_checks.h"
#include "cpu/loss_math.h"
#include "cpu/loss_stored_checks.h"

namespace gnc {
namespace cpu {

namespace {

inline float exp_shifted(float x) { return loss_math::exp_nonpos(x); }
inline double exp_shifted(double x) { return std::exp(x); }

template <typename A, typename S>
void exp_impl(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
              const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
              int64_t ignore_index) {
  const int64_t R = tile.size(0), c = tile.size(1);
  const A* t = tile.data<A>();
  const int64_t ts = tile.stride(0);
  const A* inv = inv_n.data<A>();
  const int64_t is = inv_n.stride(0);
  const int64_t* yy = y.data<int64_t>();
  const int64_t ys = y.stride(0);
  const double* sh = shift.data<double>();
  const int64_t shs = shift.stride(0);
  S* e = E.data<S>();
  const int64_t es = E.stride(0);
  double* st = state.data<double>();
  const A rtau = A(1.0 / tau);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < R; ++i) {
    const int64_t yi = yy[i * ys];
    S* erow = e + i * es;
    if (yi == ignore_index) {
      for (int64_t k = 0; k < c; ++k) store_f(erow, k, A(0));
      continue;
    }
    const A* row = t + i * ts;
    const A shi = A(sh[i * shs]);
    const int64_t jt = (yi >= col0 && yi < col0 + c) ? yi - col0 : -1;
    A sum_e = 0, sum_s = 0, mx = -std::numeric_limits<A>::infinity();
    for (int64_t k = 0; k < c; ++k) {
      const A ik = inv[k * is];
      const A s = row[k] * ik;
      const A z = (s - A(1)) * rtau;
      const A ex = exp_shifted(z - shi);
      const bool tgt = k == jt;
      sum_e += tgt ? A(0) : ex;
      sum_s += tgt ? A(0) : s;
      mx = (!tgt && z > mx) ? z : mx;
      store_f(erow, k, tgt ? A(0) : ex * ik);
    }
    double* sr = st + 4 * i;
    sr[0] += static_cast<double>(sum_e);
    sr[1] += static_cast<double>(sum_s);
    if (jt >= 0) sr[2] = static_cast<double>(row[jt] * inv[jt * is]);
    if (static_cast<double>(mx) > sr[3]) sr[3] = static_cast<double>(mx);
  }
}

template <typename A, typename T>
void dw_impl(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
             const TensorView& dW, double eps, bool project) {
  const int64_t c = X.size(0), d = X.size(1);
  const A* x = X.data<A>();
  const T* w = W.data<T>();
  const A* inv = inv_n.data<A>();
  const A* vv = v.data<A>();
  T* out = dW.data<T>();
  const int64_t xs = X.stride(0), ws = W.stride(0), os = dW.stride(0), is = inv_n.stride(0), vs = v.stride(0);
  const A big = A(1.0 / eps);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < c; ++k) {
    const A ik = inv[k * is];
    const A* xr = x + k * xs;
    const T* wr = w + k * ws;
    T* orow = out + k * os;
    A dot = 0;
    for (int64_t j = 0; j < d; ++j) dot += static_cast<A>(load_f(wr, j)) * (xr[j] - ik * vv[j * vs]);
    const A coef = (project && ik < big) ? dot * ik * ik : A(0);
    for (int64_t j = 0; j < d; ++j)
      store_f(orow, j, (xr[j] - ik * vv[j * vs]) - coef * static_cast<A>(load_f(wr, j)));
  }
}

}  // namespace

void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index) {
  check_sce_stored_exp_args(tile, inv_n, y, shift, E, state, tau);
  if (tile.dtype == DType::F32) {
    if (E.dtype == DType::BF16)
      exp_impl<float, bf16_t>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index);
    else
      exp_impl<float, float>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index);
  } else {
    exp_impl<double, double>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index);
  }
}

void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project) {
  check_sce_stored_dw_args(X, W, inv_n, v, dW, eps);
  if (X.dtype == DType::F64) {
    dw_impl<double, double>(X, W, inv_n, v, dW, eps, project);
    return;
  }
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same<T, double>::value) dw_impl<float, T>(X, W, inv_n, v, dW, eps, project);
    return 0;
  });
}

}  // namespace cpu
}  // namespace gnc
