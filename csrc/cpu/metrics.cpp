// [metrics] CPU (OpenMP) kernels: streaming class statistics and the NCC argmax epilogue.
#include "cpu/metrics.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "common/dispatch.h"

namespace gnc {
namespace cpu {

namespace {

// Pass A: Z[i] = (normalised) features[i] in fp64. Returns the first non-finite row
// (or -1). Nothing but Z is written.
template <typename T>
int64_t load_rows(const TensorView& x, double* Z, bool normalize, double eps) {
  const int64_t B = x.size(0), d = x.size(1);
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  const T* xp = x.data<T>();
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
#pragma omp parallel for schedule(static) if (B * d > 32768)
  for (int64_t i = 0; i < B; ++i) {
    const T* xr = xp + i * s0;
    double* zr = Z + i * d;
    double ss = 0.0;
    if (s1 == 1) {
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(load_f(xr, j));
        zr[j] = v;
        ss += v * v;
      }
    } else {
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(load_f(xr, j * s1));
        zr[j] = v;
        ss += v * v;
      }
    }
    if (!std::isfinite(ss)) {  // NaN/Inf anywhere in the row (or an overflowing row)
      int64_t cur = bad.load();
      while (i < cur && !bad.compare_exchange_weak(cur, i)) {
      }
      continue;
    }
    if (normalize) {
      const double inv = 1.0 / std::max(std::sqrt(ss), eps);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) zr[j] *= inv;
    }
  }
  const int64_t b = bad.load();
  return b == std::numeric_limits<int64_t>::max() ? -1 : b;
}

}  // namespace

void metrics_update_batch(const TensorView& features, const TensorView& labels,
                          const TensorView& shift, const TensorView& dsum, const TensorView& sqsum,
                          const TensorView& counts, const TensorView& Z, bool normalize, double eps) {
  const int64_t B = features.size(0), d = features.size(1), K = shift.size(0);
  const int64_t* lab = labels.data<int64_t>();
  const int64_t ls = labels.stride(0);
  // labels: range check first (nothing written yet)
  for (int64_t i = 0; i < B; ++i) {
    const int64_t y = lab[i * ls];
    if (y < 0 || y >= K)
      fail("labels: value " + std::to_string(y) + " at position " + std::to_string(i) +
           " is outside [0, num_classes=" + std::to_string(K) + ")");
  }
  double* Zp = Z.data<double>();
  const int64_t bad = dispatch_float(features.dtype, "features", [&](auto tag) {
    using T = decltype(tag);
    return load_rows<T>(features, Zp, normalize, eps);
  });
  if (bad >= 0)
    fail("features: row " + std::to_string(bad) + " contains NaN or Inf (or its norm overflows)");

  // Group rows by class (stable: rows of a class keep batch order).
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lab[a * ls] < lab[b * ls]; });
  std::vector<int64_t> starts;
  starts.reserve(static_cast<size_t>(std::min<int64_t>(B, K)) + 1);
  for (int64_t r = 0; r < B; ++r)
    if (r == 0 || lab[order[r] * ls] != lab[order[r - 1] * ls]) starts.push_back(r);
  starts.push_back(B);
  const int64_t G = static_cast<int64_t>(starts.size()) - 1;

  float* sh = shift.data<float>();
  double* ds = dsum.data<double>();
  double* sq = sqsum.data<double>();
  int64_t* cnt = counts.data<int64_t>();
  const int64_t shs = shift.stride(0), dss = dsum.stride(0);

  // Each class is owned by one thread: no races on its state rows.
#pragma omp parallel for schedule(dynamic, 4) if (B * d > 32768)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k = lab[order[starts[g]] * ls];
    float* c = sh + k * shs;
    double* s = ds + k * dss;
    if (cnt[k] == 0) {  // first sample of the class becomes its reference point
      const double* z0 = Zp + order[starts[g]] * d;
      for (int64_t j = 0; j < d; ++j) c[j] = static_cast<float>(z0[j]);
    }
    double q = 0.0;
    for (int64_t r = starts[g]; r < starts[g + 1]; ++r) {
      double* zr = Zp + order[r] * d;
#pragma omp simd reduction(+ : q)
      for (int64_t j = 0; j < d; ++j) {
        const double v = zr[j] - static_cast<double>(c[j]);
        zr[j] = v;
        s[j] += v;
        q += v * v;
      }
    }
    sq[k] += q;
    cnt[k] += starts[g + 1] - starts[g];
  }
}

namespace {

template <typename T>
void argmax_impl(const TensorView& tile, const TensorView& bias, int64_t col0,
                 const TensorView& best_val, const TensorView& best_idx) {
  const int64_t B = tile.size(0), c = tile.size(1), ts = tile.stride(0);
  const T* tp = tile.data<T>();
  const T* bp = bias.data<T>() + col0 * bias.stride(0);
  const int64_t bs = bias.stride(0);
  T* bv = best_val.data<T>();
  int64_t* bi = best_idx.data<int64_t>();
  const int64_t vs = best_val.stride(0), is = best_idx.stride(0);
#pragma omp parallel for schedule(static) if (B * c > 65536)
  for (int64_t i = 0; i < B; ++i) {
    const T* row = tp + i * ts;
    const T prev = bv[i * vs];
    if (bs == 1) {
      // two vectorisable passes over the (cache-resident) row: the maximum, then the
      // first index attaining it (v is recomputed bit-identically)
      T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < c; ++j) m = std::max(m, row[j] + bp[j]);
      if (m > prev) {
        int64_t arg = 0;
        while (arg < c && !(row[arg] + bp[arg] == m)) ++arg;
        if (arg < c) {
          bv[i * vs] = m;
          bi[i * is] = col0 + arg;
        }
      }
    } else {
      T best = prev;
      int64_t arg = -1;
      for (int64_t j = 0; j < c; ++j) {
        const T v = row[j] + bp[j * bs];
        if (v > best) { best = v; arg = j; }
      }
      if (arg >= 0) {
        bv[i * vs] = best;
        bi[i * is] = col0 + arg;
      }
    }
  }
}

}  // namespace

void ncc_argmax_update(const TensorView& tile, const TensorView& bias, int64_t col0,
                       const TensorView& best_val, const TensorView& best_idx) {
  if (tile.size(0) == 0 || tile.size(1) == 0) return;
  if (tile.dtype == DType::F32)
    argmax_impl<float>(tile, bias, col0, best_val, best_idx);
  else if (tile.dtype == DType::F64)
    argmax_impl<double>(tile, bias, col0, best_val, best_idx);
  else
    fail(std::string("tile: expected float32 or float64, got ") + dtype_name(tile.dtype));
}

namespace {

// Exact fp64 score of class k for row a (serial, fixed order: the same k always gives
// bit-identical v, so exact ties stay ties).
template <typename T>
inline double exact_dot(const T* a, int64_t as1, const T* b, int64_t bs1, int64_t d) {
  double acc = 0.0;
  if (as1 == 1 && bs1 == 1) {
    for (int64_t t = 0; t < d; ++t) acc += static_cast<double>(a[t]) * static_cast<double>(b[t]);
  } else {
    for (int64_t t = 0; t < d; ++t)
      acc += static_cast<double>(a[t * as1]) * static_cast<double>(b[t * bs1]);
  }
  return acc;
}

template <typename T>
void certified_impl(const TensorView& tile, const TensorView& A, const TensorView& B,
                    const TensorView& bias, const TensorView& y, int64_t col0, const TensorView& eps,
                    const TensorView& approx_max, const TensorView& best_val,
                    const TensorView& best_idx, const TensorView& checked) {
  const int64_t R = tile.size(0), c = tile.size(1), d = A.size(1), K = B.size(0);
  const float* tp = tile.data<float>();
  const int64_t ts0 = tile.stride(0);
  const T* ap = A.data<T>();
  const T* bp = B.data<T>();
  const int64_t as0 = A.stride(0), as1 = A.stride(1), bs0 = B.stride(0), bs1 = B.stride(1);
  const bool has_bias = bias.numel() > 0;
  const T* biasp = has_bias ? bias.data<T>() : nullptr;
  const int64_t bias_s = has_bias ? bias.stride(0) : 0;
  const bool has_y = y.numel() > 0;
  const int64_t* yp = has_y ? y.data<int64_t>() : nullptr;
  const int64_t ys = has_y ? y.stride(0) : 0;
  const double* ep = eps.data<double>();
  const int64_t es = eps.stride(0);
  double* amp = approx_max.data<double>();
  const int64_t ams = approx_max.stride(0);
  double* bvp = best_val.data<double>();
  const int64_t bvs = best_val.stride(0);
  int64_t* bip = best_idx.data<int64_t>();
  const int64_t bis = best_idx.stride(0);
  const bool has_checked = checked.numel() > 0;
  int64_t* chp = has_checked ? checked.data<int64_t>() : nullptr;
  const int64_t chs = has_checked ? checked.stride(0) : 0;

  // dynamic: rows differ in how many columns qualify
#pragma omp parallel for schedule(dynamic, 16) if (R * c > 16384)
  for (int64_t i = 0; i < R; ++i) {
    const float* row = tp + i * ts0;
    // masked column within this tile (-1: none); y outside [0, K) masks nothing
    int64_t jm = -1;
    if (has_y) {
      const int64_t yi = yp[i * ys];
      if (yi >= 0 && yi < K && yi >= col0 && yi - col0 < c) jm = yi - col0;
    }
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < c; ++j) {
      const double s = static_cast<double>(row[j]);
      if (j != jm && s > m) m = s;  // NaN never compares greater
    }
    const double prev = amp[i * ams];
    if (prev > m) m = prev;  // a NaN running max never counts either
    amp[i * ams] = m;
    if (!(m > -std::numeric_limits<double>::infinity())) continue;
    // s~ and m are exact doubles and rounding is monotone, so s~ >= m - 2 eps in exact
    // arithmetic implies s~ >= fl(m - 2 eps): the rounded threshold never drops k*.
    const double thr = m - 2.0 * ep[i * es];
    double bv = bvp[i * bvs];
    int64_t bi = bip[i * bis];
    int64_t nchk = 0;
    const T* arow = ap + i * as0;
    for (int64_t j = 0; j < c; ++j) {
      if (j == jm || !(static_cast<double>(row[j]) >= thr)) continue;
      const int64_t k = col0 + j;
      double v = exact_dot(arow, as1, bp + k * bs0, bs1, d);
      if (has_bias) v += static_cast<double>(biasp[k * bias_s]);
      ++nchk;
      if (v > bv || (v == bv && k < bi)) {
        bv = v;
        bi = k;
      }
    }
    bvp[i * bvs] = bv;
    bip[i * bis] = bi;
    if (has_checked) chp[i * chs] += nchk;
  }
}

}  // namespace

void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked) {
  const int64_t R = tile.size(0);
  if (tile.dtype != DType::F32) fail(std::string("tile: expected float32, got ") + dtype_name(tile.dtype));
  // cheap value check of the error bound before any state is written
  const double* ep = eps.data<double>();
  for (int64_t i = 0; i < R; ++i) {
    const double e = ep[i * eps.stride(0)];
    if (!(e >= 0) || !std::isfinite(e))
      fail("eps: every entry must be finite and >= 0 (row " + std::to_string(i) + " has " + std::to_string(e) + ")");
  }
  if (R == 0 || tile.size(1) == 0) return;
  if (A.dtype == DType::F32)
    certified_impl<float>(tile, A, B, bias, y, col0, eps, approx_max, best_val, best_idx, checked);
  else if (A.dtype == DType::F64)
    certified_impl<double>(tile, A, B, bias, y, col0, eps, approx_max, best_val, best_idx, checked);
  else
    fail(std::string("A: expected float32 or float64, got ") + dtype_name(A.dtype));
}

void pair_stats_fold(const TensorView& C, const TensorView& Xi, const TensorView& Xj, const TensorView& ri,
                     const TensorView& rj, const TensorView& si, const TensorView& sj, bool diag, int64_t kernel,
                     double riesz_s, double cdnv_p, double close_cos, double kshift, const TensorView& rowmax,
                     const TensorView& colmax, const TensorView& acc) {
  const int64_t bi = C.size(0), bj = C.size(1), d = Xi.size(1);
  if (bi == 0 || bj == 0) return;
  const double* cp = C.data<double>();
  const int64_t cs = C.stride(0);
  const double* xi = Xi.data<double>();
  const double* xj = Xj.data<double>();
  const int64_t xis = Xi.stride(0), xjs = Xj.stride(0);
  const bool cd = ri.numel() > 0;
  const double* rip = cd ? ri.data<double>() : nullptr;
  const double* rjp = cd ? rj.data<double>() : nullptr;
  const double* sip = cd ? si.data<double>() : nullptr;
  const double* sjp = cd ? sj.data<double>() : nullptr;
  double* rmax = rowmax.data<double>();
  double* cmax = colmax.data<double>();
  double* out = acc.data<double>();
  const double thr = 1.0 - close_cos;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const bool p1 = cdnv_p == 1.0;
  const double half_s = -0.5 * riesz_s;
  double cd_sum = 0.0, k_sum = 0.0, k_sq = 0.0, min_e2 = std::numeric_limits<double>::infinity();
#pragma omp parallel reduction(+ : cd_sum, k_sum, k_sq) reduction(min : min_e2)
  {
    std::vector<double> cm(diag ? 0 : bj, neg_inf);
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < bi; ++i) {
      const double* row = cp + i * cs;
      double m = rmax[i];
      for (int64_t j = 0; j < bj; ++j) {
        if (diag && j == i) continue;
        m = std::max(m, row[j]);
        if (!diag) cm[j] = std::max(cm[j], row[j]);
      }
      rmax[i] = m;
      if (!cd && kernel < 0) continue;
      double rc = 0.0, rk = 0.0, rq = 0.0, rmin = std::numeric_limits<double>::infinity();
      for (int64_t j = diag ? i + 1 : 0; j < bj; ++j) {
        const double c = row[j];
        double e2;
        if (c > thr) {  // nearly parallel: 2 − 2c has lost its digits
          e2 = 0.0;
          const double* a = xi + i * xis;
          const double* b = xj + j * xjs;
          for (int64_t t = 0; t < d; ++t) {
            const double z = a[t] - b[t];
            e2 += z * z;
          }
        } else {
          e2 = 2.0 - 2.0 * c;
        }
        rmin = std::min(rmin, e2);
        if (cd) {
          const double dr = rip[i] - rjp[j];
          double D = dr * dr + rip[i] * rjp[j] * e2;
          if (!p1) D = std::pow(D, cdnv_p);
          rc += (sip[i] + sjp[j]) / (2.0 * D);
        }
        if (kernel >= 0) {
          double v;
          if (kernel == 0)
            v = -0.5 * std::log(e2);
          else if (kernel == 1)
            v = std::pow(e2, half_s);
          else
            v = std::sqrt(e2);
          v -= kshift;
          rk += v;
          rq += v * v;
        }
      }
      cd_sum += rc;
      k_sum += rk;
      k_sq += rq;
      min_e2 = std::min(min_e2, rmin);
    }
    if (!diag) {
#pragma omp critical(gnc_pair_stats_colmax)
      for (int64_t j = 0; j < bj; ++j) cmax[j] = std::max(cmax[j], cm[j]);
    }
  }
  out[0] += cd_sum;
  out[1] += k_sum;
  out[2] += k_sq;
  out[3] = std::min(out[3], min_e2);
}

}  // namespace cpu
}  // namespace gnc
