// [hull] CUDA twin of cpu/hull.cpp. Same algorithms and contracts:
//  * hull_topm_update: one warp per tile row; lanes scan columns, candidates above the
//    row's current heap minimum are found with a warp ballot and inserted by lane 0
//    into the row's min-heap (kept in global memory, vals/idx).
//  * hull_price_update: one warp per row; per-lane max/argmax reduced with shuffles,
//    violators above thresh inserted into the row's top-q heap as above.
//  * hull_solve: Wolfe's min-norm-point algorithm in fp64 (common/wolfe.h, the same code
//    as the CPU's), one warp per class (WarpTeam, cuda/common.cuh), on the caller's Gram
//    matrices; lanes parallelise the O(n) and O(d) loops and the dot products of the
//    triangular solves, every lane runs the O(s) scalar bookkeeping, lane 0 writes. The
//    corral's Cholesky factor, weights and scratch live in a caller-allocated fp64
//    workspace (hull_ws_doubles(n, d) words per class; see ops/hull.py).
// The similarity tiles themselves come from torch's cuBLAS GEMM per block of classes
// (the chunked engine), so these kernels are the epilogues and the batched QP.
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/dispatch.h"
#include "common/heap.h"
#include "common/wolfe.h"
#include "cuda/common.cuh"
#include "cuda/hull.h"

namespace gnc {
namespace cuda {

namespace {

constexpr unsigned kFull = kFullMask;
constexpr int kWarpsPerBlock = 4;

template <typename V>
__device__ __forceinline__ V neg_inf() { return -std::numeric_limits<V>::infinity(); }

// Inserts into a row's min-heap (vals hv / ids hi, m entries; root hv[0]) every lane's
// (v, id) whose pred holds and that still beats the root, in lane order; lane 0 writes.
// Returns the heap's new root in every lane.
template <typename V>
__device__ V warp_heap_insert(V* hv, int64_t* hi, int64_t m, bool pred, V v, int64_t id, V root, int lane) {
  unsigned mask = __ballot_sync(kFull, pred);
  while (mask) {
    const int src = __ffs(mask) - 1;
    const V vv = __shfl_sync(kFull, v, src);
    const long long jj = __shfl_sync(kFull, static_cast<long long>(id), src);
    if (lane == 0 && vv > hv[0]) heap_replace_root(hv, hi, m, vv, static_cast<int64_t>(jj));
    __syncwarp();
    root = hv[0];
    mask &= mask - 1;
    mask &= __ballot_sync(kFull, pred && v > root);
  }
  return root;
}

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
    root = warp_heap_insert(hv, hi, m, j < c && v > root && (col0 + j) != self, v, col0 + j, root, lane);
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
    root = warp_heap_insert(hv, hi, q, ok && v > thr && v > root, v, col0 + j, root, lane);
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

__host__ __device__ inline int64_t ws_doubles(int64_t n, int64_t d) {
  const int64_t s = n < d + 1 ? n : d + 1;
  const int64_t ld = s + 1;
  return d + 2 * n + 2 * ld * ld + 4 * ld + 8;  // == ops/hull.py: solve_workspace_doubles
}

// One warp per class: the shared Wolfe core (common/wolfe.h) with the warp team, on the
// caller's Gram matrices and workspace.
template <typename T>
__global__ void solve_kernel(const T* __restrict__ W, int64_t ws0, int64_t d, const int64_t* __restrict__ classes,
                             int64_t cls_s, const int64_t* __restrict__ cand, int64_t cand_s, int64_t n,
                             const double* __restrict__ gram, const int64_t* __restrict__ init_sup,
                             const double* __restrict__ init_wt, int64_t n_init, int64_t init_s, int64_t init_wt_s,
                             double gap_tol, int64_t max_iter, double* proj, int64_t proj_s, double* dist,
                             int64_t* sup_out, double* wt_out, int64_t s_out, int64_t out_s, int64_t wt_s,
                             int64_t* iters_out,
                             int64_t* status_out, double* workspace, int64_t B) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const WarpTeam team{static_cast<int>(threadIdx.x & 31)};
  const int64_t ld = (n < d + 1 ? n : d + 1) + 1;
  double* ws = workspace + b * ws_doubles(n, d);
  wolfe::Scratch scratch;
  scratch.g = ws;
  scratch.L = scratch.g + n;
  scratch.lam = scratch.L + ld * ld;
  scratch.alpha = scratch.lam + ld;
  scratch.z = scratch.alpha + ld;
  scratch.c = scratch.z + ld;
  scratch.S = reinterpret_cast<int64_t*>(scratch.c + ld);
  scratch.ld = ld;
  const wolfe::HullProblem<T> prob{W, ws0, d, classes[b * cls_s], cand + b * cand_s, n, gram + b * n * n, n};
  const wolfe::WarmStart warm{n_init ? init_sup + b * init_s : nullptr, n_init ? init_wt + b * init_wt_s : nullptr,
                              n_init};
  const wolfe::Output out{proj + b * proj_s, dist + b, sup_out + b * out_s, wt_out + b * wt_s, s_out,
                          iters_out + b, status_out + b};
  wolfe::solve(team, prob, warm, gap_tol, max_iter, scratch, out);
}

}  // namespace

void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx, std::uintptr_t stream) {
  const int64_t R = tile.size(0), c = tile.size(1), m = vals.size(1);
  if (R == 0 || c == 0) return;
  DeviceGuard guard(tile.device);
  if (tile.dtype == DType::F32) {
    topm_kernel<float><<<grid_for(R, kWarpsPerBlock), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        tile.data<float>(), tile.stride(0), row_ids.data<int64_t>(), row_ids.stride(0), R, c, col0,
        vals.data<float>(), vals.stride(0), idx.data<int64_t>(), idx.stride(0), m);
  } else if (tile.dtype == DType::F64) {
    topm_kernel<double><<<grid_for(R, kWarpsPerBlock), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
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
  price_kernel<<<grid_for(R, kWarpsPerBlock), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
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
  if (workspace.dtype != DType::F64 || workspace.numel() < B * ws_doubles(n, d) || !workspace.is_contiguous())
    fail("workspace: expected a contiguous float64 tensor of at least B * hull_ws_doubles(n, d) values on the "
         "device");
  check_same_device(W, workspace, "W", "workspace");
  const int64_t n_init = init_sup.numel() > 0 ? init_sup.size(1) : 0;
  DeviceGuard guard(W.device);
  dispatch_float(W.dtype, "W", [&](auto tag) {
    using T = decltype(tag);
    solve_kernel<T><<<grid_for(B, kWarpsPerBlock), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        W.data<T>(), W.stride(0), d, classes.data<int64_t>(), classes.stride(0), cand.data<int64_t>(),
        cand.stride(0), n, gram.data<double>(), n_init ? init_sup.data<int64_t>() : nullptr,
        n_init ? init_wt.data<double>() : nullptr, n_init, n_init ? init_sup.stride(0) : 0,
        n_init ? init_wt.stride(0) : 0, gap_tol, max_iter, proj.data<double>(), proj.stride(0),
        dist.data<double>(), support.data<int64_t>(), weights.data<double>(), support.size(1),
        support.stride(0), weights.stride(0), iters.data<int64_t>(),
        status.data<int64_t>(), workspace.data<double>(), B);
    return 0;
  });
  check_launch("hull_solve");
}

}  // namespace cuda
}  // namespace gnc
