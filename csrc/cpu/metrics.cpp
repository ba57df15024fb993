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

}  // namespace cpu
}  // namespace gnc
