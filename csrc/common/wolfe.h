// Wolfe's min-norm-point algorithm (fp64), one implementation for the CPU and CUDA.
//
// Problem: the projection of w_k onto conv{w_j : j in candidates}, i.e. the point of
// the convex hull of y_j = w_j - w_k nearest the origin, given the Gram matrix
// G_ij = <y_i, y_j>. Wolfe's algorithm keeps a corral S (affinely independent points)
// with an incremental Cholesky factor L of M = [y_i.y_j + 1]_{i,j in S}: major cycles
// add the candidate minimising <x, y_j>; minor cycles take the affine minimiser of the
// corral and step back into the simplex when a weight turns non-positive, dropping the
// blocking point (Givens downdate of L, no refactorisation). A new point's pivot comes
// from the explicit residual of (y_j, 1) against the corral when the Gram difference
// would lose it (thin simplices), so pivots stay accurate below ~1e-8.
//
// Who runs it is a policy, the Team (wolfe_solve's first template argument):
//  * SerialTeam (below): one thread; the CPU runs one class per OpenMP task.
//  * the CUDA warp team (cuda/hull.cu): 32 lanes per class; the O(n) and O(d) loops and
//    the dot products of the triangular solves are split over the lanes, the O(s)
//    scalar bookkeeping is done identically by every lane, shared writes by lane 0.
// Team interface: kSerial (constexpr bool), rank(), size(), leader(), sync(),
// total(double) (sum of the members' partial sums, the same value in every member),
// count(int), any(bool), max(double), min_index(int64), argmin(double&, int64&) (the
// smallest value, ties to the smaller index, in every member).
// Reductions with a starting value (init - sum f(i), init + sum f(i)) run in index
// order on a serial team, so the CPU results are bit-for-bit those of a plain loop.
//
// The Problem policy gives the candidates: n (index space), d, valid(j) (padding and
// the class itself are invalid), id(j) (global class index), gram(i, j), wk(t) and
// wj(j, t) (coordinates as double). HullProblem below serves both devices.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/half.h"  // load_f

#if defined(__CUDACC__)
#define GNC_HOST_DEVICE __host__ __device__
#else
#define GNC_HOST_DEVICE
#endif

namespace gnc {
namespace wolfe {

// Outcome of one solve (the `status` output of hull_solve).
enum class Status : int64_t {
  kConverged = 0,     // the certified gap over the candidates is <= gap_tol (or rounding)
  kIterationCap = 1,  // max_iter reached first
  kDegenerate = 2,    // stopped on numerical degeneracy (affinely dependent entry, ...)
};

constexpr double kDegenerate = 1e-13;  // pivot floor relative to ||(y, 1)||: affine dependence
constexpr double kThin = 1e-4;         // below this relative Gram pivot, recompute it explicitly
constexpr double kPos = 1e-15;         // weights below this are treated as zero
constexpr double kEps = 2.220446049250313e-16;  // DBL_EPSILON

// std::max / std::min semantics (the first argument wins ties and NaN comparisons).
GNC_HOST_DEVICE inline double max_of(double a, double b) { return (a < b) ? b : a; }
GNC_HOST_DEVICE inline double min_of(double a, double b) { return (b < a) ? b : a; }

struct SerialTeam {
  static constexpr bool kSerial = true;
  GNC_HOST_DEVICE int rank() const { return 0; }
  GNC_HOST_DEVICE int size() const { return 1; }
  GNC_HOST_DEVICE bool leader() const { return true; }
  GNC_HOST_DEVICE void sync() const {}
  GNC_HOST_DEVICE double total(double v) const { return v; }
  GNC_HOST_DEVICE int count(int v) const { return v; }
  GNC_HOST_DEVICE bool any(bool v) const { return v; }
  GNC_HOST_DEVICE double max(double v) const { return v; }
  GNC_HOST_DEVICE int64_t min_index(int64_t v) const { return v; }
  GNC_HOST_DEVICE void argmin(double&, int64_t&) const {}
};

// init - sum_{i < count} f(i): in index order on a serial team, else partial sums per
// member and a team total.
template <class Team, class F>
GNC_HOST_DEVICE double sub_sum(const Team& tm, double init, int64_t count, F f) {
  if (Team::kSerial) {
    double t = init;
    for (int64_t i = 0; i < count; ++i) t -= f(i);
    return t;
  }
  double p = 0.0;
  for (int64_t i = tm.rank(); i < count; i += tm.size()) p += f(i);
  return init - tm.total(p);
}

// init + sum_{i < count} f(i), as sub_sum.
template <class Team, class F>
GNC_HOST_DEVICE double add_sum(const Team& tm, double init, int64_t count, F f) {
  if (Team::kSerial) {
    double t = init;
    for (int64_t i = 0; i < count; ++i) t += f(i);
    return t;
  }
  double p = 0.0;
  for (int64_t i = tm.rank(); i < count; i += tm.size()) p += f(i);
  return init + tm.total(p);
}

// The candidates of one class: rows ids[0..n) of W (invalid: < 0 or == k), Gram matrix
// gram[i * ldg + j] over the same index space.
template <typename T>
struct HullProblem {
  const T* W;
  int64_t ws0;  // row stride of W
  int64_t d;
  int64_t k;
  const int64_t* ids;
  int64_t n;
  const double* G;
  int64_t ldg;
  GNC_HOST_DEVICE bool valid(int64_t j) const { return ids[j] >= 0 && ids[j] != k; }
  GNC_HOST_DEVICE int64_t id(int64_t j) const { return ids[j]; }
  GNC_HOST_DEVICE double gram(int64_t i, int64_t j) const { return G[i * ldg + j]; }
  GNC_HOST_DEVICE double wk(int64_t t) const { return static_cast<double>(load_f(W + k * ws0, t)); }
  GNC_HOST_DEVICE double wj(int64_t j, int64_t t) const { return static_cast<double>(load_f(W + ids[j] * ws0, t)); }
};

// Scratch of one solve: g (n), L (ld x ld), lam, alpha, z, c (ld each), S (ld), with
// ld >= min(n, d + 1) + 1.
struct Scratch {
  double* g;
  double* L;
  double* lam;
  double* alpha;
  double* z;
  double* c;
  int64_t* S;
  int64_t ld;
};

// Warm start (optional, n_init = 0: none): a previous corral init_sup / init_wt.
struct WarmStart {
  const int64_t* sup;
  const double* wt;
  int64_t n;
};

// Outputs of one solve (see cpu/hull.h: hull_solve).
struct Output {
  double* proj;  // (d) p_k
  double* dist;
  int64_t* support;  // (s_out) -1 padded
  double* weights;
  int64_t s_out;
  int64_t* iters;
  int64_t* status;
};

// z = L^-1 b (lower-triangular, row stride ld); z may not alias b.
template <class Team>
GNC_HOST_DEVICE void fwd_solve(const Team& tm, const double* L, int64_t ld, int s, const double* b, double* z) {
  for (int i = 0; i < s; ++i) {
    const double* Li = L + i * ld;
    const double zi = sub_sum(tm, b[i], i, [&](int64_t k) { return Li[k] * z[k]; }) / Li[i];
    tm.sync();
    if (tm.leader()) z[i] = zi;
    tm.sync();
  }
}

// a = L^-T a (in place).
template <class Team>
GNC_HOST_DEVICE void bwd_solve(const Team& tm, const double* L, int64_t ld, int s, double* a) {
  for (int i = s - 1; i >= 0; --i) {
    const double ai = sub_sum(tm, a[i], s - i - 1, [&](int64_t q) { return L[(i + 1 + q) * ld + i] * a[i + 1 + q]; }) /
                      L[i * ld + i];
    tm.sync();
    if (tm.leader()) a[i] = ai;
    tm.sync();
  }
}

// Removes row p from the lower-triangular factor L (rows = corral points) and restores
// triangularity with Givens rotations of columns (L L^T is invariant under them):
// O(s^2), orthogonal, no re-factorisation.
template <class Team>
GNC_HOST_DEVICE void chol_remove(const Team& tm, double* L, int64_t ld, int s, int p) {
  for (int i = p; i < s - 1; ++i) {
    for (int k = tm.rank(); k <= i + 1; k += tm.size()) L[i * ld + k] = L[(i + 1) * ld + k];
    tm.sync();
  }
  for (int j = p; j < s - 1; ++j) {
    const double a = L[j * ld + j], b = L[j * ld + j + 1];
    const double r = hypot(a, b);
    tm.sync();
    if (r != 0.0) {
      const double c = a / r, sn = b / r;
      for (int i = j + tm.rank(); i < s - 1; i += tm.size()) {
        const double x = L[i * ld + j], y = L[i * ld + j + 1];
        L[i * ld + j] = c * x + sn * y;
        L[i * ld + j + 1] = -sn * x + c * y;
      }
      tm.sync();
      if (tm.leader()) L[j * ld + j + 1] = 0.0;
    }
    tm.sync();
  }
  for (int i = tm.rank(); i < s - 1; i += tm.size()) L[i * ld + s - 1] = 0.0;
  tm.sync();
}

// One min-norm-point problem. gap_tol: stop when (||x||^2 - min_j <x, y_j>) <=
// max(gap_tol * ||x||, rounding floor), i.e. the certified gap restricted to the
// candidates is <= gap_tol (up to fp64 rounding).
template <class Team, class Problem>
GNC_HOST_DEVICE void solve(const Team& tm, const Problem& P, const WarmStart& warm_start, double gap_tol,
                           int64_t max_iter, const Scratch& w, const Output& out) {
  const int64_t n = P.n, d = P.d, ld = w.ld;
  double* L = w.L;
  double* lam = w.lam;
  int64_t* S = w.S;
  for (int64_t i = tm.rank(); i < out.s_out; i += tm.size()) {
    out.support[i] = -1;
    out.weights[i] = 0.0;
  }
  int nv = 0;
  for (int64_t j = tm.rank(); j < n; j += tm.size()) nv += P.valid(j) ? 1 : 0;
  const int64_t nvalid = tm.count(nv);
  if (nvalid == 0) {  // no candidate: cannot happen for K >= 2 with valid input
    if (tm.leader()) {
      *out.status = static_cast<int64_t>(Status::kDegenerate);
      *out.iters = 0;
      *out.dist = NAN;
    }
    for (int64_t t = tm.rank(); t < d; t += tm.size()) out.proj[t] = NAN;
    return;
  }
  const int smax = static_cast<int>(nvalid < d + 1 ? nvalid : d + 1);
  for (int64_t i = tm.rank(); i < ld * ld; i += tm.size()) L[i] = 0.0;
  for (int64_t i = tm.rank(); i < ld; i += tm.size()) lam[i] = 0.0;
  tm.sync();
  int s = 0;  // corral size (the same in every member)

  // Appends candidate jm to the corral's factor. The new row of L comes from the Gram
  // matrix; its pivot is the norm of the explicit residual of (y_jm, 1) against the
  // span of the corral's (y_i, 1) when the Gram difference would lose it. False if
  // affinely dependent.
  auto append = [&](int64_t jm) -> bool {
    double* Ls = L + s * ld;
    for (int i = tm.rank(); i < s; i += tm.size()) w.z[i] = P.gram(S[i], jm) + 1.0;
    tm.sync();
    fwd_solve(tm, L, ld, s, w.z, Ls);
    const double scale = P.gram(jm, jm) + 1.0;
    double d2 = sub_sum(tm, scale, s, [&](int64_t i) { return Ls[i] * Ls[i]; });
    if (!(d2 > kThin * scale)) {  // thin: the Gram pivot is inaccurate; recompute it explicitly
      for (int i = tm.rank(); i < s; i += tm.size()) w.c[i] = Ls[i];
      tm.sync();
      bwd_solve(tm, L, ld, s, w.c);  // c = M^-1 r: least-squares coefficients
      const double e1 = sub_sum(tm, 1.0, s, [&](int64_t i) { return w.c[i]; });
      d2 = add_sum(tm, e1 * e1, d, [&](int64_t t) {
        const double wkt = P.wk(t);
        double v = P.wj(jm, t) - wkt;
        for (int i = 0; i < s; ++i) v -= w.c[i] * (P.wj(S[i], t) - wkt);
        return v * v;
      });
      if (!(d2 > kDegenerate * kDegenerate * scale)) return false;
    }
    tm.sync();
    if (tm.leader()) {
      Ls[s] = sqrt(d2);
      S[s] = jm;
      lam[s] = 0.0;
    }
    ++s;
    tm.sync();
    return true;
  };

  // warm start from a previous corral (its points are among the candidates)
  bool warm = false;
  if (warm_start.n > 0) {
    double lsum = 0.0;
    for (int64_t a = 0; a < warm_start.n && s < smax; ++a) {
      const int64_t id = warm_start.sup[a];
      const double wa = warm_start.wt[a];
      if (id < 0 || !(wa > 0)) continue;
      int64_t found = n;
      for (int64_t j = tm.rank(); j < n; j += tm.size())
        if (P.valid(j) && P.id(j) == id && j < found) found = j;
      found = tm.min_index(found);
      if (found >= n) continue;
      bool dup = false;
      for (int i = 0; i < s; ++i) dup = dup || S[i] == found;
      if (dup) continue;
      const int at = s;
      if (append(found)) {
        if (tm.leader()) lam[at] = wa;
        lsum += wa;
      }
      tm.sync();
    }
    if (s > 0 && lsum > 0) {
      for (int i = tm.rank(); i < s; i += tm.size()) lam[i] /= lsum;
      warm = true;
    } else {
      s = 0;
    }
    tm.sync();
  }
  if (!warm) {  // start from the nearest candidate (smallest ||y||)
    double bv = INFINITY;
    int64_t bj = n;
    for (int64_t j = tm.rank(); j < n; j += tm.size())
      if (P.valid(j) && P.gram(j, j) < bv) { bv = P.gram(j, j); bj = j; }
    tm.argmin(bv, bj);
    if (bj >= n) {  // no diagonal compares below infinity: take the first valid candidate
      for (int64_t j = tm.rank(); j < n; j += tm.size())
        if (P.valid(j) && j < bj) bj = j;
      bj = tm.min_index(bj);
    }
    if (tm.leader()) {
      S[0] = bj;
      lam[0] = 1.0;
      L[0] = sqrt(P.gram(bj, bj) + 1.0);
    }
    s = 1;
    tm.sync();
  }
  double ym = 0.0;
  for (int64_t j = tm.rank(); j < n; j += tm.size())
    if (P.valid(j)) ym = max_of(ym, P.gram(j, j));
  const double ymax = tm.max(ym);
  const double round_floor = (16.0 * sqrt(static_cast<double>(d)) + 16.0) * kEps * sqrt(max_of(ymax, 1e-300));
  int64_t it = 0;
  Status status = Status::kIterationCap;
  while (it < max_iter) {
    ++it;
    // g = G[:, S] lam (g_j = <x, y_j>) and its argmin over the candidates
    double bv = INFINITY;
    int64_t bj = n;
    for (int64_t j = tm.rank(); j < n; j += tm.size()) {
      double acc = 0.0;
      for (int i = 0; i < s; ++i) acc += lam[i] * P.gram(S[i], j);
      w.g[j] = acc;
      if (P.valid(j) && acc < bv) { bv = acc; bj = j; }
    }
    tm.argmin(bv, bj);
    tm.sync();
    const double xx = add_sum(tm, 0.0, s, [&](int64_t i) { return lam[i] * w.g[S[i]]; });  // ||x||^2
    if (!(xx > 0.0)) { status = Status::kConverged; break; }
    const double xn = sqrt(xx);
    if (xx - bv <= max_of(0.5 * gap_tol * xn, round_floor * xn)) { status = Status::kConverged; break; }
    bool in = false;
    for (int i = tm.rank(); i < s; i += tm.size()) in = in || S[i] == bj;
    if (tm.any(in)) { status = Status::kDegenerate; break; }
    if (s >= smax) { status = Status::kDegenerate; break; }
    if (!append(bj)) { status = Status::kDegenerate; break; }
    bool degenerate = false;
    // minor cycles: affine minimiser of the corral; step back into the simplex if needed
    for (;;) {
      for (int i = tm.rank(); i < s; i += tm.size()) w.z[i] = 1.0;
      tm.sync();
      fwd_solve(tm, L, ld, s, w.z, w.alpha);
      bwd_solve(tm, L, ld, s, w.alpha);
      const double sum = add_sum(tm, 0.0, s, [&](int64_t i) { return w.alpha[i]; });
      tm.sync();
      for (int i = tm.rank(); i < s; i += tm.size()) w.alpha[i] /= sum;
      tm.sync();
      bool nonpos = false;
      for (int i = tm.rank(); i < s; i += tm.size()) nonpos = nonpos || !(w.alpha[i] > kPos);
      if (!tm.any(nonpos)) {
        for (int i = tm.rank(); i < s; i += tm.size()) lam[i] = w.alpha[i];
        tm.sync();
        break;
      }
      // theta and the blocking index: scalar work, every member computes the same values
      double theta = 1.0;
      int arg = -1;
      for (int i = 0; i < s; ++i) {
        if (!(w.alpha[i] > kPos)) {
          const double den = lam[i] - w.alpha[i];
          const double th = den > 0 ? lam[i] / den : 0.0;
          if (th < theta || arg < 0) { theta = th; arg = i; }
        }
      }
      theta = min_of(1.0, max_of(0.0, theta));
      tm.sync();
      for (int i = tm.rank(); i < s; i += tm.size()) lam[i] += theta * (w.alpha[i] - lam[i]);
      tm.sync();
      if (tm.leader()) lam[arg] = 0.0;
      tm.sync();
      if (arg == s - 1 && theta == 0.0) degenerate = true;  // the new point cannot enter
      // drop every point whose weight vanished (downdating the factor)
      for (int i = s - 1; i >= 0; --i) {
        if (!(lam[i] > kPos)) {
          chol_remove(tm, L, ld, s, i);
          if (tm.leader())
            for (int q = i; q < s - 1; ++q) {
              S[q] = S[q + 1];
              lam[q] = lam[q + 1];
            }
          --s;
          tm.sync();
        }
      }
      const double ls = add_sum(tm, 0.0, s, [&](int64_t i) { return lam[i]; });
      tm.sync();
      for (int i = tm.rank(); i < s; i += tm.size()) lam[i] /= ls;
      tm.sync();
      if (degenerate || s == 0) { degenerate = true; break; }
      ++it;
      if (it >= max_iter) break;
    }
    if (degenerate) { status = Status::kDegenerate; break; }
  }
  // final point x = sum lam_i y_i from the (renormalised, non-negative) weights
  const double ls = add_sum(tm, 0.0, s, [&](int64_t i) { return max_of(0.0, lam[i]); });
  const double xx = add_sum(tm, 0.0, d, [&](int64_t t) {
    const double wkt = P.wk(t);
    double x = 0.0;
    for (int i = 0; i < s; ++i) {
      const double l = max_of(0.0, lam[i]) / ls;
      if (l > 0.0) x += l * (P.wj(S[i], t) - wkt);
    }
    out.proj[t] = wkt + x;
    return x * x;
  });
  if (tm.leader()) {
    int64_t o = 0;
    for (int i = 0; i < s && o < out.s_out; ++i) {
      const double l = max_of(0.0, lam[i]) / ls;
      if (l <= 0.0) continue;
      out.support[o] = P.id(S[i]);
      out.weights[o] = l;
      ++o;
    }
    *out.dist = sqrt(xx);
    *out.iters = it;
    *out.status = static_cast<int64_t>(status);
  }
}

}  // namespace wolfe
}  // namespace gnc
