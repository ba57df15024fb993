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

// One warp per row (grid-stride over rows). Pass 1: warp max of the unmasked tile
// entries; pass 2: ballot the columns with s~ >= m - 2 eps in groups of 32 and, for
// each, the whole warp computes the fp64 dot product (lanes stride over t, xor-shuffle
// tree: every lane ends with the bit-identical sum, so the running best is kept
// uniformly in all lanes and lane 0 writes it). Deterministic, no atomics.
template <typename T>
__global__ void certified_argmax_kernel(const float* __restrict__ tile, int64_t R, int64_t c, int64_t ts0,
                                        const T* __restrict__ A, int64_t as0, const T* __restrict__ B,
                                        int64_t bs0, int64_t d, const T* __restrict__ bias, int64_t bias_s,
                                        const int64_t* __restrict__ y, int64_t ys, int64_t K, int64_t col0,
                                        const double* __restrict__ eps, int64_t es,
                                        double* __restrict__ approx_max, int64_t ams,
                                        double* __restrict__ best_val, int64_t bvs,
                                        int64_t* __restrict__ best_idx, int64_t bis,
                                        int64_t* __restrict__ checked, int64_t chs) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); i < R; i += warps_total) {
    const float* row = tile + i * ts0;
    int64_t jm = -1;
    if (y != nullptr) {
      const int64_t yi = y[i * ys];
      if (yi >= 0 && yi < K && yi >= col0 && yi - col0 < c) jm = yi - col0;
    }
    double m = -HUGE_VAL;
    for (int64_t j = lane; j < c; j += 32) {
      const double s = static_cast<double>(row[j]);
      if (j != jm && s > m) m = s;  // NaN never counts
    }
    m = warp_max(m);
    const double prev = approx_max[i * ams];
    if (prev > m) m = prev;  // a NaN running max never counts (as on the CPU)
    if (lane == 0) approx_max[i * ams] = m;
    if (!(m > -HUGE_VAL)) continue;  // warp-uniform
    const double thr = m - 2.0 * eps[i * es];
    double bv = best_val[i * bvs];
    int64_t bi = best_idx[i * bis];
    int64_t nchk = 0;
    const T* arow = A + i * as0;
    for (int64_t base = 0; base < c; base += 32) {
      const int64_t j = base + lane;
      const bool q = j < c && j != jm && static_cast<double>(row[j < c ? j : 0]) >= thr;
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
        acc = warp_sum(acc);
        if (bias != nullptr) acc += static_cast<double>(bias[k * bias_s]);
        if (acc > bv || (acc == bv && k < bi)) {
          bv = acc;
          bi = k;
        }
      }
    }
    if (lane == 0) {
      best_val[i * bvs] = bv;
      best_idx[i * bis] = bi;
      if (checked != nullptr) checked[i * chs] += nchk;
    }
  }
}

}  // namespace

void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked, std::uintptr_t stream) {
  const int64_t R = tile.size(0), c = tile.size(1), d = A.size(1), K = B.size(0);
  if (tile.dtype != DType::F32) fail(std::string("tile: expected float32, got ") + dtype_name(tile.dtype));
  if (R == 0 || c == 0) return;
  DeviceGuard g(tile.device);
  const int64_t blocks_needed = (R + kWarps - 1) / kWarps;
  const unsigned grid = static_cast<unsigned>(blocks_needed < (1 << 20) ? blocks_needed : (1 << 20));
  const bool has_bias = bias.numel() > 0, has_y = y.numel() > 0, has_chk = checked.numel() > 0;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    certified_argmax_kernel<T><<<grid, kWarps * 32, 0, as_stream(stream)>>>(
        tile.data<float>(), R, c, tile.stride(0), A.data<T>(), A.stride(0), B.data<T>(), B.stride(0), d,
        has_bias ? bias.data<T>() : nullptr, has_bias ? bias.stride(0) : 0,
        has_y ? y.data<int64_t>() : nullptr, has_y ? y.stride(0) : 0, K, col0, eps.data<double>(),
        eps.stride(0), approx_max.data<double>(), approx_max.stride(0), best_val.data<double>(),
        best_val.stride(0), best_idx.data<int64_t>(), best_idx.stride(0),
        has_chk ? checked.data<int64_t>() : nullptr, has_chk ? checked.stride(0) : 0);
  };
  if (A.dtype == DType::F32)
    launch(float{});
  else if (A.dtype == DType::F64)
    launch(double{});
  else
    fail(std::string("A: expected float32 or float64, got ") + dtype_name(A.dtype));
  check_launch("certified_argmax_fold");
}

}  // namespace cuda
}  // namespace gnc
