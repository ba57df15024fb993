// [hull] CPU implementation (the executable specification for cuda/hull.cu).
#include "cpu/hull.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/heap.h"
#include "common/dispatch.h"

#ifdef GNC_WITH_OPENMP
#include <omp.h>
#endif

namespace gnc {
namespace cpu {

namespace {

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
  std::vector<double> G, Y, x, g, L, lam, alpha, z, c, e, wkd;
  std::vector<int64_t> cidx, pos;  // global class index of candidate i
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

constexpr double kDegenerate = 1e-13;  // pivot floor relative to ||(y, 1)||: affine dependence
constexpr double kThin = 1e-4;         // below this relative Gram pivot, recompute it explicitly
constexpr double kPos = 1e-15;         // weights below this are treated as zero

// Removes row p from the lower-triangular Cholesky factor L (rows = corral points,
// M = L L^T = [y_i.y_j + 1]) and restores triangularity with Givens rotations of
// columns (L L^T is invariant under them): O(s^2), orthogonal, no re-factorisation.
inline void chol_remove(double* L, int64_t ld, int s, int p) {
  for (int i = p; i < s - 1; ++i)
    for (int k = 0; k <= i + 1; ++k) L[i * ld + k] = L[(i + 1) * ld + k];
  for (int j = p; j < s - 1; ++j) {
    const double a = L[j * ld + j], b = L[j * ld + j + 1];
    const double r = std::hypot(a, b);
    if (r == 0.0) continue;
    const double c = a / r, sn = b / r;
    for (int i = j; i < s - 1; ++i) {
      const double x = L[i * ld + j], y = L[i * ld + j + 1];
      L[i * ld + j] = c * x + sn * y;
      L[i * ld + j + 1] = -sn * x + c * y;
    }
    L[j * ld + j + 1] = 0.0;
  }
  for (int i = 0; i < s - 1; ++i) L[i * ld + s - 1] = 0.0;
}

// G = Y Y^T for the first n of n4 (multiple of 4, zero-padded) rows of Y (row length d),
// in 4 x 4 register blocks (16 accumulators: 8 loads feed 16 multiply-adds), lower
// blocks only, mirrored.
inline void gram_4x4(const double* Y, int64_t n, int64_t n4, int64_t d, double* G) {
  for (int64_t I = 0; I < n4; I += 4) {
    const double *a0 = Y + I * d, *a1 = a0 + d, *a2 = a1 + d, *a3 = a2 + d;
    for (int64_t J = 0; J <= I; J += 4) {
      const double *b0 = Y + J * d, *b1 = b0 + d, *b2 = b1 + d, *b3 = b2 + d;
      double s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      double s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
      for (int64_t t = 0; t < d; ++t) {
        const double x0 = a0[t], x1 = a1[t], x2 = a2[t], x3 = a3[t];
        const double y0 = b0[t], y1 = b1[t], y2 = b2[t], y3 = b3[t];
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
      }
      const double blk[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}, {s20, s21, s22, s23}, {s30, s31, s32, s33}};
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          const int64_t i = I + a, j = J + b;
          if (i < n && j < n) {
            G[i * n + j] = blk[a][b];
            G[j * n + i] = blk[a][b];
          }
        }
    }
  }
}

template <typename T>
void solve_one(const T* W, int64_t ws0, int64_t d, int64_t k, const int64_t* cand, int64_t ncand,
               const double* gram, const int64_t* init_sup, const double* init_wt, int64_t n_init, double gap_tol,
               int64_t max_iter, Work& w, double* proj, double* dist_out, int64_t* sup_out,
               double* wt_out, int64_t s_out, int64_t* iters_out, int64_t* status_out) {
  // valid candidate positions (the Gram matrix is indexed by position in cand)
  w.cidx.clear();
  w.pos.clear();
  for (int64_t i = 0; i < ncand; ++i) {
    const int64_t j = cand[i];
    if (j < 0 || j == k) continue;
    w.cidx.push_back(j);
    w.pos.push_back(i);
  }
  const int64_t n = static_cast<int64_t>(w.cidx.size());
  const T* wk = W + k * ws0;
  for (int64_t i = 0; i < s_out; ++i) { sup_out[i] = -1; wt_out[i] = 0.0; }
  if (n == 0) {  // no candidate: cannot happen for K >= 2 with valid input
    *status_out = 2;
    *iters_out = 0;
    *dist_out = std::numeric_limits<double>::quiet_NaN();
    for (int64_t t = 0; t < d; ++t) proj[t] = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  w.x.assign(static_cast<size_t>(d), 0.0);
  w.wkd.resize(static_cast<size_t>(d));
  for (int64_t t = 0; t < d; ++t) w.wkd[t] = static_cast<double>(load_f(wk, t));
  // compact Gram matrix of the valid candidates (n x n)
  w.G.resize(static_cast<size_t>(n * n));
  if (gram != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) w.G[i * n + j] = gram[w.pos[i] * ncand + w.pos[j]];
  } else {  // form it here: y_i = w_i - w_k in a cache-resident buffer, then dot products
    const int64_t n4 = (n + 3) / 4 * 4;  // rows padded with zeros to a multiple of 4
    w.Y.assign(static_cast<size_t>(n4 * d), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const T* wj = W + w.cidx[i] * ws0;
      double* y = w.Y.data() + i * d;
      for (int64_t t = 0; t < d; ++t) y[t] = static_cast<double>(load_f(wj, t)) - w.wkd[t];
    }
    gram_4x4(w.Y.data(), n, n4, d, w.G.data());
  }
  double ymax = 0.0;
  for (int64_t i = 0; i < n; ++i) ymax = std::max(ymax, w.G[i * n + i]);
  const int smax = static_cast<int>(std::min<int64_t>(n, d + 1));
  const int64_t ld = smax + 1;
  w.L.assign(static_cast<size_t>(ld * ld), 0.0);
  w.lam.assign(static_cast<size_t>(ld), 0.0);
  w.alpha.assign(static_cast<size_t>(ld), 0.0);
  w.z.assign(static_cast<size_t>(ld), 0.0);
  w.c.assign(static_cast<size_t>(ld), 0.0);
  w.e.resize(static_cast<size_t>(d));
  w.g.resize(static_cast<size_t>(n));
  w.S.clear();
  // Appends candidate jm to the corral's factor. The new row of L comes from the Gram
  // matrix; its pivot is the norm of the explicit residual of (y_jm, 1) against the
  // span of the corral's (y_i, 1), so thin simplices keep an accurate pivot (a
  // difference of Gram entries would lose it below ~1e-8). False if affinely dependent.
  auto append = [&](int64_t jm) -> bool {
    const int s = static_cast<int>(w.S.size());
    double* Ls = w.L.data() + s * ld;
    for (int i = 0; i < s; ++i) w.z[i] = w.G[static_cast<int64_t>(w.S[i]) * n + jm] + 1.0;
    fwd_solve(w.L.data(), ld, s, w.z.data(), Ls);
    const double scale = w.G[jm * n + jm] + 1.0;
    double d2 = scale;
    for (int i = 0; i < s; ++i) d2 -= Ls[i] * Ls[i];
    if (d2 > kThin * scale) {  // well separated: the Gram pivot is accurate (rel. err <= eps/kThin)
      Ls[s] = std::sqrt(d2);
      w.S.push_back(static_cast<int>(jm));
      w.lam[s] = 0.0;
      return true;
    }
    for (int i = 0; i < s; ++i) w.c[i] = Ls[i];
    bwd_solve(w.L.data(), ld, s, w.c.data());  // c = M^-1 r: least-squares coefficients
    const T* wj = W + w.cidx[jm] * ws0;
    double e1 = 1.0;
    for (int i = 0; i < s; ++i) e1 -= w.c[i];
    for (int64_t t = 0; t < d; ++t) w.e[t] = static_cast<double>(load_f(wj, t)) - w.wkd[t];
    for (int i = 0; i < s; ++i) {
      const T* wi = W + w.cidx[w.S[i]] * ws0;
      const double ci = w.c[i];
      for (int64_t t = 0; t < d; ++t) w.e[t] -= ci * (static_cast<double>(load_f(wi, t)) - w.wkd[t]);
    }
    double piv2 = e1 * e1;
    for (int64_t t = 0; t < d; ++t) piv2 += w.e[t] * w.e[t];
    if (!(piv2 > kDegenerate * kDegenerate * scale)) return false;
    Ls[s] = std::sqrt(piv2);
    w.S.push_back(static_cast<int>(jm));
    w.lam[s] = 0.0;
    return true;
  };
  // warm start from a previous corral (its points are among the candidates)
  bool warm = false;
  if (n_init > 0) {
    double ls = 0.0;
    for (int64_t a = 0; a < n_init && static_cast<int>(w.S.size()) < smax; ++a) {
      if (init_sup[a] < 0 || !(init_wt[a] > 0)) continue;
      for (int64_t i = 0; i < n; ++i)
        if (w.cidx[i] == init_sup[a]) {
          if (std::find(w.S.begin(), w.S.end(), static_cast<int>(i)) == w.S.end()) {
            const size_t at = w.S.size();
            if (append(i)) {
              w.lam[at] = init_wt[a];
              ls += init_wt[a];
            }
          }
          break;
        }
    }
    if (!w.S.empty() && ls > 0) {
      for (size_t i = 0; i < w.S.size(); ++i) w.lam[i] /= ls;
      warm = true;
    } else {
      w.S.clear();
    }
  }
  if (!warm) {  // start from the nearest candidate (smallest ||y||)
    int64_t j0 = 0;
    for (int64_t i = 1; i < n; ++i)
      if (w.G[i * n + i] < w.G[j0 * n + j0]) j0 = i;
    w.S.push_back(static_cast<int>(j0));
    w.lam[0] = 1.0;
    w.L[0] = std::sqrt(w.G[j0 * n + j0] + 1.0);
  }
  const double round_floor = (16.0 * std::sqrt(static_cast<double>(d)) + 16.0) *
                             std::numeric_limits<double>::epsilon() * std::sqrt(std::max(ymax, 1e-300));
  int64_t it = 0;
  int64_t status = 1;
  while (it < max_iter) {
    ++it;
    // g = G[:, S] lam  (g_j = <x, y_j>),  xx = lam^T G_SS lam
    std::fill(w.g.begin(), w.g.end(), 0.0);
    for (size_t i = 0; i < w.S.size(); ++i) {
      const double l = w.lam[i];
      const double* Gi = w.G.data() + static_cast<int64_t>(w.S[i]) * n;
      double* g = w.g.data();
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] += l * Gi[j];
    }
    double xx = 0.0;
    for (size_t i = 0; i < w.S.size(); ++i) xx += w.lam[i] * w.g[w.S[i]];
    if (!(xx > 0.0)) { status = 0; break; }
    const double xn = std::sqrt(xx);
    int64_t jm = 0;
    double gm = w.g[0];
    for (int64_t i = 1; i < n; ++i)
      if (w.g[i] < gm) { gm = w.g[i]; jm = i; }
    if (xx - gm <= std::max(0.5 * gap_tol * xn, round_floor * xn)) { status = 0; break; }
    if (std::find(w.S.begin(), w.S.end(), static_cast<int>(jm)) != w.S.end()) { status = 2; break; }
    if (static_cast<int>(w.S.size()) >= smax) { status = 2; break; }
    if (!append(jm)) { status = 2; break; }
    bool degenerate = false;
    // minor cycles: affine minimiser of the corral; step back into the simplex if needed
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
      if (arg == sc - 1 && theta == 0.0) degenerate = true;  // the new point cannot enter
      // drop every point whose weight vanished (downdating the factor)
      for (int i = sc - 1; i >= 0; --i) {
        if (!(w.lam[i] > kPos)) {
          const int cur = static_cast<int>(w.S.size());
          chol_remove(w.L.data(), ld, cur, i);
          w.S.erase(w.S.begin() + i);
          for (int q = i; q < cur - 1; ++q) w.lam[q] = w.lam[q + 1];
        }
      }
      const int o = static_cast<int>(w.S.size());
      double ls = 0.0;
      for (int i = 0; i < o; ++i) ls += w.lam[i];
      for (int i = 0; i < o; ++i) w.lam[i] /= ls;
      if (degenerate || o == 0) { degenerate = true; break; }
      ++it;
      if (it >= max_iter) break;
    }
    if (degenerate) { status = 2; break; }
  }
  // final point x = sum lam_i y_i from the (renormalised, non-negative) weights
  double ls = 0.0;
  for (size_t i = 0; i < w.S.size(); ++i) ls += std::max(0.0, w.lam[i]);
  std::fill(w.x.begin(), w.x.end(), 0.0);
  int o = 0;
  for (size_t i = 0; i < w.S.size(); ++i) {
    const double l = std::max(0.0, w.lam[i]) / ls;
    if (l <= 0.0) continue;
    const T* wj = W + w.cidx[w.S[i]] * ws0;
    for (int64_t t = 0; t < d; ++t) w.x[t] += l * (static_cast<double>(load_f(wj, t)) - w.wkd[t]);
    if (o < s_out) {
      sup_out[o] = w.cidx[w.S[i]];
      wt_out[o] = l;
      ++o;
    }
  }
  double xx = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    xx += w.x[t] * w.x[t];
    proj[t] = w.wkd[t] + w.x[t];
  }
  *dist_out = std::sqrt(xx);
  *iters_out = it;
  *status_out = status;
}

template <typename T>
void solve_impl(const TensorView& W, const TensorView& classes, const TensorView& cand,
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status) {
  const int64_t B = classes.size(0), n = cand.size(1), d = W.size(1), s_out = support.size(1);
  const T* Wp = W.data<T>();
  const int64_t* cl = classes.data<int64_t>();
  const int64_t* cp = cand.data<int64_t>();
  const int64_t n_init = init_sup.numel() > 0 ? init_sup.size(1) : 0;
#pragma omp parallel
  {
    Work w;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* is = n_init ? init_sup.data<int64_t>() + b * init_sup.stride(0) : nullptr;
      const double* iw = n_init ? init_wt.data<double>() + b * init_wt.stride(0) : nullptr;
      const double* gb = gram.numel() > 0 ? gram.data<double>() + b * gram.stride(0) : nullptr;
      solve_one<T>(Wp, W.stride(0), d, cl[b * classes.stride(0)], cp + b * cand.stride(0), n, gb, is, iw, n_init,
                   gap_tol,
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
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status) {
  if (classes.size(0) == 0) return;
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    solve_impl<T>(W, classes, cand, gram, init_sup, init_wt, gap_tol, max_iter, proj, dist, support, weights, iters, status);
    return 0;
  });
}

}  // namespace cpu
}  // namespace gnc
