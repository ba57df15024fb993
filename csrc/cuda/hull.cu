// [hull] CUDA twin of cpu/hull.cpp. Same algorithms and contracts:
//  * hull_topm_update: one warp per tile row; lanes scan columns, candidates above the
//    row's current heap minimum are found with a warp ballot and inserted by lane 0
//    into the row's min-heap (kept in global memory, vals/idx).
//  * hull_price_update: one warp per row; per-lane max/argmax reduced with shuffles,
//    violators above thresh inserted into the row's top-q heap as above.
//  * hull_solve: Wolfe's min-norm-point algorithm in fp64, one warp per class, on the
//    caller's Gram matrices; lanes parallelise the O(n) and O(d) loops and the dot
//    products of the triangular solves, lane 0 runs the O(s) scalar bookkeeping. The
//    corral's Cholesky factor, weights and scratch live in a caller-allocated fp64
//    workspace (hull_ws_doubles(n, d) words per class; see ops/hull.py).
// The similarity tiles themselves come from torch's cuBLAS GEMM per block of classes
// (the chunked engine), so these kernels are the epilogues and the batched QP.
// Run on an H200 (2026-11-30): CUDA == CPU tests pass; K = 100,000, d = 512 in 5.5 s.
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/heap.h"
#include "common/dispatch.h"
#include "cuda/common.cuh"
#include "cuda/hull.h"

namespace gnc {
namespace cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;
constexpr double kDegenerate = 1e-13;
constexpr double kThin = 1e-4;
constexpr double kPos = 1e-15;

template <typename V>
__device__ __forceinline__ V neg_inf() { return -std::numeric_limits<V>::infinity(); }

template <typename V>
__global__ void topm_kernel(const V* __restrict__ tile, int64_t ts, const int64_t* __restrict__ rid,
                            int64_t rs, int64_t R, int64_t c, int64_t col0, V* vals, int64_t vs,
                            int64_t* idx, int64_t is, int64_t m) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;
  const V* row = tile + r * ts;
  V* hv = vals + r * vs;
  int64_t* hi = idx + r * is;
  const int64_t self = rid[r * rs];
  V root = hv[0];
  for (int64_t j0 = 0; j0 < c; j0 += 32) {
    const int64_t j = j0 + lane;
    const V v = j < c ? row[j] : neg_inf<V>();
    const bool pred = j < c && v > root && (col0 + j) != self;
    unsigned mask = __ballot_sync(kFull, pred);
    while (mask) {
      const int src = __ffs(mask) - 1;
      const V vv = __shfl_sync(kFull, v, src);
      const long long jj = __shfl_sync(kFull, static_cast<long long>(col0 + j), src);
      if (lane == 0 && vv > hv[0]) heap_replace_root(hv, hi, m, vv, static_cast<int64_t>(jj));
      __syncwarp();
      root = hv[0];
      mask &= mask - 1;
      mask &= __ballot_sync(kFull, pred && v > root);
    }
  }
}

__global__ void price_kernel(const double* __restrict__ tile, int64_t ts, const int64_t* __restrict__ rid,
                             int64_t rs, int64_t R, int64_t c, int64_t col0, const double* __restrict__ thresh,
                             int64_t ths, double* best_val, int64_t bvs, int64_t* best_idx, int64_t bis,
                             double* viol_val, int64_t vvs, int64_t* viol_idx, int64_t vis, int64_t q) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;
  const double* row = tile + r * ts;
  const int64_t self = rid[r * rs];
  const double thr = thresh[r * ths];
  double* hv = viol_val + r * vvs;
  int64_t* hi = viol_idx + r * vis;
  double best = neg_inf<double>();
  long long besti = -1;
  double root = hv[0];
  for (int64_t j0 = 0; j0 < c; j0 += 32) {
    const int64_t j = j0 + lane;
    const bool ok = j < c && (col0 + j) != self;
    const double v = ok ? row[j] : neg_inf<double>();
    if (ok && v > best) { best = v; besti = col0 + j; }
    const bool pred = ok && v > thr && v > root;
    unsigned mask = __ballot_sync(kFull, pred);
    while (mask) {
      const int src = __ffs(mask) - 1;
      const double vv = __shfl_sync(kFull, v, src);
      const long long jj = __shfl_sync(kFull, static_cast<long long>(col0 + j), src);
      if (lane == 0 && vv > hv[0]) heap_replace_root(hv, hi, q, vv, static_cast<int64_t>(jj));
      __syncwarp();
      root = hv[0];
      mask &= mask - 1;
      mask &= __ballot_sync(kFull, pred && v > root);
    }
  }
  // warp max/argmax (ties: smaller index), merged with the running value
  for (int o = 16; o > 0; o >>= 1) {
    const double ob = __shfl_xor_sync(kFull, best, o);
    const long long oi = __shfl_xor_sync(kFull, besti, o);
    if (ob > best || (ob == best && oi >= 0 && (besti < 0 || oi < besti))) { best = ob; besti = oi; }
  }
  if (lane == 0 && best > best_val[r * bvs]) {
    best_val[r * bvs] = best;
    best_idx[r * bis] = besti;
  }
}

// Warp sum, broadcast from lane 0: butterfly sums may differ in the last bit between
// lanes, and every lane must take the same branches afterwards.
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return __shfl_sync(kFull, v, 0);
}

// z = L^-1 b (lower-triangular, row stride ld); all lanes help with the dot products.
__device__ void w_fwd_solve(const double* L, int64_t ld, int s, const double* b, double* z, int lane) {
  for (int i = 0; i < s; ++i) {
    double t = 0.0;
    for (int k = lane; k < i; k += 32) t += L[i * ld + k] * z[k];
    t = warp_sum_d(t);
    const double zi = (b[i] - t) / L[i * ld + i];
    __syncwarp();
    if (lane == 0) z[i] = zi;
    __syncwarp();
  }
}
// a = L^-T a (in place).
__device__ void w_bwd_solve(const double* L, int64_t ld, int s, double* a, int lane) {
  for (int i = s - 1; i >= 0; --i) {
    double t = 0.0;
    for (int k = i + 1 + lane; k < s; k += 32) t += L[k * ld + i] * a[k];
    t = warp_sum_d(t);
    const double ai = (a[i] - t) / L[i * ld + i];
    __syncwarp();
    if (lane == 0) a[i] = ai;
    __syncwarp();
  }
}

// Row p removed from L, triangularity restored by Givens rotations of column pairs.
__device__ void w_chol_remove(double* L, int64_t ld, int s, int p, int lane) {
  for (int i = p; i < s - 1; ++i) {
    for (int k = lane; k <= i + 1; k += 32) L[i * ld + k] = L[(i + 1) * ld + k];
    __syncwarp();
  }
  for (int j = p; j < s - 1; ++j) {
    const double a = L[j * ld + j], b = L[j * ld + j + 1];
    const double r = hypot(a, b);
    __syncwarp();
    if (r != 0.0) {
      const double c = a / r, sn = b / r;
      for (int i = j + lane; i < s - 1; i += 32) {
        const double x = L[i * ld + j], y = L[i * ld + j + 1];
        L[i * ld + j] = c * x + sn * y;
        L[i * ld + j + 1] = -sn * x + c * y;
      }
      __syncwarp();
      if (lane == 0) L[j * ld + j + 1] = 0.0;
    }
    __syncwarp();
  }
  for (int i = lane; i < s - 1; i += 32) L[i * ld + s - 1] = 0.0;
  __syncwarp();
}

__host__ __device__ inline int64_t ws_doubles(int64_t n, int64_t d) {
  const int64_t s = n < d + 1 ? n : d + 1;
  const int64_t ld = s + 1;
  return d + 2 * n + 2 * ld * ld + 4 * ld + 8;  // == ops/hull.py: solve_workspace_doubles
}

template <typename T>
__global__ void solve_kernel(const T* __restrict__ W, int64_t ws0, int64_t d, const int64_t* __restrict__ classes,
                             int64_t cls_s, const int64_t* __restrict__ cand, int64_t cand_s, int64_t n,
                             const double* __restrict__ gram, const int64_t* __restrict__ init_sup,
                             const double* __restrict__ init_wt, int64_t n_init, int64_t init_s, double gap_tol,
                             int64_t max_iter, double* proj, int64_t proj_s, double* dist, int64_t* sup_out,
                             double* wt_out, int64_t s_out, int64_t out_s, int64_t* iters_out,
                             int64_t* status_out, double* workspace, int64_t B) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const int64_t k = classes[b * cls_s];
  const int64_t* cb = cand + b * cand_s;
  const double* G = gram + b * n * n;
  const T* wk = W + k * ws0;
  const int smax = static_cast<int>(n < d + 1 ? n : d + 1);
  const int64_t ld = smax + 1;
  double* ws = workspace + b * ws_doubles(n, d);
  double* g = ws;
  double* L = g + n;
  double* lam = L + ld * ld;
  double* alpha = lam + ld;
  double* z = alpha + ld;
  double* cc = z + ld;
  int64_t* S = reinterpret_cast<int64_t*>(cc + ld);
  int s = 0;  // corral size (identical in every lane)
  for (int64_t i = lane; i < ld * ld; i += 32) L[i] = 0.0;
  for (int64_t i = lane; i < s_out; i += 32) {
    sup_out[b * out_s + i] = -1;
    wt_out[b * out_s + i] = 0.0;
  }
  __syncwarp();
  auto valid = [&](int64_t j) { return cb[j] >= 0 && cb[j] != k; };
  // count valid candidates
  int nvalid = 0;
  for (int64_t j = lane; j < n; j += 32) nvalid += valid(j) ? 1 : 0;
  for (int o = 16; o > 0; o >>= 1) nvalid += __shfl_xor_sync(kFull, nvalid, o);
  if (nvalid == 0) {
    if (lane == 0) {
      status_out[b] = 2;
      iters_out[b] = 0;
      dist[b] = nan("");
    }
    for (int64_t t = lane; t < d; t += 32) proj[b * proj_s + t] = nan("");
    return;
  }
  const int smax_eff = smax < nvalid ? smax : nvalid;
  // append candidate position jm to the corral (see the CPU twin for the numerics)
  auto append = [&](int64_t jm) -> bool {
    double* Ls = L + s * ld;
    for (int i = lane; i < s; i += 32) z[i] = G[S[i] * n + jm] + 1.0;
    __syncwarp();
    w_fwd_solve(L, ld, s, z, Ls, lane);
    const double scale = G[jm * n + jm] + 1.0;
    double t = 0.0;
    for (int i = lane; i < s; i += 32) t += Ls[i] * Ls[i];
    double d2 = scale - warp_sum_d(t);
    if (!(d2 > kThin * scale)) {
      for (int i = lane; i < s; i += 32) cc[i] = Ls[i];
      __syncwarp();
      w_bwd_solve(L, ld, s, cc, lane);
      double c1 = 0.0;
      for (int i = lane; i < s; i += 32) c1 += cc[i];
      const double e1 = 1.0 - warp_sum_d(c1);
      const T* wj = W + cb[jm] * ws0;
      double ss = 0.0;
      for (int64_t q = lane; q < d; q += 32) {
        const double wkq = static_cast<double>(load_f(wk, q));
        double v = static_cast<double>(load_f(wj, q)) - wkq;
        for (int i = 0; i < s; ++i) v -= cc[i] * (static_cast<double>(load_f(W + cb[S[i]] * ws0, q)) - wkq);
        ss += v * v;
      }
      d2 = e1 * e1 + warp_sum_d(ss);
      if (!(d2 > kDegenerate * kDegenerate * scale)) return false;
    }
    __syncwarp();
    if (lane == 0) {
      Ls[s] = sqrt(d2);
      S[s] = jm;
      lam[s] = 0.0;
    }
    ++s;
    __syncwarp();
    return true;
  };
  // warm start
  bool warm = false;
  if (n_init > 0) {
    double lsum = 0.0;
    for (int64_t a = 0; a < n_init && s < smax_eff; ++a) {
      const int64_t id = init_sup[b * init_s + a];
      const double wa = init_wt[b * init_s + a];
      if (id < 0 || !(wa > 0)) continue;
      int64_t found = n;
      for (int64_t j = lane; j < n; j += 32)
        if (cb[j] == id && valid(j)) found = j < found ? j : found;
      for (int o = 16; o > 0; o >>= 1) {
        const long long of = __shfl_xor_sync(kFull, static_cast<long long>(found), o);
        found = of < found ? of : found;
      }
      if (found >= n) continue;
      bool dup = false;
      for (int i = 0; i < s; ++i) dup = dup || S[i] == found;
      if (dup) continue;
      const int at = s;
      if (append(found)) {
        if (lane == 0) lam[at] = wa;
        lsum += wa;
      }
      __syncwarp();
    }
    if (s > 0 && lsum > 0) {
      for (int i = lane; i < s; i += 32) lam[i] /= lsum;
      warm = true;
    } else {
      s = 0;
    }
    __syncwarp();
  }
  if (!warm) {
    double bv = INFINITY;
    long long bj = n;
    for (int64_t j = lane; j < n; j += 32)
      if (valid(j) && G[j * n + j] < bv) { bv = G[j * n + j]; bj = j; }
    for (int o = 16; o > 0; o >>= 1) {
      const double ov = __shfl_xor_sync(kFull, bv, o);
      const long long oj = __shfl_xor_sync(kFull, bj, o);
      if (ov < bv || (ov == bv && oj < bj)) { bv = ov; bj = oj; }
    }
    if (lane == 0) {
      S[0] = bj;
      lam[0] = 1.0;
      L[0] = sqrt(G[bj * n + bj] + 1.0);
    }
    s = 1;
    __syncwarp();
  }
  double ymax = 0.0;
  for (int64_t j = lane; j < n; j += 32)
    if (valid(j)) ymax = fmax(ymax, G[j * n + j]);
  for (int o = 16; o > 0; o >>= 1) ymax = fmax(ymax, __shfl_xor_sync(kFull, ymax, o));
  const double round_floor = (16.0 * sqrt(static_cast<double>(d)) + 16.0) * 2.220446049250313e-16 *
                             sqrt(fmax(ymax, 1e-300));
  int64_t it = 0;
  int64_t status = 1;
  while (it < max_iter) {
    ++it;
    double bv = INFINITY;
    long long bj = n;
    for (int64_t j = lane; j < n; j += 32) {
      double acc = 0.0;
      for (int i = 0; i < s; ++i) acc += lam[i] * G[S[i] * n + j];
      g[j] = acc;
      if (valid(j) && (acc < bv || (acc == bv && j < bj))) { bv = acc; bj = j; }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const double ov = __shfl_xor_sync(kFull, bv, o);
      const long long oj = __shfl_xor_sync(kFull, bj, o);
      if (ov < bv || (ov == bv && oj < bj)) { bv = ov; bj = oj; }
    }
    __syncwarp();
    double xx = 0.0;
    for (int i = lane; i < s; i += 32) xx += lam[i] * g[S[i]];
    xx = warp_sum_d(xx);
    if (!(xx > 0.0)) { status = 0; break; }
    const double xn = sqrt(xx);
    if (xx - bv <= fmax(0.5 * gap_tol * xn, round_floor * xn)) { status = 0; break; }
    bool in = false;
    for (int i = lane; i < s; i += 32) in = in || S[i] == bj;
    if (__any_sync(kFull, in)) { status = 2; break; }
    if (s >= smax_eff) { status = 2; break; }
    if (!append(bj)) { status = 2; break; }
    bool degenerate = false;
    for (;;) {
      for (int i = lane; i < s; i += 32) cc[i] = 1.0;
      __syncwarp();
      w_fwd_solve(L, ld, s, cc, alpha, lane);
      w_bwd_solve(L, ld, s, alpha, lane);
      double sm = 0.0;
      for (int i = lane; i < s; i += 32) sm += alpha[i];
      sm = warp_sum_d(sm);
      __syncwarp();
      for (int i = lane; i < s; i += 32) alpha[i] /= sm;
      __syncwarp();
      bool neg = false;
      for (int i = lane; i < s; i += 32) neg = neg || !(alpha[i] > kPos);
      if (!__any_sync(kFull, neg)) {
        for (int i = lane; i < s; i += 32) lam[i] = alpha[i];
        __syncwarp();
        break;
      }
      // theta and the blocking index: scalar work, every lane computes the same values
      double theta = 1.0;
      int arg = -1;
      for (int i = 0; i < s; ++i) {
        if (!(alpha[i] > kPos)) {
          const double den = lam[i] - alpha[i];
          const double th = den > 0 ? lam[i] / den : 0.0;
          if (th < theta || arg < 0) { theta = th; arg = i; }
        }
      }
      theta = fmin(1.0, fmax(0.0, theta));
      __syncwarp();
      for (int i = lane; i < s; i += 32) lam[i] += theta * (alpha[i] - lam[i]);
      __syncwarp();
      if (lane == 0) lam[arg] = 0.0;
      __syncwarp();
      if (arg == s - 1 && theta == 0.0) degenerate = true;
      for (int i = s - 1; i >= 0; --i) {
        if (!(lam[i] > kPos)) {
          w_chol_remove(L, ld, s, i, lane);
          if (lane == 0)
            for (int q = i; q < s - 1; ++q) {
              S[q] = S[q + 1];
              lam[q] = lam[q + 1];
            }
          --s;
          __syncwarp();
        }
      }
      double ls = 0.0;
      for (int i = lane; i < s; i += 32) ls += lam[i];
      ls = warp_sum_d(ls);
      __syncwarp();
      for (int i = lane; i < s; i += 32) lam[i] /= ls;
      __syncwarp();
      if (degenerate || s == 0) { degenerate = true; break; }
      ++it;
      if (it >= max_iter) break;
    }
    if (degenerate) { status = 2; break; }
  }
  // final point from the non-negative, renormalised weights
  double ls = 0.0;
  for (int i = lane; i < s; i += 32) ls += fmax(0.0, lam[i]);
  ls = warp_sum_d(ls);
  double xx = 0.0;
  for (int64_t t = lane; t < d; t += 32) {
    const double wkt = static_cast<double>(load_f(wk, t));
    double x = 0.0;
    for (int i = 0; i < s; ++i) {
      const double l = fmax(0.0, lam[i]) / ls;
      if (l > 0.0) x += l * (static_cast<double>(load_f(W + cb[S[i]] * ws0, t)) - wkt);
    }
    xx += x * x;
    proj[b * proj_s + t] = wkt + x;
  }
  xx = warp_sum_d(xx);
  if (lane == 0) {
    int o = 0;
    for (int i = 0; i < s && o < s_out; ++i) {
      const double l = fmax(0.0, lam[i]) / ls;
      if (l <= 0.0) continue;
      sup_out[b * out_s + o] = cb[S[i]];
      wt_out[b * out_s + o] = l;
      ++o;
    }
    dist[b] = sqrt(xx);
    iters_out[b] = it;
    status_out[b] = status;
  }
}

inline unsigned grid_for(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx, std::uintptr_t stream) {
  const int64_t R = tile.size(0), c = tile.size(1), m = vals.size(1);
  if (R == 0 || c == 0) return;
  DeviceGuard guard(tile.device);
  if (tile.dtype == DType::F32) {
    topm_kernel<float><<<grid_for(R), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        tile.data<float>(), tile.stride(0), row_ids.data<int64_t>(), row_ids.stride(0), R, c, col0,
        vals.data<float>(), vals.stride(0), idx.data<int64_t>(), idx.stride(0), m);
  } else if (tile.dtype == DType::F64) {
    topm_kernel<double><<<grid_for(R), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        tile.data<double>(), tile.stride(0), row_ids.data<int64_t>(), row_ids.stride(0), R, c, col0,
        vals.data<double>(), vals.stride(0), idx.data<int64_t>(), idx.stride(0), m);
  } else {
    fail(std::string("tile: expected float32 or float64, got ") + dtype_name(tile.dtype));
  }
  check_launch("hull_topm_update");
}

void hull_price_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                       const TensorView& thresh, const TensorView& best_val,
                       const TensorView& best_idx, const TensorView& viol_val,
                       const TensorView& viol_idx, std::uintptr_t stream) {
  const int64_t R = tile.size(0), c = tile.size(1), q = viol_val.size(1);
  if (R == 0 || c == 0) return;
  DeviceGuard guard(tile.device);
  price_kernel<<<grid_for(R), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
      tile.data<double>(), tile.stride(0), row_ids.data<int64_t>(), row_ids.stride(0), R, c, col0,
      thresh.data<double>(), thresh.stride(0), best_val.data<double>(), best_val.stride(0),
      best_idx.data<int64_t>(), best_idx.stride(0), viol_val.data<double>(), viol_val.stride(0),
      viol_idx.data<int64_t>(), viol_idx.stride(0), q);
  check_launch("hull_price_update");
}

void hull_solve(const TensorView& W, const TensorView& classes, const TensorView& cand,
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol,
                int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status, const TensorView& workspace, std::uintptr_t stream) {
  const int64_t B = classes.size(0), n = cand.size(1), d = W.size(1);
  if (B == 0) return;
  if (workspace.dtype != DType::F64 || workspace.numel() < B * ws_doubles(n, d))
    fail("workspace: expected at least B * hull_ws_doubles(n, d) float64 values on the device");
  check_same_device(W, workspace, "W", "workspace");
  const int64_t n_init = init_sup.numel() > 0 ? init_sup.size(1) : 0;
  DeviceGuard guard(W.device);
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    solve_kernel<T><<<grid_for(B), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        W.data<T>(), W.stride(0), d, classes.data<int64_t>(), classes.stride(0), cand.data<int64_t>(),
        cand.stride(0), n, gram.data<double>(), n_init ? init_sup.data<int64_t>() : nullptr,
        n_init ? init_wt.data<double>() : nullptr, n_init, n_init ? init_sup.stride(0) : 0, gap_tol, max_iter,
        proj.data<double>(), proj.stride(0), dist.data<double>(), support.data<int64_t>(),
        weights.data<double>(), support.size(1), support.stride(0), iters.data<int64_t>(),
        status.data<int64_t>(), workspace.data<double>(), B);
    return 0;
  });
  check_launch("hull_solve");
}

}  // namespace cuda
}  // namespace gnc
