// CUDA epilogues of the stored-exponent strategy: twins of cpu/loss_stored.cpp.
//
// sce_stored_exp is bandwidth-bound (it reads one fp32 tile and writes one 16/32-bit
// tile): a 2-D grid over (column blocks, rows) keeps enough blocks in flight for any
// batch size; each thread handles 4 consecutive columns per step with 16-byte loads of
// the tile and of inv_n (8-byte bfloat16x4 or 16-byte float4 stores of E) when the rows
// are 16-byte aligned, scalar accesses otherwise. Each block reduces its partial row
// state (non-target sum, cosine sum, max) with a fixed shared-memory tree and writes it
// to a workspace; a second kernel folds the column blocks into the row state in block
// order. Deterministic, no atomics. The target cosine is written by the one thread that
// owns its column. The workspace is a float64 tensor the caller allocates with torch
// (stored_exp_workspace_doubles words, cpu/loss_stored_checks.h); tiles with more than
// 65,535 rows are launched in row slices that reuse it in stream order. The exponential
// is loss_math::exp_nonpos, the CPU twin's.
//
// sce_stored_dw: one warp per class row (lanes stride over d, an xor-shuffle tree for the
// dot product: every lane ends with the same bits).
#include <cfloat>
#include <cmath>
#include <type_traits>

#include "common/half.h"
#include "cpu/loss_math.h"
#include "cpu/loss_stored_checks.h"
#include "cuda/common.cuh"
#include "cuda/loss_stored.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;
constexpr int kSteps = 4;                              // float4 steps per thread per block
constexpr int64_t kColsPerBlock = kThreads * kVec * kSteps;  // 4096 columns
constexpr int64_t kMaxRowsPerLaunch = kStoredMaxRowsPerLaunch;  // grid.y limit
static_assert(kColsPerBlock == kStoredColsPerBlock, "workspace size (cpu/loss_stored_checks.h)");

struct Partial {
  double sum_e, sum_s, mx;
};
static_assert(sizeof(Partial) == kStoredPartialDoubles * sizeof(double), "workspace layout");

// the CPU twin's exponential (a polynomial, max relative error ~2e-7 for x <= 0)
__device__ __forceinline__ float dev_exp(float x) { return loss_math::exp_nonpos(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename S>
__device__ __forceinline__ void store4(S* p, float a, float b, float c, float d);
template <>
__device__ __forceinline__ void store4<float>(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
template <>
__device__ __forceinline__ void store4<bf16_t>(bf16_t* p, float a, float b, float c, float d) {
  uint2 u;
  u.x = static_cast<uint32_t>(bf16_from_float(a).bits) | (static_cast<uint32_t>(bf16_from_float(b).bits) << 16);
  u.y = static_cast<uint32_t>(bf16_from_float(c).bits) | (static_cast<uint32_t>(bf16_from_float(d).bits) << 16);
  *reinterpret_cast<uint2*>(p) = u;
}

// one element: returns the shifted exponential (0 at the target) and updates partials
template <typename A>
__device__ __forceinline__ A one(A t, A ik, A rtau, A shi, bool tgt, A& se, A& ss, A& mx) {
  const A s = t * ik;
  const A z = (s - A(1)) * rtau;
  const A ex = dev_exp(z - shi);
  if (!tgt) {
    se += ex;
    ss += s;
    mx = z > mx ? z : mx;
  }
  return tgt ? A(0) : ex * ik;
}

template <typename A, typename S, bool VEC>
__global__ void __launch_bounds__(kThreads) stored_exp_kernel(
    const A* __restrict__ tile, int64_t ts, int64_t c, const A* __restrict__ inv, int64_t is,
    const int64_t* __restrict__ y, int64_t ys, int64_t col0, const double* __restrict__ shift, int64_t shs,
    S* __restrict__ E, int64_t es, double* __restrict__ state, double tau, int64_t ignore_index, int64_t row0,
    int64_t nblk, Partial* __restrict__ ws) {
  const int64_t i = row0 + blockIdx.y;
  const int64_t b = blockIdx.x;
  const int64_t yi = y[i * ys];
  const bool ignored = yi == ignore_index;
  const int64_t jt = (!ignored && yi >= col0 && yi < col0 + c) ? yi - col0 : -1;
  const A rtau = A(1.0 / tau), shi = A(shift[i * shs]);
  const A* row = tile + i * ts;
  S* erow = E + i * es;
  A se = 0, ss = 0, mx = -INFINITY;
  const int64_t lo = b * kColsPerBlock;
  const int64_t hi = lo + kColsPerBlock < c ? lo + kColsPerBlock : c;
  if constexpr (VEC) {
    for (int64_t j = lo + static_cast<int64_t>(threadIdx.x) * kVec; j < hi; j += kThreads * kVec) {
      if (j + kVec <= hi) {
        const float4 t4 = *reinterpret_cast<const float4*>(row + j);
        const float4 i4 = *reinterpret_cast<const float4*>(inv + j);
        float e0, e1, e2, e3;
        if (ignored) {
          e0 = e1 = e2 = e3 = 0.f;
        } else {
          e0 = one<float>(t4.x, i4.x, rtau, shi, j == jt, se, ss, mx);
          e1 = one<float>(t4.y, i4.y, rtau, shi, j + 1 == jt, se, ss, mx);
          e2 = one<float>(t4.z, i4.z, rtau, shi, j + 2 == jt, se, ss, mx);
          e3 = one<float>(t4.w, i4.w, rtau, shi, j + 3 == jt, se, ss, mx);
        }
        store4<S>(erow + j, e0, e1, e2, e3);
      } else {
        for (int64_t k = j; k < hi; ++k) {
          const A e = ignored ? A(0) : one<A>(row[k], inv[k], rtau, shi, k == jt, se, ss, mx);
          store_f(erow, k, e);
        }
      }
    }
  } else {
    for (int64_t k = lo + threadIdx.x; k < hi; k += kThreads) {
      const A e = ignored ? A(0) : one<A>(row[k], inv[k * is], rtau, shi, k == jt, se, ss, mx);
      store_f(erow, k, e);
    }
  }
  if (jt >= lo && jt < hi) {  // the thread that owns the target column records its cosine
    const int64_t owner = VEC ? ((jt - lo) / kVec) % kThreads : (jt - lo) % kThreads;
    if (owner == static_cast<int64_t>(threadIdx.x)) state[4 * i + 2] = static_cast<double>(row[jt] * inv[jt * is]);
  }
  // fixed-order block reduction of the partials (double)
  __shared__ double sh_e[kThreads], sh_s[kThreads], sh_m[kThreads];
  sh_e[threadIdx.x] = static_cast<double>(se);
  sh_s[threadIdx.x] = static_cast<double>(ss);
  sh_m[threadIdx.x] = static_cast<double>(mx);
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (static_cast<int>(threadIdx.x) < o) {
      sh_e[threadIdx.x] += sh_e[threadIdx.x + o];
      sh_s[threadIdx.x] += sh_s[threadIdx.x + o];
      sh_m[threadIdx.x] = fmax(sh_m[threadIdx.x], sh_m[threadIdx.x + o]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ws[blockIdx.y * nblk + b] = Partial{sh_e[0], sh_s[0], sh_m[0]};
}

// folds the column blocks' partials into the row state, in block order
__global__ void stored_merge_kernel(const Partial* __restrict__ ws, int64_t nrows, int64_t nblk, int64_t row0,
                                    const int64_t* __restrict__ y, int64_t ys, int64_t ignore_index,
                                    double* __restrict__ state) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= nrows) return;
  const int64_t i = row0 + r;
  if (y[i * ys] == ignore_index) return;
  double se = 0, ss = 0, mx = -HUGE_VAL;
  for (int64_t b = 0; b < nblk; ++b) {
    const Partial p = ws[r * nblk + b];
    se += p.sum_e;
    ss += p.sum_s;
    mx = fmax(mx, p.mx);
  }
  state[4 * i + 0] += se;
  state[4 * i + 1] += ss;
  state[4 * i + 3] = fmax(state[4 * i + 3], mx);
}

template <typename A, typename T>
__global__ void stored_dw_kernel(const A* __restrict__ X, int64_t xs, const T* __restrict__ W, int64_t wsr,
                                 const A* __restrict__ inv, int64_t is, const A* __restrict__ v, int64_t vs,
                                 T* __restrict__ dW, int64_t os, int64_t c, int64_t d, A big, bool project) {
  const int lane = threadIdx.x & 31;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (k >= c) return;
  const A ik = inv[k * is];
  const A* xr = X + k * xs;
  const T* wr = W + k * wsr;
  A dot = 0;
  for (int64_t j = lane; j < d; j += 32) dot += static_cast<A>(load_f(wr, j)) * (xr[j] - ik * v[j * vs]);
  dot = warp_sum(dot);
  const A coef = (project && ik < big) ? dot * ik * ik : A(0);
  T* orow = dW + k * os;
  for (int64_t j = lane; j < d; j += 32)
    store_f(orow, j, (xr[j] - ik * v[j * vs]) - coef * static_cast<A>(load_f(wr, j)));
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

template <typename A, typename S>
void launch_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                int64_t ignore_index, Partial* ws, cudaStream_t st) {
  const int64_t R = tile.size(0), c = tile.size(1);
  const int64_t nblk = (c + kColsPerBlock - 1) / kColsPerBlock;
  const bool vec = std::is_same<A, float>::value && inv_n.stride(0) == 1 && tile.stride(0) % kVec == 0 &&
                   E.stride(0) % kVec == 0 && aligned16(tile.data<A>()) && aligned16(inv_n.data<A>()) &&
                   (reinterpret_cast<std::uintptr_t>(E.data<S>()) % (kVec * sizeof(S))) == 0;
  const int64_t rows_per = R < kMaxRowsPerLaunch ? R : kMaxRowsPerLaunch;
  for (int64_t r0 = 0; r0 < R; r0 += rows_per) {
    const int64_t nr = R - r0 < rows_per ? R - r0 : rows_per;
    const dim3 grid(static_cast<unsigned>(nblk), static_cast<unsigned>(nr));
    bool launched = false;
    if constexpr (std::is_same<A, float>::value) {
      if (vec) {
        stored_exp_kernel<A, S, true><<<grid, kThreads, 0, st>>>(
            tile.data<A>(), tile.stride(0), c, inv_n.data<A>(), inv_n.stride(0), y.data<int64_t>(), y.stride(0),
            col0, shift.data<double>(), shift.stride(0), E.data<S>(), E.stride(0), state.data<double>(), tau,
            ignore_index, r0, nblk, ws);
        launched = true;
      }
    }
    if (!launched)
      stored_exp_kernel<A, S, false><<<grid, kThreads, 0, st>>>(
          tile.data<A>(), tile.stride(0), c, inv_n.data<A>(), inv_n.stride(0), y.data<int64_t>(), y.stride(0),
          col0, shift.data<double>(), shift.stride(0), E.data<S>(), E.stride(0), state.data<double>(), tau,
          ignore_index, r0, nblk, ws);
    check_launch("sce_stored_exp");
    stored_merge_kernel<<<static_cast<unsigned>((nr + kThreads - 1) / kThreads), kThreads, 0, st>>>(
        ws, nr, nblk, r0, y.data<int64_t>(), y.stride(0), ignore_index, state.data<double>());
    check_launch("sce_stored_exp (merge)");
  }
}

}  // namespace

void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index, const TensorView& workspace, std::uintptr_t stream) {
  check_sce_stored_exp_args(tile, inv_n, y, shift, E, state, tau);
  const int64_t need = stored_exp_workspace_doubles(tile.size(0), tile.size(1));
  if (workspace.dtype != DType::F64 || workspace.dim() != 1 || workspace.numel() < need ||
      (workspace.numel() > 1 && workspace.stride(0) != 1))
    fail("workspace: expected a contiguous 1-D float64 tensor of at least " + std::to_string(need) +
         " values (sce_stored_exp_workspace_doubles(rows, cols))");
  check_same_device(tile, workspace, "tile", "workspace");
  if (tile.size(0) == 0 || tile.size(1) == 0) return;
  for (const TensorView* t : {&tile, &inv_n, &y, &shift, &E, &state})
    check_no_overlap(workspace, *t, "workspace", "the other arguments");
  DeviceGuard g(tile.device);
  const cudaStream_t st = as_stream(stream);
  Partial* ws = workspace.data<Partial>();
  if (tile.dtype == DType::F64)
    launch_exp<double, double>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index, ws, st);
  else if (E.dtype == DType::BF16)
    launch_exp<float, bf16_t>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index, ws, st);
  else
    launch_exp<float, float>(tile, inv_n, y, col0, shift, E, state, tau, ignore_index, ws, st);
}

void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project, std::uintptr_t stream) {
  check_sce_stored_dw_args(X, W, inv_n, v, dW, eps);
  const int64_t c = X.size(0), d = X.size(1);
  if (c == 0 || d == 0) return;
  DeviceGuard g(X.device);
  const cudaStream_t st = as_stream(stream);
  const int warps = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((c + warps - 1) / warps);
  auto go = [&](auto atag, auto ttag) {
    using A = decltype(atag);
    using T = decltype(ttag);
    stored_dw_kernel<A, T><<<blocks, kThreads, 0, st>>>(X.data<A>(), X.stride(0), W.data<T>(), W.stride(0),
                                                         inv_n.data<A>(), inv_n.stride(0), v.data<A>(),
                                                         v.stride(0), dW.data<T>(), dW.stride(0), c, d,
                                                         A(1.0 / eps), project);
  };
  if (X.dtype == DType::F64)
    go(double{}, double{});
  else if (W.dtype == DType::F32)
    go(float{}, float{});
  else if (W.dtype == DType::BF16)
    go(float{}, bf16_t{});
  else if (W.dtype == DType::F16)
    go(float{}, f16_t{});
  else
    fail("W: expected float32/float64/bfloat16/float16");
  check_launch("sce_stored_dw");
}

}  // namespace cuda
}  // namespace gnc
