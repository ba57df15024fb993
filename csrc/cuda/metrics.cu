// [metrics] CUDA kernels: streaming class statistics and the NCC argmax epilogue.
// Twin of cpu/metrics.cpp; see cuda/metrics.h for the differences.
#include <cfloat>
#include <climits>

#include "common/dispatch.h"
#include "cuda/common.cuh"
#include "cuda/metrics.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int kWarps = 8;
constexpr long long kSentinel = LLONG_MAX;

inline unsigned grid_rows(int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

// One thread per row: claim the first row of every class not seen before.
__global__ void claim_first_kernel(const int64_t* __restrict__ labels, int64_t ls, int64_t B,
                                   int64_t K, const int64_t* __restrict__ counts,
                                   long long* __restrict__ first) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  const int64_t y = labels[i * ls];
  if (y < 0 || y >= K) return;
  if (counts[y] == 0) atomicMin(first + y, static_cast<long long>(i));
}

// One warp per row: Z[i] = (normalised) features[i] in fp64.
template <typename T>
__global__ void load_rows_kernel(const T* __restrict__ x, int64_t B, int64_t d, int64_t s0,
                                 int64_t s1, double* __restrict__ Z, bool normalize, double eps) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= B) return;
  const T* xr = x + i * s0;
  double* zr = Z + i * d;
  double ss = 0.0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = static_cast<double>(load_f(xr, j * s1));
    zr[j] = v;
    ss += v * v;
  }
  if (!normalize) return;
  ss = warp_sum(ss);
  const double n = sqrt(ss);
  const double inv = 1.0 / (n > eps ? n : eps);
  for (int64_t j = lane; j < d; j += 32) zr[j] *= inv;
}

// One warp per row: set the reference point of classes first seen in this batch.
__global__ void set_shift_kernel(const int64_t* __restrict__ labels, int64_t ls, int64_t B,
                                 int64_t K, int64_t d, const double* __restrict__ Z,
                                 const int64_t* __restrict__ counts, const long long* __restrict__ first,
                                 float* __restrict__ shift, int64_t shs) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= B) return;
  const int64_t y = labels[i * ls];
  if (y < 0 || y >= K || counts[y] != 0 || first[y] != i) return;
  for (int64_t j = lane; j < d; j += 32) shift[y * shs + j] = static_cast<float>(Z[i * d + j]);
}

// One warp per row: deviations from the reference point, per-class sums (fp64 atomics).
__global__ void accumulate_kernel(const int64_t* __restrict__ labels, int64_t ls, int64_t B,
                                  int64_t K, int64_t d, double* __restrict__ Z,
                                  const float* __restrict__ shift, int64_t shs,
                                  double* __restrict__ dsum, int64_t dss, double* __restrict__ sqsum,
                                  unsigned long long* __restrict__ counts) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= B) return;
  const int64_t y = labels[i * ls];
  double* zr = Z + i * d;
  if (y < 0 || y >= K) {  // rejected by the caller; keep the GEMM input harmless
    for (int64_t j = lane; j < d; j += 32) zr[j] = 0.0;
    return;
  }
  const float* c = shift + y * shs;
  double* s = dsum + y * dss;
  double q = 0.0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = zr[j] - static_cast<double>(c[j]);
    zr[j] = v;
    atomicAdd(s + j, v);
    q += v * v;
  }
  q = warp_sum(q);
  if (lane == 0) {
    atomicAdd(sqsum + y, q);
    atomicAdd(counts + y, 1ull);
  }
}

// One thread per row: restore the scratch to the sentinel.
__global__ void reset_first_kernel(const int64_t* __restrict__ labels, int64_t ls, int64_t B,
                                   int64_t K, long long* __restrict__ first) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  const int64_t y = labels[i * ls];
  if (y >= 0 && y < K) first[y] = kSentinel;
}

template <typename T>
__device__ __forceinline__ void argmax_combine(T& v, int64_t& a, T ov, int64_t oa) {
  if (ov > v || (ov == v && oa >= 0 && (a < 0 || oa < a))) {
    v = ov;
    a = oa;
  }
}

template <typename T>
__global__ void ncc_argmax_kernel(const T* __restrict__ tile, int64_t B, int64_t c, int64_t ts,
                                  const T* __restrict__ bias, int64_t bs, int64_t col0,
                                  T* __restrict__ best_val, int64_t vs, int64_t* __restrict__ best_idx,
                                  int64_t is) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= B) return;
  const T* row = tile + i * ts;
  T best = -INFINITY;
  int64_t arg = -1;
  for (int64_t j = lane; j < c; j += 32) {
    const T v = row[j] + bias[(col0 + j) * bs];
    if (v > best) {  // per lane j increases, so strict > keeps the lowest index on ties
      best = v;
      arg = j;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, o);
    argmax_combine(best, arg, ov, oa);
  }
  if (lane == 0 && arg >= 0 && best > best_val[i * vs]) {
    best_val[i * vs] = best;
    best_idx[i * is] = col0 + arg;
  }
}

}  // namespace

void metrics_update_batch(const TensorView& features, const TensorView& labels,
                          const TensorView& shift, const TensorView& dsum, const TensorView& sqsum,
                          const TensorView& counts, const TensorView& Z, const TensorView& first,
                          bool normalize, double eps, std::uintptr_t stream) {
  const int64_t B = features.size(0), d = features.size(1), K = shift.size(0);
  if (B == 0) return;
  DeviceGuard g(features.device);
  cudaStream_t st = as_stream(stream);
  const int64_t* lab = labels.data<int64_t>();
  const int64_t ls = labels.stride(0);
  const unsigned tgrid = static_cast<unsigned>((B + 255) / 256);
  long long* fp = first.data<long long>();
  claim_first_kernel<<<tgrid, 256, 0, st>>>(lab, ls, B, K, counts.data<int64_t>(), fp);
  dispatch_float(features.dtype, "features", [&](auto tag) {
    using T = decltype(tag);
    load_rows_kernel<T><<<grid_rows(B), kWarps * 32, 0, st>>>(
        features.data<T>(), B, d, features.stride(0), features.stride(1), Z.data<double>(), normalize,
        eps);
    return 0;
  });
  set_shift_kernel<<<grid_rows(B), kWarps * 32, 0, st>>>(lab, ls, B, K, d, Z.data<double>(),
                                                        counts.data<int64_t>(), fp,
                                                        shift.data<float>(), shift.stride(0));
  accumulate_kernel<<<grid_rows(B), kWarps * 32, 0, st>>>(
      lab, ls, B, K, d, Z.data<double>(), shift.data<float>(), shift.stride(0), dsum.data<double>(),
      dsum.stride(0), sqsum.data<double>(), reinterpret_cast<unsigned long long*>(counts.data<int64_t>()));
  reset_first_kernel<<<tgrid, 256, 0, st>>>(lab, ls, B, K, fp);
  check_launch("metrics_update_batch");
}

void ncc_argmax_update(const TensorView& tile, const TensorView& bias, int64_t col0,
                       const TensorView& best_val, const TensorView& best_idx,
                       std::uintptr_t stream) {
  const int64_t B = tile.size(0), c = tile.size(1);
  if (B == 0 || c == 0) return;
  DeviceGuard g(tile.device);
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    ncc_argmax_kernel<T><<<grid_rows(B), kWarps * 32, 0, as_stream(stream)>>>(
        tile.data<T>(), B, c, tile.stride(0), bias.data<T>(), bias.stride(0), col0,
        best_val.data<T>(), best_val.stride(0), best_idx.data<int64_t>(), best_idx.stride(0));
  };
  if (tile.dtype == DType::F32)
    launch(float{});
  else if (tile.dtype == DType::F64)
    launch(double{});
  else
    fail(std::string("tile: expected float32 or float64, got ") + dtype_name(tile.dtype));
  check_launch("ncc_argmax_update");
}

namespace {

// One warp per (row, column split) (grid-stride over rows, blockIdx.y = split). Pass 1:
// warp max of the unmasked tile entries of its columns; pass 2: ballot the columns with
// s~ >= m - 2 eps in groups of 32 and, for each, the whole warp computes the fp64 dot
// product (lanes stride over t, xor-shuffle tree: every lane ends with the bit-identical
// sum, so the running best is kept uniformly in all lanes and lane 0 writes it).
// With one split the row state is updated in place. With S > 1 splits (few rows: more
// warps in flight) each split starts from the row's state, uses its own running max m
// (<= the max over the whole row, so its threshold re-scores a superset of what the
// whole row's would: the true argmax is still re-scored), and writes (approx max, best
// value, best index, re-scorings) to the workspace; certified_merge_kernel then folds the
// splits into the row state in split order (ties to the lowest class index, as the
// sequential scan). Deterministic, no atomics.
template <typename T>
__global__ void certified_argmax_kernel(const float* __restrict__ tile, int64_t R, int64_t c, int64_t ts0,
                                        const T* __restrict__ A, int64_t as0, const T* __restrict__ B,
                                        int64_t bs0, int64_t d, const T* __restrict__ bias, int64_t bias_s,
                                        const int64_t* __restrict__ y, int64_t ys, int64_t K, int64_t col0,
                                        const double* __restrict__ eps, int64_t es,
                                        double* __restrict__ approx_max, int64_t ams,
                                        double* __restrict__ best_val, int64_t bvs,
                                        int64_t* __restrict__ best_idx, int64_t bis,
                                        int64_t* __restrict__ checked, int64_t chs, int64_t splits,
                                        double* __restrict__ ws) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t split = blockIdx.y;
  const int64_t per = (c + splits - 1) / splits;
  const int64_t lo = split * per < c ? split * per : c;
  const int64_t hi = lo + per < c ? lo + per : c;
  // workspace (splits > 1): four (splits x R) planes: approx max, best value (doubles),
  // best index, re-scorings (int64 stored in the same 8-byte slots)
  double* ws_am = ws;
  double* ws_bv = ws + splits * R;
  int64_t* ws_bi = reinterpret_cast<int64_t*>(ws + 2 * splits * R);
  int64_t* ws_ck = reinterpret_cast<int64_t*>(ws + 3 * splits * R);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); i < R; i += warps_total) {
    const float* row = tile + i * ts0;
    int64_t jm = -1;
    if (y != nullptr) {
      const int64_t yi = y[i * ys];
      if (yi >= 0 && yi < K && yi >= col0 && yi - col0 < c) jm = yi - col0;
    }
    double m = -HUGE_VAL;
    for (int64_t j = lo + lane; j < hi; j += 32) {
      const double s = static_cast<double>(row[j]);
      if (j != jm && s > m) m = s;  // NaN never counts
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    const double prev = approx_max[i * ams];
    if (prev > m) m = prev;  // a NaN running max never counts (as on the CPU)
    double bv = best_val[i * bvs];
    int64_t bi = best_idx[i * bis];
    int64_t nchk = 0;
    if (m > -HUGE_VAL) {  // warp-uniform
      const double thr = m - 2.0 * eps[i * es];
      const T* arow = A + i * as0;
      for (int64_t base = lo; base < hi; base += 32) {
        const int64_t j = base + lane;
        const bool q = j < hi && j != jm && static_cast<double>(row[j < hi ? j : lo]) >= thr;
        unsigned mask = __ballot_sync(0xffffffffu, q);
        nchk += __popc(mask);
        while (mask != 0u) {
          const int b = __ffs(mask) - 1;
          mask &= mask - 1u;
          const int64_t k = col0 + base + b;
          const T* brow = B + k * bs0;
          double acc = 0.0;
          for (int64_t t = lane; t < d; t += 32)
            acc += static_cast<double>(arow[t]) * static_cast<double>(brow[t]);
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
          if (bias != nullptr) acc += static_cast<double>(bias[k * bias_s]);
          if (acc > bv || (acc == bv && k < bi)) {
            bv = acc;
            bi = k;
          }
        }
      }
    }
    if (lane == 0) {
      if (splits == 1) {
        approx_max[i * ams] = m;
        best_val[i * bvs] = bv;
        best_idx[i * bis] = bi;
        if (checked != nullptr) checked[i * chs] += nchk;
      } else {
        const int64_t w = split * R + i;
        ws_am[w] = m;
        ws_bv[w] = bv;
        ws_bi[w] = bi;
        ws_ck[w] = nchk;
      }
    }
  }
}

// Folds the splits' results into the row state, in split order (one thread per row).
__global__ void certified_merge_kernel(int64_t R, int64_t splits, const double* __restrict__ ws,
                                       double* __restrict__ approx_max, int64_t ams,
                                       double* __restrict__ best_val, int64_t bvs,
                                       int64_t* __restrict__ best_idx, int64_t bis,
                                       int64_t* __restrict__ checked, int64_t chs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= R) return;
  const double* ws_am = ws;
  const double* ws_bv = ws + splits * R;
  const int64_t* ws_bi = reinterpret_cast<const int64_t*>(ws + 2 * splits * R);
  const int64_t* ws_ck = reinterpret_cast<const int64_t*>(ws + 3 * splits * R);
  double am = approx_max[i * ams], bv = best_val[i * bvs];
  int64_t bi = best_idx[i * bis], nchk = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const int64_t w = s * R + i;
    if (ws_am[w] > am) am = ws_am[w];
    const double v = ws_bv[w];
    const int64_t k = ws_bi[w];
    if (v > bv || (v == bv && k < bi)) {
      bv = v;
      bi = k;
    }
    nchk += ws_ck[w];
  }
  approx_max[i * ams] = am;
  best_val[i * bvs] = bv;
  best_idx[i * bis] = bi;
  if (checked != nullptr) checked[i * chs] += nchk;
}

}  // namespace

void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked, int64_t splits, const TensorView& workspace,
                           std::uintptr_t stream) {
  const int64_t R = tile.size(0), c = tile.size(1), d = A.size(1), K = B.size(0);
  if (tile.dtype != DType::F32) fail(std::string("tile: expected float32, got ") + dtype_name(tile.dtype));
  if (R == 0 || c == 0) return;
  if (splits < 1 || splits > 65535) fail("splits: expected a value in [1, 65535]");
  if (splits > c) splits = c;  // every split gets at least one column
  if (splits > 1) {
    if (workspace.dtype != DType::F64 || workspace.numel() < 4 * splits * R)
      fail("workspace: expected a float64 tensor with at least 4 * splits * rows elements");
    if (workspace.device != tile.device) fail("workspace: must be on the same device as tile");
  }
  DeviceGuard g(tile.device);
  const int64_t blocks_needed = (R + kWarps - 1) / kWarps;
  const dim3 grid(static_cast<unsigned>(blocks_needed < (1 << 20) ? blocks_needed : (1 << 20)),
                  static_cast<unsigned>(splits));
  const bool has_bias = bias.numel() > 0, has_y = y.numel() > 0, has_chk = checked.numel() > 0;
  double* ws = splits > 1 ? workspace.data<double>() : nullptr;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    certified_argmax_kernel<T><<<grid, kWarps * 32, 0, as_stream(stream)>>>(
        tile.data<float>(), R, c, tile.stride(0), A.data<T>(), A.stride(0), B.data<T>(), B.stride(0), d,
        has_bias ? bias.data<T>() : nullptr, has_bias ? bias.stride(0) : 0,
        has_y ? y.data<int64_t>() : nullptr, has_y ? y.stride(0) : 0, K, col0, eps.data<double>(),
        eps.stride(0), approx_max.data<double>(), approx_max.stride(0), best_val.data<double>(),
        best_val.stride(0), best_idx.data<int64_t>(), best_idx.stride(0),
        has_chk ? checked.data<int64_t>() : nullptr, has_chk ? checked.stride(0) : 0, splits, ws);
  };
  if (A.dtype == DType::F32)
    launch(float{});
  else if (A.dtype == DType::F64)
    launch(double{});
  else
    fail(std::string("A: expected float32 or float64, got ") + dtype_name(A.dtype));
  check_launch("certified_argmax_fold");
  if (splits > 1) {
    const int threads = 256;
    certified_merge_kernel<<<static_cast<unsigned>((R + threads - 1) / threads), threads, 0, as_stream(stream)>>>(
        R, splits, ws, approx_max.data<double>(), approx_max.stride(0), best_val.data<double>(),
        best_val.stride(0), best_idx.data<int64_t>(), best_idx.stride(0),
        has_chk ? checked.data<int64_t>() : nullptr, has_chk ? checked.stride(0) : 0);
    check_launch("certified_argmax_fold (merge)");
  }
}

}  // namespace cuda
}  // namespace gnc
