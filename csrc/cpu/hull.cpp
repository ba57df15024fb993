// [hull] CPU implementation (the executable specification for cuda/hull.cu).
#include "cpu/hull.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "common/heap.h"
#include "common/wolfe.h"

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

// ---- Wolfe's min-norm-point algorithm (fp64): common/wolfe.h, run serially ----------
struct Work {
  std::vector<double> G, Y, g, L, lam, alpha, z, c, wkd;
  std::vector<int64_t> cidx, pos, S;  // cidx: global class index of candidate i
};

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
  // compact Gram matrix of the valid candidates (n x n)
  w.G.resize(static_cast<size_t>(n * n));
  if (n > 0 && gram != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) w.G[i * n + j] = gram[w.pos[i] * ncand + w.pos[j]];
  } else if (n > 0) {  // form it here: y_i = w_i - w_k in a cache-resident buffer, then dot products
    const T* wk = W + k * ws0;
    w.wkd.resize(static_cast<size_t>(d));
    for (int64_t t = 0; t < d; ++t) w.wkd[t] = static_cast<double>(load_f(wk, t));
    const int64_t n4 = (n + 3) / 4 * 4;  // rows padded with zeros to a multiple of 4
    w.Y.assign(static_cast<size_t>(n4 * d), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const T* wj = W + w.cidx[i] * ws0;
      double* y = w.Y.data() + i * d;
      for (int64_t t = 0; t < d; ++t) y[t] = static_cast<double>(load_f(wj, t)) - w.wkd[t];
    }
    gram_4x4(w.Y.data(), n, n4, d, w.G.data());
  }
  const int64_t smax = std::min<int64_t>(n, d + 1);
  const int64_t ld = smax + 1;
  w.L.resize(static_cast<size_t>(ld * ld));
  for (auto* v : {&w.lam, &w.alpha, &w.z, &w.c}) v->resize(static_cast<size_t>(ld));
  w.S.resize(static_cast<size_t>(ld));
  w.g.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  const wolfe::HullProblem<T> prob{W, ws0, d, k, w.cidx.data(), n, w.G.data(), n};
  const wolfe::Scratch scratch{w.g.data(), w.L.data(), w.lam.data(), w.alpha.data(), w.z.data(), w.c.data(),
                               w.S.data(), ld};
  const wolfe::Output out{proj, dist_out, sup_out, wt_out, s_out, iters_out, status_out};
  wolfe::solve(wolfe::SerialTeam{}, prob, wolfe::WarmStart{init_sup, init_wt, n_init}, gap_tol, max_iter, scratch,
               out);
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
