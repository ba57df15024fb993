// Fused spherical-CE forward (see cuda/loss.h): GEMM tile + online log-sum-exp epilogue
// in one kernel; the (B x K) logits never leave shared memory. Compiled, NOT run in the
// session that wrote it (no GPU there). Mirrors cpu/loss.cpp's sce_fold exactly: same
// logits (z = c/tau, target phi(c)/tau), same state layout and merge rule.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "cpu/loss_math.h"
#include "cuda/common.cuh"
#include "cuda/loss.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int BM = 64, BN = 64, BK = 32, NT = 128;  // 4 warps
constexpr int LDS = BK + 8;                           // padded smem row (elements)
constexpr int LDC = BN + 4;                           // padded fp32 tile row

struct MarginF {
  int type;
  float m, cos_m, sin_m, th, mm;
};

template <typename T> struct Wmma { static constexpr bool ok = false; };
template <> struct Wmma<bf16_t> { static constexpr bool ok = true; using type = __nv_bfloat16; };
template <> struct Wmma<f16_t> { static constexpr bool ok = true; using type = __half; };

// Loads a (rows x BK) slab of a row-major (n x d) matrix into smem (zero-padded).
template <typename T>
__device__ void load_slab(T* __restrict__ sm, const T* __restrict__ g, int64_t n, int64_t d, int64_t ld,
                          int64_t r0, int64_t k0, int rows) {
  for (int e = threadIdx.x; e < rows * BK; e += NT) {
    const int r = e / BK, k = e - r * BK;
    const int64_t gr = r0 + r, gk = k0 + k;
    T v{};  // zero bits: 0.0 in every supported dtype
    if (gr < n && gk < d) v = g[gr * ld + gk];
    sm[r * LDS + k] = v;
  }
}

// Computes the BM x BN fp32 cosine tile C = A(BM x d) * B(BN x d)^T into smem `ct`.
template <typename T>
__device__ void tile_product(const T* __restrict__ H, const T* __restrict__ W, int64_t B, int64_t K, int64_t d,
                             int64_t ldh, int64_t ldw, int64_t r0, int64_t c0, T* As, T* Bs, float* ct) {
  if constexpr (Wmma<T>::ok) {
    using namespace nvcuda;
    using WT = typename Wmma<T>::type;
    const int warp = threadIdx.x >> 5;
    const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;  // each warp: a 32 x 32 sub-tile
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int64_t k0 = 0; k0 < d; k0 += BK) {
      load_slab(As, H, B, d, ldh, r0, k0, BM);
      load_slab(Bs, W, K, d, ldw, c0, k0, BN);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          wmma::load_matrix_sync(fa[i], reinterpret_cast<const WT*>(As + (wr + 16 * i) * LDS + kk), LDS);
#pragma unroll
        for (int j = 0; j < 2; ++j)  // B^T tile: element (k, n) at Bs[n * LDS + k] -> col_major
          wmma::load_matrix_sync(fb[j], reinterpret_cast<const WT*>(Bs + (wc + 16 * j) * LDS + kk), LDS);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(ct + (wr + 16 * i) * LDC + wc + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
  } else {
    // fp32 (and fp64 through fp32 loads is not offered): SIMT, 8 x 4 outputs per thread
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // 16 x 8 threads
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int64_t k0 = 0; k0 < d; k0 += BK) {
      load_slab(As, H, B, d, ldh, r0, k0, BM);
      load_slab(Bs, W, K, d, ldw, c0, k0, BN);
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float a[8], b[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = load_f(As, (ty * 8 + i) * LDS + k);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = load_f(Bs, (tx + 16 * j) * LDS + k);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) ct[(ty * 8 + i) * LDC + tx + 16 * j] = acc[i][j];
    __syncthreads();
  }
}

// grid: (row tiles, splits). Each block folds the class tiles [t0, t1) of its split.
// Partial state per (split, row): [max z, sum exp(z - max), target cosine, sum z].
template <typename T>
__global__ void __launch_bounds__(NT) sce_fused_fwd_kernel(
    const T* __restrict__ H, const T* __restrict__ W, const int64_t* __restrict__ y, int64_t ys, int64_t B,
    int64_t K, int64_t d, int64_t ldh, int64_t ldw, float inv_tau, MarginF mg, int64_t ignore_index,
    int64_t tiles_per_split, float* __restrict__ partial) {
  __shared__ __align__(32) T As[BM * LDS];
  __shared__ __align__(32) T Bs[BN * LDS];
  __shared__ __align__(32) float ct[BM * LDC];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n_tiles = (K + BN - 1) / BN;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t1 = t0 + tiles_per_split < n_tiles ? t0 + tiles_per_split : n_tiles;
  // epilogue ownership: 2 threads per row, 32 columns each
  const int er = threadIdx.x >> 1, eh = threadIdx.x & 1;
  const int64_t row = r0 + er;
  const int64_t yi = row < B ? y[row * ys] : ignore_index;
  const bool active = row < B && yi != ignore_index;
  float m = -INFINITY, s = 0.f, zs = 0.f, tc = 0.f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * BN;
    tile_product<T>(H, W, B, K, d, ldh, ldw, r0, c0, As, Bs, ct);
    if (active) {
      const float* cr = ct + er * LDC + eh * 32;
      const int64_t cb = c0 + eh * 32;
      float tmax = -INFINITY;
      for (int k = 0; k < 32; ++k) {
        const int64_t col = cb + k;
        if (col >= K) break;
        float z = cr[k] * inv_tau;
        if (col == yi) z = loss_math::phi<float>(cr[k], mg.type, mg.m, mg.cos_m, mg.sin_m, mg.th, mg.mm) * inv_tau;
        tmax = fmaxf(tmax, z);
      }
      if (tmax > -INFINITY) {
        const float mn = fmaxf(m, tmax);
        float acc = 0.f;
        for (int k = 0; k < 32; ++k) {
          const int64_t col = cb + k;
          if (col >= K) break;
          float z = cr[k] * inv_tau;
          if (col == yi) {
            z = loss_math::phi<float>(cr[k], mg.type, mg.m, mg.cos_m, mg.sin_m, mg.th, mg.mm) * inv_tau;
            tc = cr[k];
          }
          acc += loss_math::exp_nonpos(z - mn);
          zs += z;
        }
        s = (m == -INFINITY ? 0.f : s * loss_math::exp_nonpos(m - mn)) + acc;
        m = mn;
      }
    }
    __syncthreads();  // ct is rewritten by the next tile
  }
  // combine the two half-rows (adjacent lanes), then write the partial
  const float om = __shfl_xor_sync(0xffffffffu, m, 1);
  const float os = __shfl_xor_sync(0xffffffffu, s, 1);
  const float oz = __shfl_xor_sync(0xffffffffu, zs, 1);
  const float ot = __shfl_xor_sync(0xffffffffu, tc, 1);
  if (eh == 0 && row < B) {
    const float M = fmaxf(m, om);
    float S = 0.f;
    if (M > -INFINITY) {
      S = (m == -INFINITY ? 0.f : s * loss_math::exp_nonpos(m - M)) +
          (om == -INFINITY ? 0.f : os * loss_math::exp_nonpos(om - M));
    }
    float* p = partial + (static_cast<int64_t>(blockIdx.y) * B + row) * 4;
    p[0] = M;
    p[1] = S;
    p[2] = tc + ot;  // at most one half-row (and one split) saw the target; others hold 0
    p[3] = zs + oz;
  }
}

// Merges the split partials of each row in split order (deterministic) into state.
__global__ void sce_fused_merge_kernel(const float* __restrict__ partial, int64_t splits, int64_t B,
                                       const int64_t* __restrict__ y, int64_t ys, int64_t ignore_index,
                                       double* __restrict__ state) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= B) return;
  double* st = state + 4 * row;
  if (y[row * ys] == ignore_index) return;
  double M = -INFINITY;
  for (int64_t j = 0; j < splits; ++j) M = fmax(M, static_cast<double>(partial[(j * B + row) * 4]));
  double S = 0, T = 0, Z = 0;
  for (int64_t j = 0; j < splits; ++j) {
    const float* p = partial + (j * B + row) * 4;
    if (p[0] > -INFINITY) S += static_cast<double>(p[1]) * exp(static_cast<double>(p[0]) - M);
    T += p[2];
    Z += p[3];
  }
  st[0] = M;
  st[1] = S;
  st[2] = T;
  st[3] = Z;
}

template <typename T>
void launch(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& state, double tau,
            int margin_type, double margin, int64_t ignore_index, cudaStream_t st) {
  const int64_t B = Hn.size(0), d = Hn.size(1), K = Wn.size(0);
  const auto g = loss_math::make_margin(margin_type, margin);
  MarginF mg{g.type, float(g.m), float(g.cos_m), float(g.sin_m), float(g.th), float(g.mm)};
  int dev = 0, sms = 132;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int64_t row_tiles = (B + BM - 1) / BM, n_tiles = (K + BN - 1) / BN;
  int64_t splits = (8LL * sms + row_tiles - 1) / row_tiles;  // about 8 blocks per SM
  if (splits > n_tiles) splits = n_tiles;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  const int64_t per = (n_tiles + splits - 1) / splits;
  splits = (n_tiles + per - 1) / per;
  if (row_tiles > 2147483647LL) fail("Hn: too many rows");
  float* partial = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&partial), sizeof(float) * 4 * splits * B, st),
             "cudaMallocAsync(partial)");
  dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(splits));
  sce_fused_fwd_kernel<T><<<grid, NT, 0, st>>>(Hn.data<T>(), Wn.data<T>(), y.data<int64_t>(), y.stride(0), B, K,
                                                d, Hn.stride(0), Wn.stride(0), static_cast<float>(1.0 / tau), mg,
                                                ignore_index, per, partial);
  check_launch("sce_fused_forward");
  sce_fused_merge_kernel<<<static_cast<unsigned>((B + 255) / 256), 256, 0, st>>>(
      partial, splits, B, y.data<int64_t>(), y.stride(0), ignore_index, state.data<double>());
  check_launch("sce_fused_forward(merge)");
  check_cuda(cudaFreeAsync(partial, st), "cudaFreeAsync(partial)");
}

}  // namespace

void sce_fused_forward(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& state,
                       double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream) {
  check_dim(Hn, 2, "Hn");
  check_dim(Wn, 2, "Wn");
  if (Wn.size(1) != Hn.size(1)) fail("Wn: expected as many columns as Hn");
  check_dtype(Wn, Hn.dtype, "Wn");
  check_shape(y, {Hn.size(0)}, "y");
  check_dtype(y, DType::I64, "y");
  check_shape(state, {Hn.size(0), 4}, "state");
  check_dtype(state, DType::F64, "state");
  if (!state.is_contiguous()) fail("state: must be contiguous");
  if (Hn.size(1) > 1 && (Hn.stride(1) != 1 || Wn.stride(1) != 1)) fail("Hn/Wn: rows must be contiguous");
  if (!(tau > 0)) fail("tau: must be > 0");
  if (Hn.size(0) == 0 || Wn.size(0) == 0) return;
  DeviceGuard g(Hn.device);
  const cudaStream_t st = as_stream(stream);
  switch (Hn.dtype) {
    case DType::F32: launch<float>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    case DType::BF16: launch<bf16_t>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    case DType::F16: launch<f16_t>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    default: fail("Hn: the fused CUDA forward supports float32/bfloat16/float16");
  }
}

}  // namespace cuda
}  // namespace gnc
