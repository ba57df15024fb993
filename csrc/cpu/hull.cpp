// [hull] CPU implementation (the executable specification for cuda/hull.cu).
#include "cpu/hull.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/dispatch.h"

#ifdef GNC_WITH_OPENMP
#include <omp.h>
#endif

namespace gnc {
namespace cpu {

namespace {

// Min-heap of size m stored in (v, ix): v[0] is the smallest kept value.
template <typename V>
inline void heap_replace_root(V* v, int64_t* ix, int64_t m, V val, int64_t id) {
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, s = i;
    V sv = val;
    if (l < m && v[l] < sv) { s = l; sv = v[l]; }
    if (r < m && v[r] < sv) { s = r; sv = v[r]; }
    if (s == i) break;
    v[i] = v[s];
    ix[i] = ix[s];
    i = s;
  }
  v[i] = val;
  ix[i] = id;
}

template <typename V>
void topm_impl(const TensorView& tile, const TensorView& row_ids, int64_t col0,
               const TensorView& vals, const TensorView& idx) {
  const int64_t R = tile.size(0), c = tile.size(1), m = vals.size(1);
  const V* S = tile.data<V>();
  const int64_t* rid = row_ids.data<int64_t>();
  V* hv = vals.data<V>();
  int64_t* hi = idx.data<int64_t>();
  const int64_t ts = tile.stride(0), vs = vals.stride(0), is = idx.stride(0), rs = row_ids.stride(0);
#pragma omp parallel for schedule(static) if (R * c > 65536)
  for (int64_t r = 0; r < R; ++r) {
    const V* row = S + r * ts;
    V* v = hv + r * vs;
    int64_t* ix = hi + r * is;
    const int64_t self = rid[r * rs];
    V root = v[0];
    for (int64_t j = 0; j < c; ++j) {
      const V s = row[j];
      if (s > root && col0 + j != self) {
        heap_replace_root(v, ix, m, s, col0 + j);
        root = v[0];
      }
    }
  }
}

// ---- Wolfe's min-norm-point algorithm (fp64) ------------------------------------
struct Work {
  std::vector<double> Y, x, g, yy, L, M, lam, alpha, z;
  std::vector<int64_t> cidx;  // global class index of candidate i
  std::vector<int> S;         // corral: candidate positions
};

// Forward substitution with the (s x s) lower-triangular L (row stride ld): z = L^-1 b.
inline void fwd_solve(const double* L, int64_t ld, int s, const double* b, double* z) {
  for (int i = 0; i < s; ++i) {
    double t = b[i];
    const double* Li = L + i * ld;
    for (int k = 0; k < i; ++k) t -= Li[k] * z[k];
    z[i] = t / Li[i];
  }
}
// Backward substitution with L^T: a = L^-T z (in place allowed).
inline void bwd_solve(const double* L, int64_t ld, int s, double* a) {
  for (int i = s - 1; i >= 0; --i) {
    double t = a[i];
    for (int k = i + 1; k < s; ++k) t -= L[k * ld + i] * a[k];
    a[i] = t / L[i * ld + i];
  }
}

constexpr double kDegenerate = 1e-12;  // relative pivot floor: affine dependence
constexpr double kPos = 1e-15;         // weights below this are treated as zero

// Full Cholesky of M[0..s) (row stride ld) into L; false if not positive definite.
inline bool chol_full(const double* M, double* L, int64_t ld, int s) {
  for (int i = 0; i < s; ++i) {
    for (int j = 0; j <= i; ++j) {
      double t = M[i * ld + j];
      for (int k = 0; k < j; ++k) t -= L[i * ld + k] * L[j * ld + k];
      if (i == j) {
        if (!(t > kDegenerate * M[i * ld + i])) return false;
        L[i * ld + i] = std::sqrt(t);
      } else {
        L[i * ld + j] = t / L[j * ld + j];
      }
    }
  }
  return true;
}

template <typename T>
void solve_one(const T* W, int64_t ws0, int64_t d, int64_t k, const int64_t* cand, int64_t ncand,
               double gap_tol, int64_t max_iter, Work& w, double* proj, double* dist_out,
               int64_t* sup_out, double* wt_out, int64_t s_out, int64_t* iters_out,
               int64_t* status_out) {
  // candidate points y_i = w_i - w_k
  w.cidx.clear();
  for (int64_t i = 0; i < ncand; ++i) {
    const int64_t j = cand[i];
    if (j < 0 || j == k) continue;
    w.cidx.push_back(j);
  }
  const int64_t n = static_cast<int64_t>(w.cidx.size());
  const T* wk = W + k * ws0;
  w.Y.resize(static_cast<size_t>(std::max<int64_t>(n, 1) * d));
  w.yy.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  w.g.resize(w.yy.size());
  w.x.assign(static_cast<size_t>(d), 0.0);
  double ymax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* wj = W + w.cidx[i] * ws0;
    double* y = w.Y.data() + i * d;
    double ss = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      y[t] = static_cast<double>(load_f(wj, t)) - static_cast<double>(load_f(wk, t));
      ss += y[t] * y[t];
    }
    w.yy[i] = ss;
    ymax = std::max(ymax, ss);
  }
  for (int64_t i = 0; i < s_out; ++i) { sup_out[i] = -1; wt_out[i] = 0.0; }
  if (n == 0) {  // no candidate: cannot happen for K >= 2 with valid input
    *status_out = 2;
    *iters_out = 0;
    *dist_out = std::numeric_limits<double>::quiet_NaN();
    for (int64_t t = 0; t < d; ++t) proj[t] = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  const int smax = static_cast<int>(std::min<int64_t>(n, d + 1));
  const int64_t ld = smax + 1;
  w.L.assign(static_cast<size_t>(ld * ld), 0.0);
  w.M.assign(static_cast<size_t>(ld * ld), 0.0);
  w.lam.assign(static_cast<size_t>(ld), 0.0);
  w.alpha.assign(static_cast<size_t>(ld), 0.0);
  w.z.assign(static_cast<size_t>(ld), 0.0);
  w.S.clear();
  auto dot_y = [&](int64_t a, int64_t b) {
    const double* ya = w.Y.data() + a * d;
    const double* yb = w.Y.data() + b * d;
    double s = 0.0;
    for (int64_t t = 0; t < d; ++t) s += ya[t] * yb[t];
    return s;
  };
  // start from the nearest candidate (smallest ||y||)
  int64_t j0 = 0;
  for (int64_t i = 1; i < n; ++i)
    if (w.yy[i] < w.yy[j0]) j0 = i;
  w.S.push_back(static_cast<int>(j0));
  w.lam[0] = 1.0;
  w.M[0] = w.yy[j0] + 1.0;
  w.L[0] = std::sqrt(w.M[0]);
  std::copy(w.Y.begin() + j0 * d, w.Y.begin() + (j0 + 1) * d, w.x.begin());
  const double round_floor = (16.0 * std::sqrt(static_cast<double>(d)) + 16.0) *
                             std::numeric_limits<double>::epsilon() * std::sqrt(std::max(ymax, 1e-300));
  int64_t it = 0;
  int64_t status = 1;
  while (it < max_iter) {
    ++it;
    double xx = 0.0;
    for (int64_t t = 0; t < d; ++t) xx += w.x[t] * w.x[t];
    const double xn = std::sqrt(xx);
    if (xn == 0.0) { status = 0; break; }
    int64_t jm = -1;
    double gm = std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      const double* y = w.Y.data() + i * d;
      double s = 0.0;
      for (int64_t t = 0; t < d; ++t) s += w.x[t] * y[t];
      if (s < gm) { gm = s; jm = i; }
    }
    if (xx - gm <= std::max(0.5 * gap_tol * xn, round_floor * xn)) { status = 0; break; }
    if (std::find(w.S.begin(), w.S.end(), static_cast<int>(jm)) != w.S.end()) { status = 2; break; }
    const int s = static_cast<int>(w.S.size());
    if (s >= smax) { status = 2; break; }
    // append jm to the corral: new row of M and of its Cholesky factor
    for (int i = 0; i < s; ++i) {
      const double v = dot_y(w.S[i], jm) + 1.0;
      w.M[s * ld + i] = v;
      w.M[i * ld + s] = v;
    }
    w.M[s * ld + s] = w.yy[jm] + 1.0;
    fwd_solve(w.L.data(), ld, s, w.M.data() + s * ld, w.L.data() + s * ld);
    double d2 = w.M[s * ld + s];
    for (int i = 0; i < s; ++i) d2 -= w.L[s * ld + i] * w.L[s * ld + i];
    if (!(d2 > kDegenerate * w.M[s * ld + s])) { status = 2; break; }
    w.L[s * ld + s] = std::sqrt(d2);
    w.S.push_back(static_cast<int>(jm));
    w.lam[s] = 0.0;
    bool degenerate = false;
    // minor cycles
    for (;;) {
      const int sc = static_cast<int>(w.S.size());
      for (int i = 0; i < sc; ++i) w.z[i] = 1.0;
      fwd_solve(w.L.data(), ld, sc, w.z.data(), w.alpha.data());
      bwd_solve(w.L.data(), ld, sc, w.alpha.data());
      double sum = 0.0;
      for (int i = 0; i < sc; ++i) sum += w.alpha[i];
      for (int i = 0; i < sc; ++i) w.alpha[i] /= sum;
      bool all_pos = true;
      for (int i = 0; i < sc; ++i)
        if (!(w.alpha[i] > kPos)) { all_pos = false; break; }
      if (all_pos) {
        for (int i = 0; i < sc; ++i) w.lam[i] = w.alpha[i];
        break;
      }
      double theta = 1.0;
      int arg = -1;
      for (int i = 0; i < sc; ++i) {
        if (!(w.alpha[i] > kPos)) {
          const double den = w.lam[i] - w.alpha[i];
          const double th = den > 0 ? w.lam[i] / den : 0.0;
          if (th < theta || arg < 0) { theta = th; arg = i; }
        }
      }
      theta = std::min(1.0, std::max(0.0, theta));
      for (int i = 0; i < sc; ++i) w.lam[i] += theta * (w.alpha[i] - w.lam[i]);
      w.lam[arg] = 0.0;
      if (arg == sc - 1 && theta == 0.0 && w.S.back() == static_cast<int>(jm)) {
        // the point just added cannot enter: numerically converged
        degenerate = true;
      }
      // drop every point whose weight vanished, then refactor
      int o = 0;
      for (int i = 0; i < sc; ++i) {
        if (w.lam[i] > kPos) {
          w.S[o] = w.S[i];
          w.lam[o] = w.lam[i];
          ++o;
        }
      }
      // rebuild M for the kept points from the dot products (O(s^2 d) worst case only on
      // drops, which are rare); keeps the code simple and the factor exact.
      w.S.resize(o);
      for (int i = 0; i < o; ++i)
        for (int jj = 0; jj <= i; ++jj) {
          const double v = (i == jj ? w.yy[w.S[i]] : dot_y(w.S[i], w.S[jj])) + 1.0;
          w.M[i * ld + jj] = v;
          w.M[jj * ld + i] = v;
        }
      double ls = 0.0;
      for (int i = 0; i < o; ++i) ls += w.lam[i];
      for (int i = 0; i < o; ++i) w.lam[i] /= ls;
      if (!chol_full(w.M.data(), w.L.data(), ld, o)) { degenerate = true; break; }
      if (degenerate) break;
      ++it;
      if (it >= max_iter) break;
    }
    // x = sum lam_i y_i
    std::fill(w.x.begin(), w.x.end(), 0.0);
    for (size_t i = 0; i < w.S.size(); ++i) {
      const double* y = w.Y.data() + static_cast<int64_t>(w.S[i]) * d;
      const double l = w.lam[i];
      for (int64_t t = 0; t < d; ++t) w.x[t] += l * y[t];
    }
    if (degenerate) { status = 2; break; }
  }
  // final point from the (renormalised, non-negative) weights
  double ls = 0.0;
  for (size_t i = 0; i < w.S.size(); ++i) ls += std::max(0.0, w.lam[i]);
  std::fill(w.x.begin(), w.x.end(), 0.0);
  int o = 0;
  for (size_t i = 0; i < w.S.size(); ++i) {
    const double l = std::max(0.0, w.lam[i]) / ls;
    if (l <= 0.0) continue;
    const double* y = w.Y.data() + static_cast<int64_t>(w.S[i]) * d;
    for (int64_t t = 0; t < d; ++t) w.x[t] += l * y[t];
    if (o < s_out) {
      sup_out[o] = w.cidx[w.S[i]];
      wt_out[o] = l;
      ++o;
    }
  }
  double xx = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    xx += w.x[t] * w.x[t];
    proj[t] = static_cast<double>(load_f(wk, t)) + w.x[t];
  }
  *dist_out = std::sqrt(xx);
  *iters_out = it;
  *status_out = status;
}

template <typename T>
void solve_impl(const TensorView& W, const TensorView& classes, const TensorView& cand,
                double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status) {
  const int64_t B = classes.size(0), n = cand.size(1), d = W.size(1), s_out = support.size(1);
  const T* Wp = W.data<T>();
  const int64_t* cl = classes.data<int64_t>();
  const int64_t* cp = cand.data<int64_t>();
#pragma omp parallel
  {
    Work w;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      solve_one<T>(Wp, W.stride(0), d, cl[b * classes.stride(0)], cp + b * cand.stride(0), n, gap_tol,
                   max_iter, w, proj.data<double>() + b * proj.stride(0), dist.data<double>() + b,
                   support.data<int64_t>() + b * support.stride(0),
                   weights.data<double>() + b * weights.stride(0), s_out, iters.data<int64_t>() + b,
                   status.data<int64_t>() + b);
    }
  }
}

}  // namespace

void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx) {
  if (tile.size(0) == 0 || tile.size(1) == 0 || vals.size(1) == 0) return;
  if (tile.dtype == DType::F32) {
    topm_impl<float>(tile, row_ids, col0, vals, idx);
  } else if (tile.dtype == DType::F64) {
    topm_impl<double>(tile, row_ids, col0, vals, idx);
  } else {
    fail(std::string("tile: expected float32 or float64, got ") + dtype_name(tile.dtype));
  }
}

void hull_price_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                       const TensorView& thresh, const TensorView& best_val,
                       const TensorView& best_idx, const TensorView& viol_val,
                       const TensorView& viol_idx) {
  const int64_t R = tile.size(0), c = tile.size(1), q = viol_val.size(1);
  if (R == 0 || c == 0) return;
  const double* S = tile.data<double>();
  const int64_t* rid = row_ids.data<int64_t>();
  const double* th = thresh.data<double>();
  double* bv = best_val.data<double>();
  int64_t* bi = best_idx.data<int64_t>();
  double* vv = viol_val.data<double>();
  int64_t* vi = viol_idx.data<int64_t>();
  const int64_t ts = tile.stride(0), vvs = viol_val.stride(0), vis = viol_idx.stride(0);
#pragma omp parallel for schedule(static) if (R * c > 65536)
  for (int64_t r = 0; r < R; ++r) {
    const double* row = S + r * ts;
    const int64_t self = rid[r * row_ids.stride(0)];
    const double thr = th[r * thresh.stride(0)];
    double best = bv[r * best_val.stride(0)];
    int64_t besti = bi[r * best_idx.stride(0)];
    double* hv = vv + r * vvs;
    int64_t* hi = vi + r * vis;
    double root = q > 0 ? hv[0] : std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < c; ++j) {
      const double s = row[j];
      if (col0 + j == self) continue;
      if (s > best) { best = s; besti = col0 + j; }
      if (s > thr && s > root) {
        heap_replace_root(hv, hi, q, s, col0 + j);
        root = hv[0];
      }
    }
    bv[r * best_val.stride(0)] = best;
    bi[r * best_idx.stride(0)] = besti;
  }
}

void hull_solve(const TensorView& W, const TensorView& classes, const TensorView& cand,
                double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status) {
  if (classes.size(0) == 0) return;
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    solve_impl<T>(W, classes, cand, gap_tol, max_iter, proj, dist, support, weights, iters, status);
    return 0;
  });
}

}  // namespace cpu
}  // namespace gnc
