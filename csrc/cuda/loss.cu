// CUDA epilogues of the chunked spherical-CE / HardMax path: twins of cpu/loss.cpp.
// fold / argmax: one 256-thread block per tile row (block reductions, then thread 0
// updates the float64 state: no atomics, so results are deterministic run to run).
// grad: one thread per tile element (rows over grid.y, columns over grid.x). Run on an
// H200 (2026-11-30); the CPU twin is the specification they mirror.
#include <algorithm>
#include <cfloat>

#include "common/tile_checks.h"
#include "cpu/loss_math.h"
#include "cuda/common.cuh"
#include "cuda/loss.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int kThreads = 256;

struct MarginArgs {
  int type;
  double m, cos_m, sin_m, th, mm, filt;
};

MarginArgs margin_args(int type, double m, double filter_threshold) {
  auto g = loss_math::make_margin(type, m, filter_threshold);
  return MarginArgs{g.type, g.m, g.cos_m, g.sin_m, g.th, g.mm, g.filt};
}

// pad: what the lanes of warp 0 beyond the block's warp count contribute (a value that
// leaves the result unchanged).
struct MaxOp {
  template <typename A>
  __device__ static A warp(A v) { return warp_max(v); }
  template <typename A>
  __device__ static A pad(const A* sh) { return sh[0]; }
};
struct SumOp {
  template <typename A>
  __device__ static A warp(A v) { return warp_sum(v); }
  template <typename A>
  __device__ static A pad(const A*) { return A(0); }
};

// Reduction over the kThreads threads of a block (warps, then the warps' results in
// warp 0), the result in every thread. `sh` holds kThreads / 32 values.
template <typename Op, typename A>
__device__ A block_reduce(A v, A* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = Op::warp(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    v = Op::warp(lane < (kThreads / 32) ? sh[lane] : Op::pad(sh));
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  v = sh[0];
  __syncthreads();
  return v;
}

template <typename A>
__global__ void sce_fold_kernel(const A* __restrict__ tile, int64_t R, int64_t C, int64_t ld,
                                const int64_t* __restrict__ y, int64_t ys, int64_t col0,
                                double* __restrict__ state, A inv_tau, MarginArgs mg, int64_t ignore_index) {
  __shared__ A sh[kThreads / 32];
  const int64_t i = blockIdx.x;
  if (i >= R) return;
  const int64_t yi = y[i * ys];
  if (yi == ignore_index) return;  // uniform over the block
  const A* row = tile + i * ld;
  const int64_t t = yi - col0;
  const bool has_t = t >= 0 && t < C;
  A zt = A(0);
  if (has_t)
    zt = loss_math::phi<A>(row[t], mg.type, A(mg.m), A(mg.cos_m), A(mg.sin_m), A(mg.th), A(mg.mm)) * inv_tau;
  // one pass over the row: per thread an online (max, sum of exp relative to it) pair,
  // then the block combines the pairs at the block max (the tile is read once)
  A m_t = -INFINITY, s_t = A(0), zsum = A(0);
  const A thr = static_cast<A>(mg.filt);
  for (int64_t k = threadIdx.x; k < C; k += kThreads) {
    if (k == t) continue;
    const A z = loss_math::filtered(row[k], thr) * inv_tau;
    zsum += z;
    if (z > m_t) {
      s_t = s_t * loss_math::exp_nonpos(m_t - z) + A(1);  // exp(-inf) = 0 on the first
      m_t = z;
    } else {
      s_t += loss_math::exp_nonpos(z - m_t);
    }
  }
  A mx = block_reduce<MaxOp>(m_t, sh);
  if (has_t) mx = max(mx, zt);
  double* si = state + 4 * i;
  const double M = fmax(si[0], static_cast<double>(mx));
  const A Ma = static_cast<A>(M);
  // M >= every thread's m_t, so each rescale factor is exp of a value <= 0
  A acc = (m_t == -INFINITY) ? A(0) : s_t * loss_math::exp_nonpos(m_t - Ma);
  acc = block_reduce<SumOp>(acc, sh);
  zsum = block_reduce<SumOp>(zsum, sh);
  if (threadIdx.x == 0) {
    if (has_t) {  // the target's exp term is left to the float64 finish (cpu/loss.h)
      zsum += zt;
      si[2] = static_cast<double>(row[t]);
    }
    const double old = si[0] == -INFINITY ? 0.0 : si[1] * exp(si[0] - M);
    si[1] = old + static_cast<double>(acc);
    si[0] = M;
    si[3] += static_cast<double>(zsum);
  }
}

template <typename A>
__global__ void sce_grad_kernel(A* __restrict__ tile, int64_t R, int64_t C, int64_t ld,
                                const int64_t* __restrict__ y, int64_t ys, int64_t col0,
                                const double* __restrict__ lse, int64_t ls, const double* __restrict__ q,
                                int64_t qs, const double* __restrict__ scale, int64_t ss, double tau,
                                MarginArgs mg, A eps_minus_uni, A uni, int64_t ignore_index) {
  // grid.y strides over rows (per-row constants loaded once), grid.x and the threads
  // over the row's columns: no per-element integer division
  const A inv_tau = A(1.0 / tau);
  for (int64_t i = blockIdx.y; i < R; i += gridDim.y) {
    A* row = tile + i * ld;
    const int64_t yi = y[i * ys];
    const double sc = scale[i * ss];
    const bool zero = (yi == ignore_index || sc == 0.0);
    const A L = static_cast<A>(lse[i * ls]);
    const A u = static_cast<A>(sc / tau);
    const int64_t t = yi - col0;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < C;
         k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      A* p = row + k;
      if (zero) {
        *p = A(0);
        continue;
      }
      const A c = *p;
      if (k == t) {  // p_t - 1 = -q without cancellation
        *p = u * (eps_minus_uni - static_cast<A>(q[i * qs])) *
             loss_math::dphi<A>(c, mg.type, A(mg.cos_m), A(mg.sin_m), A(mg.th));
      } else {  // filtered cosines are constants: no gradient
        *p = c > static_cast<A>(mg.filt) ? A(0) : u * (loss_math::exp_nonpos(c * inv_tau - L) - uni);
      }
    }
  }
}

template <typename A>
__global__ void argmax_kernel(const A* __restrict__ tile, int64_t R, int64_t C, int64_t ld,
                              const int64_t* __restrict__ y, int64_t ys, int64_t col0,
                              double* __restrict__ best, int64_t* __restrict__ arg, double* __restrict__ tgt) {
  __shared__ A shv[kThreads / 32];
  __shared__ int64_t shi[kThreads / 32];
  const int64_t i = blockIdx.x;
  if (i >= R) return;
  const A* row = tile + i * ld;
  const int64_t t = y[i * ys] - col0;
  A bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int64_t k = threadIdx.x; k < C; k += kThreads) {
    if (k == t) continue;
    const A v = row[k];
    if (v > bv) { bv = v; bi = k; }  // per thread k increases: first occurrence kept
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
  }
  if (lane == 0) { shv[w] = bv; shi[w] = bi; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int j = 1; j < kThreads / 32; ++j)
      if (shv[j] > bv || (shv[j] == bv && shi[j] < bi)) { bv = shv[j]; bi = shi[j]; }
    if (t >= 0 && t < C) tgt[i] = static_cast<double>(row[t]);
    if (bi != INT64_MAX && static_cast<double>(bv) > best[i]) {
      best[i] = static_cast<double>(bv);
      arg[i] = col0 + bi;
    }
  }
}

}  // namespace

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream,
              double filter_threshold) {
  check_sce_fold_args(tile, y, state, tau);
  const int64_t R = tile.size(0), C = tile.size(1);
  if (R == 0 || C == 0) return;
  if (R > 2147483647LL) fail("tile: too many rows");
  DeviceGuard g(tile.device);
  const auto mg = margin_args(margin_type, margin, filter_threshold);
  if (tile.dtype == DType::F32)
    sce_fold_kernel<float><<<static_cast<unsigned>(R), kThreads, 0, as_stream(stream)>>>(
        tile.data<float>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0,
        state.data<double>(), static_cast<float>(1.0 / tau), mg, ignore_index);
  else
    sce_fold_kernel<double><<<static_cast<unsigned>(R), kThreads, 0, as_stream(stream)>>>(
        tile.data<double>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0,
        state.data<double>(), 1.0 / tau, mg, ignore_index);
  check_launch("sce_fold");
}

void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index, std::uintptr_t stream,
              double filter_threshold) {
  check_sce_grad_args(tile, y, lse, q, scale, tau, num_classes);
  const int64_t R = tile.size(0), C = tile.size(1);
  if (R == 0 || C == 0) return;
  DeviceGuard g(tile.device);
  const auto mg = margin_args(margin_type, margin, filter_threshold);
  const double uni = label_smoothing / static_cast<double>(num_classes);
  // columns: enough blocks to cover a row once (at most 1024); rows: up to 65535 in y,
  // the kernel strides over the rest
  const int64_t bx = std::min<int64_t>((C + kThreads - 1) / kThreads, 1024);
  const dim3 nb(static_cast<unsigned>(bx), static_cast<unsigned>(std::min<int64_t>(R, 65535)));
  if (tile.dtype == DType::F32)
    sce_grad_kernel<float><<<nb, kThreads, 0, as_stream(stream)>>>(
        tile.data<float>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0, lse.data<double>(),
        lse.stride(0), q.data<double>(), q.stride(0), scale.data<double>(), scale.stride(0), tau, mg,
        static_cast<float>(label_smoothing - uni), static_cast<float>(uni), ignore_index);
  else
    sce_grad_kernel<double><<<nb, kThreads, 0, as_stream(stream)>>>(
        tile.data<double>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0, lse.data<double>(),
        lse.stride(0), q.data<double>(), q.stride(0), scale.data<double>(), scale.stride(0), tau, mg,
        label_smoothing - uni, uni, ignore_index);
  check_launch("sce_grad");
}

void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& best,
                        const TensorView& arg, const TensorView& tgt, std::uintptr_t stream) {
  check_masked_argmax_args(tile, y, best, arg, tgt);
  const int64_t R = tile.size(0), C = tile.size(1);
  if (R == 0 || C == 0) return;
  DeviceGuard g(tile.device);
  if (tile.dtype == DType::F32)
    argmax_kernel<float><<<static_cast<unsigned>(R), kThreads, 0, as_stream(stream)>>>(
        tile.data<float>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0, best.data<double>(),
        arg.data<int64_t>(), tgt.data<double>());
  else
    argmax_kernel<double><<<static_cast<unsigned>(R), kThreads, 0, as_stream(stream)>>>(
        tile.data<double>(), R, C, tile.stride(0), y.data<int64_t>(), y.stride(0), col0, best.data<double>(),
        arg.data<int64_t>(), tgt.data<double>());
  check_launch("masked_argmax_fold");
}

}  // namespace cuda
}  // namespace gnc
